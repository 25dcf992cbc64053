"""Products of variables and powers (``verify.ops.bilinear``): their relaxation lines hold in exact rational arithmetic
on random intervals (same-sign, across zero, tiny), their intervals contain every value, and networks with them get
sound bounds from the torch frontend."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from verify.errors import UnboundedError
from verify.ops.bilinear import Mul, Power, Reciprocal


def _intervals(rng: np.random.Generator, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    centre = rng.normal(size=64) * rng.choice([0.01, 1.0, 10.0], size=64)
    half = np.abs(rng.normal(size=64)) * rng.choice([1e-6, 0.1, 1.0, 5.0], size=64)
    lo, hi = torch.tensor(centre - half, dtype=dtype), torch.tensor(centre + half, dtype=dtype)
    lo[:4] = torch.tensor([0.0, -2.0, 1.0, -1e-3], dtype=dtype)  # touching 0, one-sided, degenerate
    hi[:4] = torch.tensor([3.0, 0.0, 1.0, 1e-3], dtype=dtype)
    return lo, hi


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_power_lines_hold_exactly(n, dtype):
    rng = np.random.default_rng(n)
    lo, hi = _intervals(rng, dtype)
    _assert_lines_and_interval_hold(Power(n), lo, hi, lambda x: x ** n)


def _assert_lines_and_interval_hold(op, lo: torch.Tensor, hi: torch.Tensor, f) -> None:
    """At 11 points of each interval, in exact rational arithmetic: the op's lines and its interval contain f."""
    a_lo, c_lo, a_up, c_up = op.relax(lo, hi)
    ilo, ihi = op.interval((lo, hi))
    for i in range(lo.shape[0]):
        l_, u_ = Fraction(float(lo[i])), Fraction(float(hi[i]))
        al, cl, au, cu = (Fraction(float(t[i])) for t in (a_lo, c_lo, a_up, c_up))
        for k in range(11):
            x = l_ + (u_ - l_) * Fraction(k, 10)
            v = f(x)
            assert al * x + cl <= v <= au * x + cu, (repr(op), i, float(x))
            assert Fraction(float(ilo[i])) <= v <= Fraction(float(ihi[i])), (repr(op), i, float(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_interval_contains_every_corner_product_exactly(dtype):
    rng = np.random.default_rng(0)
    lx, ux = _intervals(rng, dtype)
    ly, uy = _intervals(rng, dtype)
    ilo, ihi = Mul().interval((lx, ux), (ly, uy))
    for i in range(lx.shape[0]):
        for x in (lx[i], ux[i], (lx[i] + ux[i]) / 2):
            for y in (ly[i], uy[i]):
                v = Fraction(float(x)) * Fraction(float(y))
                assert Fraction(float(ilo[i])) <= v <= Fraction(float(ihi[i]))


def test_mcCormick_planes_bound_the_product_on_the_box():
    """The planes the backward step uses (means of the McCormick pairs) hold at random points of random boxes."""
    rng = np.random.default_rng(1)
    lx, ux = _intervals(rng, torch.float64)
    ly, uy = _intervals(rng, torch.float64)
    op = Mul()
    op.in_shapes = ((64,), (64,))
    op.out_shape = (64,)
    for sign in (1.0, -1.0):
        lam = torch.full((1, 1, 64), sign, dtype=torch.float64)
        (gx, gy), kappa = op.backward(lam, [(lx[None], ux[None]), (ly[None], uy[None])])
        for _ in range(200):
            x = lx + (ux - lx) * torch.rand(64, dtype=torch.float64)
            y = ly + (uy - ly) * torch.rand(64, dtype=torch.float64)
            lhs = sign * x * y  # <lam, z> per element
            rhs = gx[0, 0] * x + gy[0, 0] * y  # + the per-element constants, summed in kappa
            assert float((lhs - rhs).sum()) >= float(kappa[0, 0]) - 1e-9 * float(lhs.abs().sum() + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reciprocal_lines_hold_exactly_and_a_range_holding_zero_has_no_bound(dtype):
    rng = np.random.default_rng(7)
    lo, hi = _intervals(rng, dtype)
    away = (lo > 0) | (hi < 0)
    lo, hi = lo[away], hi[away]
    op = Reciprocal()
    _assert_lines_and_interval_hold(op, lo, hi, lambda x: 1 / x)
    with pytest.raises(UnboundedError, match="divisor may be 0"):
        op.interval((torch.tensor([-0.1, 1.0]), torch.tensor([0.2, 2.0])))


def test_a_quotient_whose_divisor_may_vanish_is_refused_not_bounded():
    class Ratio(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.g = torch.nn.Linear(2, 3), torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.f(x) / self.g(x)  # the divisor's interval holds 0 on this box

    from verify import bound
    torch.manual_seed(0)
    net = Ratio()
    with torch.no_grad():
        net.g.weight.fill_(1.0)
        net.g.bias.fill_(0.0)
    with pytest.raises(UnboundedError):
        bound(net, torch.tensor([[-0.5, -0.2]]), torch.tensor([[0.5, 0.3]]), method="crown")
    lo, hi = bound(net, torch.tensor([[0.5, 0.2]]), torch.tensor([[0.6, 0.3]]), method="crown")  # away from 0
    xs = torch.tensor([[0.5, 0.2]]) + torch.rand(500, 2) * 0.1
    with torch.no_grad():
        ys = net.double()(xs.double())
    assert (ys >= lo.double()).all() and (ys <= hi.double()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_planes_hold_exactly_for_any_weights(dtype):
    """The CROWN step with alpha-CROWN's plane weights r in [0, 1] (0, 1, 0.5 and random): for lam = +1 the
    returned ``lam_x x + lam_y y + kappa`` is below ``x y`` and for lam = -1 above it, at the box corners and
    inside, in exact rational arithmetic (the step's own float rounding is the op's allowance, not checked here:
    lam = +-1 makes the products exact)."""
    rng = np.random.default_rng(7)
    lx, ux = _intervals(rng, dtype)
    ly, uy = _intervals(rng, dtype)
    op = Mul()
    op.bind([(64,), (64,)])
    bx, by = (lx[None], ux[None]), (ly[None], uy[None])
    for weights in (0.0, 1.0, 0.5, None):
        r = torch.tensor(rng.uniform(0, 1, size=(2, 1, 2, 64)), dtype=dtype) if weights is None else \
            torch.full((2, 1, 2, 64), weights, dtype=dtype)
        lam = torch.stack([torch.ones(64, dtype=dtype), -torch.ones(64, dtype=dtype)])[None]  # [1, 2, 64]
        (lam_x, lam_y), kappa = op.backward(lam, [bx, by], r)
        assert kappa.shape == (1, 2)
        # per element: the constant is the kappa share of that element; recompute it from the plane formula
        for i in range(0, 64, 3):
            for s, sign in ((0, 1), (1, -1)):
                a, b = Fraction(float(lam_x[0, s, i])), Fraction(float(lam_y[0, s, i]))
                c = _element_constant(op, bx, by, r, s, i, dtype)
                for fx in (0, 1, Fraction(1, 3)):
                    for fy in (0, 1, Fraction(2, 3)):
                        x = Fraction(float(lx[i])) + (Fraction(float(ux[i])) - Fraction(float(lx[i]))) * fx
                        y = Fraction(float(ly[i])) + (Fraction(float(uy[i])) - Fraction(float(ly[i]))) * fy
                        assert a * x + b * y + c <= sign * x * y, (weights, i, s)


def _element_constant(op: Mul, bx, by, r, s: int, i: int, dtype) -> Fraction:
    """kappa of spec row ``s`` restricted to element ``i``: the step with lam one-hot at ``i``."""
    lam = torch.zeros(1, 2, 64, dtype=dtype)
    lam[0, s, i] = 1.0 if s == 0 else -1.0
    _, kappa = op.backward(lam, [bx, by], r)
    return Fraction(float(kappa[0, s]))
