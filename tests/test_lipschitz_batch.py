"""Batched local Lipschitz bounds: one call over B boxes gives each box's single-call value, never below a sampled
gradient norm; `clarke lipschitz --centers` prints them; bad batches are one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import verify
from models.onnx_export import save_sequential
from models.zoo import mlp
from verify.cli.main import main as clarke
from verify.lipschitz import lipschitz_batch


def net(dtype: torch.dtype, seed: int = 0, sizes=(6, 24, 24, 3)) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    m = mlp(list(sizes)).to(dtype)
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.normal_(0, 0.3)
    return m.eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["naive", "ibp", "crown", "alpha-crown"])
def test_batch_equals_one_call_per_box(method, dtype):
    """Equal to the single-box calls up to float64 rounding allowances (a batched pass shares one allowance
    per pass: 1e-12 relative at most here)."""
    m = net(dtype)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5], dtype=dtype)[:, None]
    res = lipschitz_batch(m, x - eps, x + eps, method=method, input_shape=(6,))
    assert res.upper.shape == (7,) and res.per_output.shape == (7, 3) and res.outputs == [0, 1, 2]
    single = torch.tensor([verify.lipschitz(m, x[i] - eps[i], x[i] + eps[i], method=method, attack=False,
                                            input_shape=(6,)).upper for i in range(7)], dtype=torch.float64)
    assert torch.allclose(res.upper, single, rtol=1e-9, atol=0)


def test_batch_bounds_are_never_below_sampled_gradients():
    m = net(torch.float64, seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    res = lipschitz_batch(m, x - 0.2, x + 0.2, method="crown", input_shape=(6,))
    pts = (x[:, None, :] + 0.2 * (2 * torch.rand(20, 200, 6, generator=g, dtype=torch.float64) - 1)).reshape(-1, 6)
    pts.requires_grad_(True)
    out = m(pts)
    norms = torch.stack([torch.autograd.grad(out[:, j].sum(), pts, retain_graph=True)[0].abs().sum(1)
                         for j in range(3)], 1).reshape(20, 200, 3)
    assert (norms.max(1).values.max(1).values <= res.upper).all()
    assert (norms.max(1).values <= res.per_output).all()


def test_loop_methods_and_output_selection():
    m = net(torch.float64, sizes=(3, 8, 2))
    x = torch.randn(3, 3, dtype=torch.float64)
    res = lipschitz_batch(m, x - 0.1, x + 0.1, outputs=1, method="bab", timeout=2.0, input_shape=(3,))
    single = [verify.lipschitz(m, x[i] - 0.1, x[i] + 0.1, outputs=1, method="bab", timeout=2.0, attack=False,
                               input_shape=(3,)).upper for i in range(3)]
    assert res.outputs == [1] and np.allclose(res.upper.numpy(), single, rtol=1e-6)


def test_clarke_lipschitz_centers(tmp_path, capsys):
    m = net(torch.float32)
    onnx_path = tmp_path / "m.onnx"
    save_sequential(m, (6,), onnx_path)
    x = np.random.default_rng(0).normal(size=(4, 6))
    np.save(tmp_path / "x.npy", x)
    assert clarke(["lipschitz", str(onnx_path), "--centers", str(tmp_path / "x.npy"), "--eps", "0.1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = [verify.lipschitz(str(onnx_path), x[i] - 0.1, x[i] + 0.1, attack=False).upper for i in range(4)]
    assert np.allclose(got["upper"], want, rtol=1e-9) and len(got["per_output"]) == 4
    np.save(tmp_path / "bad.npy", np.ones((3, 5)))
    np.save(tmp_path / "nan.npy", np.full((2, 6), np.nan))
    for argv, match in ((["--centers", str(tmp_path / "bad.npy"), "--eps", "0.1"], "whole number"),
                        (["--centers", str(tmp_path / "x.npy")], "needs --eps"),
                        (["--centers", str(tmp_path / "nan.npy"), "--eps", "0.1"], "finite"),
                        (["--centers", str(tmp_path / "x.npy"), "--eps", "nan"], "--eps")):
        assert clarke(["lipschitz", str(onnx_path), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err


def test_bab_races_the_exact_mip_on_small_relu_networks():
    """A random 8-16-16-1 net where the plain BaB needs tens of seconds: raced against LipMIP, `bab` returns the
    MIP's exact value, says "exact", and takes far less than its 30 s budget."""
    import time

    from verify.lipschitz.race import MAX_RELUS, mip_fits

    g = torch.Generator().manual_seed(0)
    m = net(torch.float64, seed=5, sizes=(8, 16, 16, 1))
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64)
                                   / layer.in_features ** 0.5)
    x0 = 2 * torch.rand(8, generator=g, dtype=torch.float64) - 1
    assert mip_fits(verify.as_graph(m, (8,))) and MAX_RELUS >= 32
    exact = verify.lipschitz(m, x0 - 0.2, x0 + 0.2, method="mip", timeout=60, input_shape=(8,))
    t0 = time.perf_counter()
    raced = verify.lipschitz(m, x0 - 0.2, x0 + 0.2, method="bab", timeout=30, input_shape=(8,))
    seconds = time.perf_counter() - t0
    assert exact.status == "exact" and raced.status == "exact"
    assert raced.upper == pytest.approx(exact.upper, rel=1e-6) and raced.upper >= exact.lower
    assert seconds < 20, seconds
