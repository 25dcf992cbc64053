"""``verify.lirpa``: auto_LiRPA's interface on Clarke's engine. The walk-through in ``examples/auto_lirpa_simple.py``
runs with the import changed and gives auto_LiRPA's bounds (run side by side where auto_LiRPA is importable); the
linear coefficients are valid bounds; bad input is refused with a message."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.test_differential_auto_lirpa import _load_peer
from verify import bound
from verify.errors import InputError
from verify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "auto_lirpa_simple.py"


def _example():
    spec = importlib.util.spec_from_file_location("auto_lirpa_simple", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clarke_run():
    return _example().run(auto_lirpa=False, verbose=False)


def test_walk_through_shapes_and_soundness(clarke_run):
    torch.manual_seed(0)  # the example's network
    model = _example().cifar_cnn().eval()
    image = clarke_run["image"]
    pts = image + (torch.rand(300, *image.shape) * 2 - 1) * 0.01
    with torch.no_grad():
        ys = model.double()(pts.reshape(-1, 3, 32, 32).double()).reshape(300, 2, 10)
    for method in _example().METHODS:
        lb, ub = clarke_run[("logits", method)]
        assert lb.shape == ub.shape == (2, 10)
        assert (ys >= lb.double()).all() and (ys <= ub.double()).all(), method
        mlb, mub = clarke_run[("margin", method)]
        assert mlb.shape == (2, 1) and bool((mlb <= mub).all())
    widths = [float((clarke_run[("logits", m)][1] - clarke_run[("logits", m)][0]).mean()) for m in _example().METHODS]
    assert widths[0] > widths[1] > widths[2] >= widths[3] * 0.999  # IBP > CROWN-IBP > CROWN >= alpha-CROWN
    for method in _example().METHODS[1:3]:
        a = clarke_run[("A", method)]
        assert a["lA"].shape == a["uA"].shape == (2, 10, 3, 32, 32) and a["lbias"].shape == (2, 10)
        # the linear functions bound the network at every sampled point
        lin_lo = torch.einsum("nbkchw,nbchw->nbk", a["lA"].double().expand(300, *a["lA"].shape),
                              pts.double()) + a["lbias"].double()
        lin_hi = torch.einsum("nbkchw,nbchw->nbk", a["uA"].double().expand(300, *a["uA"].shape),
                              pts.double()) + a["ubias"].double()
        assert (ys >= lin_lo - 1e-9).all() and (ys <= lin_hi + 1e-9).all()


@pytest.mark.slow
def test_walk_through_equals_auto_lirpa(clarke_run):
    peer, reason = _load_peer()
    if peer is None:
        pytest.skip(f"auto_LiRPA not available: {reason}")
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = _example().run(auto_lirpa=True, verbose=False)
    for key in [k for k in clarke_run if k != "image" and k[0] != "A"]:
        (lb, ub), (plb, pub) = clarke_run[key], theirs[key]
        scale = 1 + plb.abs().max()
        if "Optimized" in key[1]:  # both optimise intermediate slopes too: Clarke's mean width is no larger
            assert float((ub - lb).mean()) <= (1 + 1e-6) * float((pub - plb).mean()), key
        else:  # the same relaxation: equal up to float32 round-off
            assert torch.allclose(lb, plb, rtol=0, atol=1e-5 * float(scale)), key
            assert torch.allclose(ub, pub, rtol=0, atol=1e-5 * float(scale)), key
    for method in _example().METHODS[1:3]:
        for k in ("lbias", "ubias"):
            mine, peer_k = clarke_run[("A", method)][k], theirs[("A", method)][k]
            assert torch.allclose(mine.float(), peer_k.float(), rtol=1e-4, atol=1e-4), (method, k)


def test_l2_ball_matches_verify_bound_and_is_no_looser_than_auto_lirpa():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.rand(2, 6)
    m = BoundedModule(net, torch.zeros(1, 6))
    lb, ub = m.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=2, eps=0.3)),), method="CROWN")
    want = bound(net, x - 0.3, x + 0.3, method="crown", ball=(x, 0.3, 2.0))
    assert torch.equal(lb, want[0]) and torch.equal(ub, want[1])
    peer, _ = _load_peer()
    if peer is not None:
        from auto_LiRPA.perturbations import PerturbationLpNorm as Peer
        pm = peer.BoundedModule(net, torch.zeros(1, 6))
        plb, pub = pm.compute_bounds(x=(peer.BoundedTensor(x, Peer(norm=2, eps=0.3)),), method="CROWN")
        assert (lb >= plb - 1e-5).all() and (ub <= pub + 1e-5).all()


def test_method_names_any_case_and_one_sided_bounds():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.rand(3, 4)
    m = BoundedModule(net, torch.zeros(1, 4))
    bt = BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=0.1))
    lb, ub = m.compute_bounds(x=(bt,), method="crown")
    lb2, ub2 = m.compute_bounds(x=(bt,), method="CROWN")
    assert torch.equal(lb, lb2) and torch.equal(ub, ub2)
    only_up = m.compute_bounds(x=(bt,), method="backward", bound_lower=False)
    assert only_up[0] is None and torch.allclose(only_up[1], ub)
    only_lo = m.compute_bounds(x=(bt,), method="backward", bound_upper=False)
    assert only_lo[1] is None and torch.allclose(only_lo[0], lb)
    assert torch.equal(bound(net, x - 0.1, x + 0.1, method="Alpha-CROWN")[0],
                       bound(net, x - 0.1, x + 0.1, method="alpha-crown")[0])
    # CROWN-Optimized means what it means in auto_LiRPA: intermediate slopes optimised too (opt-out: Clarke's key)
    opt = m.compute_bounds(x=(bt,), method="CROWN-Optimized")
    assert torch.equal(opt[0], bound(net, x - 0.1, x + 0.1, method="alpha-crown", optimize_intermediate=True)[0])
    m.set_bound_opts({"optimize_bound_args": {"optimize_intermediate": False}})
    assert torch.equal(m.compute_bounds(x=(bt,), method="CROWN-Optimized")[0],
                       bound(net, x - 0.1, x + 0.1, method="alpha-crown")[0])
    box = BoundedTensor(x, PerturbationLpNorm(x_L=x - 0.1, x_U=x + 0.1))
    assert torch.equal(m.compute_bounds(x=(box,), method="IBP")[0], m.compute_bounds(x=(bt,), method="IBP")[0])
    out = m(bt)
    assert type(out) is torch.Tensor and out.shape == (3, 2)


def test_bad_input_is_refused():
    net = nn.Sequential(nn.Linear(4, 2))
    m = BoundedModule(net, torch.zeros(1, 4))
    with pytest.raises(InputError, match="BoundedTensor"):
        m.compute_bounds(x=(torch.zeros(1, 4),))
    with pytest.raises(InputError, match="norm"):
        PerturbationLpNorm(norm=3, eps=0.1)
    with pytest.raises(InputError, match="eps"):
        PerturbationLpNorm(norm=np.inf, eps=float("nan"))
    with pytest.raises(ValueError, match="unknown method"):
        m.compute_bounds(x=(BoundedTensor(torch.zeros(1, 4), PerturbationLpNorm(eps=0.1)),), method="forward+x")
    with pytest.raises(NotImplementedError, match="forward"):
        m.compute_bounds(x=(BoundedTensor(torch.zeros(1, 4), PerturbationLpNorm(eps=0.1)),), forward=True)


def test_example_script_runs_as_a_program():
    import subprocess
    res = subprocess.run([sys.executable, str(EXAMPLE), "--eps", "0.005"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "CROWN-Optimized (alpha-CROWN): mean width" in res.stdout
