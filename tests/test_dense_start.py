"""Passes started at a dense layer begin with its rows ``[W_r; -W_r]`` (``verify.bounds.crown._dense_start``): the
same bounds and linear functions as the generic first step, which multiplies the rows ``+-e_r`` through the layer,
and they contain the exact (float64) network value with zero tolerance."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import verify.bounds.crown as crown
from tests.helpers import assert_box_contains, count_calls
from verify import bound, from_torch


def _mlp(seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    """3-4 dense layers, some without bias, ReLU or another activation between them; inputs flat or ``1 x n``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    widths = [int(torch.randint(3, 12, (1,), generator=g)) for _ in range(3 + seed % 2)]
    acts = [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.1)]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=(seed + i) % 3 != 0))
        layers.append(acts[(seed + i) % 3]() if i % 2 else nn.ReLU())
    layers.append(nn.Linear(widths[-1], 3))
    shape = (widths[0],) if seed % 2 else (1, widths[0])
    return nn.Sequential(*layers).eval(), shape


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_dense_start_gives_the_generic_bounds(seed, method, monkeypatch):
    net, shape = _mlp(seed)
    graph = from_torch(net, shape)
    torch.manual_seed(50 + seed)
    x = torch.randn(2, *shape)
    lo, hi = x - 0.3, x + 0.3
    for precision in ("float64", "model"):
        opts = dict(method=method, precision=precision, iterations=3, optimize_intermediate=method != "crown")
        calls = count_calls(monkeypatch, crown, "_dense_start")
        lower, upper = bound(graph, lo, hi, **opts)
        assert calls or method != "crown", "the dense start was not used"
        monkeypatch.setattr(crown, "USE_DENSE_START", False)
        g_lower, g_upper = bound(graph, lo, hi, **opts)
        monkeypatch.setattr(crown, "USE_DENSE_START", True)
        # the same products (one non-zero factor each) and sums: equal to the last bit
        assert torch.equal(lower, g_lower) and torch.equal(upper, g_upper), precision
        assert_box_contains(net, lo, hi, lower, upper, f"seed {seed} {method} {precision}", samples=64)


def test_dense_start_under_an_l2_ball_and_its_linear_functions(monkeypatch):
    """Under a ball the first layer (affine in the input) is refined too: the pass starts at the input itself.
    Input-split search keeps each row's ``(Lambda_x, kappa)``: equal to the generic pass's."""
    net, shape = _mlp(3)
    graph = from_torch(net, shape).with_dtype(torch.float64)
    x = torch.rand(1, *shape, dtype=torch.float64)
    ball = crown.Ball(x.reshape(1, -1), 0.2, 2.0)
    got, want = {}, {}
    calls = count_calls(monkeypatch, crown, "_dense_start")
    b1 = crown.intermediate_bounds(graph, x - 0.2, x + 0.2, functions=got, ball=ball)
    assert len(calls) >= 2
    monkeypatch.setattr(crown, "USE_DENSE_START", False)
    b2 = crown.intermediate_bounds(graph, x - 0.2, x + 0.2, functions=want, ball=ball)
    assert got.keys() == want.keys() and got
    for name in got:
        for (r1, lam1, k1), (r2, lam2, k2) in zip(got[name], want[name], strict=True):
            assert torch.equal(r1, r2) and torch.equal(lam1, lam2) and torch.equal(k1, k2)
    for name in b1:
        assert torch.equal(b1[name][0], b2[name][0]) and torch.equal(b1[name][1], b2[name][1])
