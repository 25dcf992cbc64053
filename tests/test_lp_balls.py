"""l_2 and l_1 balls (dual-norm concretisation, ``verify.bound(..., ball=...)``, ``clarke bounds --norm``), and the
spec folded into the last dense layer for interval bounds: sound on the random-network harness, tighter than the
box that holds the ball, exact where the network is affine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.helpers import random_network
from verify import bound
from verify.api import _interval_spec
from verify.bounds.crown import intermediate_bounds
from verify.cli.main import main
from verify.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def _ball_points(x: torch.Tensor, eps: float, p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points per centre in the l_p ball (float64): uniform directions scaled to the sphere and inside, and
    the ball's extreme points along the axes (corners of the l_1 ball)."""
    b, d = x.shape[0], x[0].numel()
    g = torch.randn(n, b, d, generator=gen, dtype=torch.float64)
    if p == 1.0:
        g = torch.sign(g) * torch.empty_like(g).exponential_(generator=gen) ** 4  # spiky: near the vertices
    g = g / g.norm(p=p, dim=-1, keepdim=True)
    r = torch.rand(n, b, 1, generator=gen, dtype=torch.float64)
    r[: n // 2] = 1.0  # half on the sphere
    axes = torch.eye(d, dtype=torch.float64)
    corners = torch.cat([axes, -axes]).unsqueeze(1).expand(2 * d, b, d)
    pts = torch.cat([g * r, corners]) * eps * (1 - 1e-12)
    return x.reshape(1, b, d).double() + pts


@pytest.mark.parametrize("p", [2.0, 1.0])
@pytest.mark.parametrize("seed", range(12))
def test_ball_bounds_contain_the_network_and_beat_the_box(seed, p):
    net, shape, desc = random_network(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *shape, generator=gen) * 2 - 1
    eps = 0.4
    pts = _ball_points(x.reshape(2, -1), eps, p, 300, gen)
    with torch.no_grad():
        ys = torch.stack([net.double()(pts[:, i].reshape(-1, *shape)) for i in range(2)], 1)
    net.float()
    for method in METHODS:
        for precision in ("float64", "model"):
            lo, hi = bound(net, x - eps, x + eps, method=method, precision=precision, ball=(x, eps, p))
            assert (ys >= lo.detach().double()).all(), f"{desc} {method} {precision}: below the lower bound"
            assert (ys <= hi.detach().double()).all(), f"{desc} {method} {precision}: above the upper bound"
        blo, bhi = bound(net, x - eps, x + eps, method=method)
        lo, hi = bound(net, x - eps, x + eps, method=method, ball=(x, eps, p))
        if method == "ibp":  # monotone in the input set; CROWN's slope choices may move either way per output
            assert (lo >= blo - 1e-12).all() and (hi <= bhi + 1e-12).all(), "the ball is inside the box"
        elif method != "alpha-crown":  # (alpha-CROWN's optimiser takes another path: compared above for soundness)
            assert float((hi - lo).sum()) <= float((bhi - blo).sum()) * (1 + 1e-9), f"{method}: wider than the box"


@pytest.mark.parametrize("p,dual", [(2.0, 2.0), (1.0, float("inf"))])
def test_an_affine_network_gets_the_exact_dual_norm_range(p, dual):
    torch.manual_seed(0)
    net = nn.Linear(6, 3).double()
    x = torch.randn(1, 6, dtype=torch.float64)
    eps = 0.25
    centre = net(x).detach()
    radius = eps * net.weight.detach().norm(p=dual, dim=1)
    for method in ("ibp", "crown"):
        lo, hi = bound(net, x - eps, x + eps, method=method, ball=(x, eps, p))
        assert torch.allclose(lo, centre - radius, rtol=0, atol=1e-12)
        assert torch.allclose(hi, centre + radius, rtol=0, atol=1e-12)
        assert (lo <= centre - radius).all() and (hi >= centre + radius).all()


def test_ball_input_errors():
    net = nn.Linear(3, 2)
    x = torch.zeros(1, 3)
    with pytest.raises(InputError, match="norm"):
        bound(net, x - 1, x + 1, ball=(x, 1.0, 3))
    with pytest.raises(InputError, match="eps"):
        bound(net, x - 1, x + 1, ball=(x, float("nan"), 2))
    with pytest.raises(InputError, match="centre"):
        bound(net, x - 1, x + 1, ball=(x * float("inf"), 1.0, 2))


@pytest.mark.parametrize("seed", range(8))
def test_spec_folded_into_the_last_layer_is_sound_and_no_looser(seed):
    net, shape, desc = random_network(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, *shape, generator=gen)
    k = net(x).shape[-1]
    C = torch.randn(1, 3, k, generator=gen)
    lo, hi = bound(net, x - 0.2, x + 0.2, C=C, method="ibp")
    graph = __import__("verify").from_torch(net, shape).with_dtype(torch.float64)
    plain = _interval_spec(intermediate_bounds(graph, x.double() - 0.2, x.double() + 0.2, "ibp")[graph.output],
                           C.double(), torch.float32)
    assert (lo >= plain[0]).all() and (hi <= plain[1]).all()
    pts = x + (torch.rand(2000, *shape, generator=gen) * 2 - 1) * 0.2
    with torch.no_grad():
        ys = net.double()(pts.double()) @ C[0].double().T
    assert (ys >= lo.double()).all() and (ys <= hi.double()).all(), desc


def test_cli_norm_2_is_inside_the_box_bounds(capsys):
    model, x0 = str(EXAMPLES / "mlp_8x32x32x3.onnx"), str(EXAMPLES / "x0.npy")
    res = {}
    for norm in ("inf", "2", "1"):
        code = main(["bounds", model, "--center", x0, "--eps", "0.05", "--norm", norm, "--json"])
        assert code == 0
        res[norm] = json.loads(capsys.readouterr().out)
        assert res[norm]["norm"] == norm
    for norm in ("2", "1"):
        assert (np.array(res[norm]["lower"]) >= np.array(res["inf"]["lower"])).all()
        assert (np.array(res[norm]["upper"]) <= np.array(res["inf"]["upper"])).all()
    code = main(["bounds", model, "--box", x0, x0, "--norm", "2"])
    assert code == 2 and "--norm 2 goes with --center" in capsys.readouterr().err
