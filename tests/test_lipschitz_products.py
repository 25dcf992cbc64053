"""Jacobian rule of products of two variables (``verify.lipschitz.jacobian``: ``G:a += b G:h``, ``G:b += a G:h``):
Lipschitz bounds above every sampled gradient on GELU nets and products of branches, tight on ``x * x``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from verify.errors import UnsupportedOperator
from verify.lipschitz import lipschitz

F64 = torch.float64


class Branches(nn.Module):
    """``W3 ((W1 x + b1) * tanh(W2 x + b2))``: a product of two computed variables."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, 2)

    def forward(self, x):
        return self.out(self.a(x) * torch.tanh(self.b(x)))


class Square(nn.Module):
    """``sum_i x_i * (1 x_i)``: a product of two variables (``x * x`` itself becomes the Square op)."""

    def forward(self, x):
        return (x * (1.0 * x)).sum(-1, keepdim=True)


def _sampled(net, lo, hi, n=3000, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = (lo + (hi - lo) * torch.rand(n, lo.numel(), generator=g, dtype=F64)).requires_grad_(True)
    y = net(x)
    worst = 0.0
    for j in range(y.shape[1]):
        (gr,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)
        worst = max(worst, float(gr.abs().sum(1).max()))
    return worst


def _gelu_net(seed: int, approximate: str) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.GELU(approximate=approximate), nn.Linear(16, 12),
                         nn.GELU(approximate=approximate), nn.Linear(12, 3)).double()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "bab"])
def test_gelu_lipschitz_bounds_hold_at_sampled_gradients(seed, approximate, method):
    net = _gelu_net(seed, approximate)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, generator=g, dtype=F64)
    eps = 0.2 + 0.3 * seed
    lo, hi = x0 - eps, x0 + eps
    res = lipschitz(net, lo, hi, method=method, timeout=3, samples=500)
    assert math.isfinite(res.upper)
    assert res.upper >= _sampled(net, lo, hi, seed=seed)
    assert res.lower <= res.upper


@pytest.mark.parametrize("seed", range(4))
def test_products_of_branches_hold_and_crown_tightens_ibp(seed):
    torch.manual_seed(seed)
    net = Branches(4, 10).double()
    x0 = torch.randn(4, dtype=F64)
    lo, hi = x0 - 0.25, x0 + 0.25
    ibp = lipschitz(net, lo, hi, method="ibp", attack=False)
    crown = lipschitz(net, lo, hi, method="crown", attack=False)
    worst = _sampled(net, lo, hi, seed=seed)
    assert worst <= crown.upper <= ibp.upper
    assert crown.upper < 3 * worst  # not vacuous


def test_a_square_has_its_exact_constant():
    # f(x) = sum x_i^2 on a box: sup ||grad||_1 = 2 sum max |x_i| (a corner); the gates are the box itself
    lo = torch.tensor([0.5, -1.5, -0.2], dtype=F64)
    hi = torch.tensor([1.0, -0.5, 0.3], dtype=F64)
    exact = 2 * (1.0 + 1.5 + 0.3)
    for method in ("ibp", "crown"):
        res = lipschitz(Square(), lo, hi, method=method, input_shape=(3,))
        assert exact <= res.upper <= exact * (1 + 1e-9)
        assert res.lower == pytest.approx(exact, rel=1e-9)


def test_products_have_no_naive_bound_and_broadcasts_are_refused():
    with pytest.raises(UnsupportedOperator, match="global bound"):
        lipschitz(Square(), -torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), method="naive", input_shape=(3,))

    class Broadcast(nn.Module):
        def forward(self, x):
            return x * x.sum(-1, keepdim=True)

    with pytest.raises(UnsupportedOperator, match="Mul"):
        lipschitz(Broadcast(), -torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), method="crown", input_shape=(3,))


class Lopsided(nn.Module):
    """``(10 x_1) (5 + x_2)``: the gradient is ``(10 (5 + x_2), 10 x_1)``; pairing each path with its own factor
    instead of the other one would give ``10 |x_1| + |5 + x_2|``, far below the truth on a box with small x_1."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[10.0, 0.0]]))
            self.a.bias.zero_()
            self.b.weight.copy_(torch.tensor([[0.0, 1.0]]))
            self.b.bias.fill_(5.0)

    def forward(self, x):
        return self.a(x) * self.b(x)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_the_product_rule_pairs_each_path_with_the_other_factor(method):
    lo = torch.tensor([-0.01, -0.1], dtype=F64)
    hi = torch.tensor([0.01, 0.1], dtype=F64)
    exact = 10 * 5.1 + 10 * 0.01  # at the corner x = (0.01, 0.1)
    res = lipschitz(Lopsided().double(), lo, hi, method=method, input_shape=(2,))
    assert exact * (1 - 1e-12) <= res.upper <= exact * (1 + 1e-9)


@pytest.mark.parametrize("act", [nn.SiLU, lambda: nn.ELU(0.8)])
@pytest.mark.parametrize("method", ["crown", "bab"])
def test_silu_and_elu_lipschitz_bounds_hold_at_sampled_gradients(act, method):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 10), act(), nn.Linear(10, 8), act(), nn.Linear(8, 2)).double()
    x0 = torch.randn(4, dtype=F64)
    lo, hi = x0 - 0.3, x0 + 0.3
    res = lipschitz(net, lo, hi, method=method, timeout=3, samples=500)
    assert _sampled(net, lo, hi) <= res.upper < float("inf")
