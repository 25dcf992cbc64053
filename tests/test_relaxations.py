"""Per-op fuzzing of linear relaxations: on random intervals (same-sign, straddling, degenerate, very
wide) the lines aL z + cL <= f(z) <= aU z + cU must hold on a dense grid plus the end points, for default
and arbitrary (alpha) slopes. MaxPool's relaxation is checked through random windows."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verify.ops import MaxPool2d, Relu, Sigmoid, Tanh

interval = st.tuples(st.floats(-30, 30), st.floats(0, 40)).map(lambda t: (t[0], t[0] + t[1]))
special = st.sampled_from([(0.0, 0.0), (-1e-7, 1e-7), (-5.0, -5.0), (-1.0, 1.0), (0.0, 3.0), (-3.0, 0.0),
                           (-60.0, 60.0), (2.0, 2.0 + 1e-9)])


def _grid(lo: float, hi: float) -> torch.Tensor:
    return torch.cat([torch.linspace(lo, hi, 2001, dtype=torch.float64), torch.tensor([lo, hi], dtype=torch.float64)])


def _check(op, lo: float, hi: float, alpha=None):
    lo_t, hi_t = torch.tensor([lo]), torch.tensor([hi])
    aL, cL, aU, cU = (t.double() for t in op.relax(lo_t, hi_t, alpha))
    z = _grid(float(lo_t), float(hi_t))  # the float32 interval the lines were made for
    f = op.forward(z)
    tol = 1e-6 * (1 + f.abs())
    assert (aL * z + cL <= f + tol).all(), (type(op).__name__, lo, hi, "lower line above f")
    assert (aU * z + cU >= f - tol).all(), (type(op).__name__, lo, hi, "upper line below f")


@settings(max_examples=400, deadline=None)
@given(st.one_of(interval, special), st.sampled_from([Relu(), Sigmoid(), Tanh()]))
def test_default_relaxation_is_sound(bounds, op):
    _check(op, *bounds)


@settings(max_examples=400, deadline=None)
@given(st.one_of(interval, special), st.sampled_from([Relu(), Sigmoid(), Tanh()]),
       st.floats(-2.0, 3.0), st.floats(-2.0, 3.0))
def test_any_projected_slope_is_sound(bounds, op, s1, s2):
    lo, hi = bounds
    lo_t, hi_t = torch.tensor([lo]), torch.tensor([hi])
    alpha = torch.tensor([[s1], [s2]])[: op.n_alpha]
    alpha = op.project_alpha(alpha, lo_t, hi_t)
    _check(op, lo, hi, alpha)


@settings(max_examples=200, deadline=None)
@given(st.one_of(interval, special), st.sampled_from([Sigmoid(), Tanh()]), st.floats(-1.0, 2.0))
def test_unprojected_slopes_are_still_sound(bounds, op, s):
    # The exact-intercept construction makes *any* slope sound, projection only helps tightness.
    lo, hi = bounds
    _check(op, lo, hi, torch.tensor([[s], [s]]))


def test_relu_relaxation_is_the_triangle():
    aL, cL, aU, cU = Relu().relax(torch.tensor([-1.0]), torch.tensor([3.0]))
    assert torch.allclose(aU, torch.tensor([0.75])) and torch.allclose(cU, torch.tensor([0.75]))
    assert aL.item() == 1.0 and cL.item() == 0.0


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(2, 2, 0), (3, 1, 1), (2, 1, 0), (3, 2, 1)]))
def test_maxpool_backward_bounds_samples(seed, cfg):
    k, s, p = cfg
    g = torch.Generator().manual_seed(seed)
    op = MaxPool2d((k, k), (s, s), (p, p))
    op.bind([(1, 2, 5, 5)])
    lo = torch.randn(1, 1, 2, 5, 5, generator=g)
    hi = lo + torch.rand(1, 1, 2, 5, 5, generator=g) * torch.rand(1, generator=g) * 3
    lam = torch.randn(1, 4, *op.out_shape, generator=g)
    (lam_x,), kappa = op.backward(lam, [(lo, hi)])
    x = lo + (hi - lo) * torch.rand(500, 1, 2, 5, 5, generator=g)
    y = op.forward(x)
    lhs = (lam.reshape(1, 4, -1) * y.reshape(500, 1, -1)).sum(-1)
    rhs = (lam_x.reshape(1, 4, -1) * x.reshape(500, 1, -1)).sum(-1) + kappa
    assert (lhs >= rhs - 1e-5).all()
