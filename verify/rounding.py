"""Floating-point soundness: rigorous bounds on the rounding errors of the bound computations.

Every bound Clarke reports must hold for the network's exact real-arithmetic value, and also for its
value evaluated in floating point (any summation order, FMA or not) in the engine's precision or finer.
The mechanism (standard error analysis, Higham, *Accuracy and Stability of Numerical Algorithms*, §3):

* A sum of ``n`` rounded products satisfies ``|fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n sum_i |a_i b_i|``
  with ``gamma_n = n u / (1 - n u)``, ``u`` the unit roundoff, in any order (Higham, Lemma 3.4 / eq. 3.5).
* So every op ``N`` gets an **error radius** ``e_N`` (per neuron, from the magnitudes ``a = max(|l|, |u|)`` of
  its inputs): a bound on how far a floating-point evaluation of the op, and the engine's own rounded
  interval and adjoint computations for it, can stray from the exact values, e.g. ``e = c gamma_n (|W| a + |b|)``
  for an affine layer. Intervals are widened by ``e_N`` and rounded outward (``nextafter``); CROWN subtracts
  ``<|Lambda_N|, e_N>`` from its constant, which covers both a perturbed forward value and the error of the
  rounded product ``Lambda_N W`` (any ``Lambda`` gives a valid bound once the constant accounts for it).
* Constants ``kappa``, concretisation and the error sums themselves are accumulated in float64 with their own
  ``gamma`` terms; final bounds are rounded outward one ulp with ``torch.nextafter``.

The constants below are deliberately generous (factors of 2-3 over the textbook bounds), which also covers
the rounding of the error bounds themselves; in float64 the whole correction is ~1e-13 relative.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

F64 = torch.float64
PRECISIONS = ("float64", "model")
"""Bound precision: ``float64`` computes every bound in float64 (rounding allowances ~1e-13 relative; the
default), ``model`` in the model's own precision (float32 allowances of ``n u`` per layer are sound but can
loosen bounds by percents on wide layers; faster, e.g. for training losses)."""


_ACCOUNTED: ContextVar[bool] = ContextVar("clarke_rounding_accounted", default=True)


def accounted() -> bool:
    """False inside :func:`training_losses`: the bound rules skip their rounding allowances."""
    return _ACCOUNTED.get()


@contextmanager
def training_losses() -> Iterator[None]:
    """Bounds computed inside are **training losses, not certificates**: interval and CROWN rules run in the
    graph's precision without rounding allowances or outward rounding, as auto_LiRPA computes them (1.6x faster
    IBP steps on cnn-small, and float32 training bounds no longer widened by ``n u`` per layer). Certification
    (``verify.bound`` outside this block, ``clarke evaluate`` / ``verify``, validation certificates) never uses it.
    Scoped to the current thread / task (a context variable), restored on exit even after an error."""
    token = _ACCOUNTED.set(False)
    try:
        yield
    finally:
        _ACCOUNTED.reset(token)


def bound_dtype(model_dtype: torch.dtype, precision: str = "float64") -> torch.dtype:
    """The dtype bounds are computed in for a model of ``model_dtype`` (never narrower than the model)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return model_dtype if precision == "model" else max(model_dtype, F64, key=lambda d: torch.finfo(d).bits)


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one rounded operation (round to nearest)."""
    return float(torch.finfo(dtype).eps) / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """``1.5 gamma_{n+4}``: bounds the rounding error of any sum of ``n`` rounded products relative to the
    sum of their magnitudes, with room for the rounding of the bound itself. ``inf`` when ``n u`` is too large
    for the estimate to hold (never for realistic layer sizes)."""
    k = (int(n) + 4) * unit_roundoff(dtype)
    return float("inf") if k >= 0.1 else 1.5 * k / (1 - k)


def tiny(dtype: torch.dtype) -> float:
    """Absolute slack for underflow: a few smallest normal numbers."""
    return 4 * float(torch.finfo(dtype).tiny)


def magnitude(lo: Tensor, hi: Tensor) -> Tensor:
    """``max(|l|, |u|)``, exactly."""
    return torch.maximum(lo.abs(), hi.abs())


def down(x: Tensor) -> Tensor:
    """The next float below ``x``: a lower bound of any real whose round-to-nearest value is ``x``."""
    return torch.nextafter(x, x.new_full((), float("-inf")))


def up(x: Tensor) -> Tensor:
    return torch.nextafter(x, x.new_full((), float("inf")))


def widen(lo: Tensor, hi: Tensor, radius: Tensor | float | None) -> tuple[Tensor, Tensor]:
    """Outward enclosure of ``[lo - radius, hi + radius]`` where ``lo``/``hi`` carry one rounding each.

    ``radius`` bounds the absolute error of the computed ``lo``/``hi`` (and of any float evaluation they must
    enclose); two units of relative slack cover the rounding of ``lo``/``hi`` and of the subtraction."""
    u = unit_roundoff(lo.dtype)
    pad = 2 * u * magnitude(lo, hi) + tiny(lo.dtype)
    if radius is not None:
        pad = pad + radius
    return down(lo - pad), up(hi + pad)


def cast_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``, never above ``x`` (outward rounding of a lower bound)."""
    y = x.to(dtype)
    if dtype == x.dtype:
        return y
    return torch.where(y.to(x.dtype) > x, down(y), y)


def cast_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    y = x.to(dtype)
    if dtype == x.dtype:
        return y
    return torch.where(y.to(x.dtype) < x, up(y), y)


def cast_box(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A box in ``dtype`` containing ``[lo, hi]`` (each end rounded outward where the cast is inexact)."""
    return cast_down(lo, dtype), cast_up(hi, dtype)


def outward_box(lo, hi, dtype: torch.dtype, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A box in ``dtype`` containing the real box whose float64 reading is ``[lo, hi]``: each end widened by
    one float64 ulp (a decimal read to the nearest double, or ``x0 -+ eps`` rounded once, may lie on either
    side of it), then cast outward."""
    lo64 = down(torch.as_tensor(lo, dtype=F64, device=device))
    hi64 = up(torch.as_tensor(hi, dtype=F64, device=device))
    return cast_box(lo64, hi64, dtype)


def dot64(lam: Tensor, const: Tensor) -> Tensor:
    """``sum over per-sample dims of lam * const`` in float64: ``lam [B, S, *shape]``, ``const`` broadcastable
    to it (per-sample ``[*shape]``, per box ``[B, 1, *shape]`` or ``[B, S, *shape]``). Returns ``[B, S]``."""
    b, s = lam.shape[:2]
    lam64 = lam.to(F64).reshape(b, s, -1)
    n_trailing = lam.dim() - 2
    c = const.to(F64)
    if c.dim() <= n_trailing:  # shared by all boxes and rows
        return lam64 @ c.expand(lam.shape[2:]).reshape(-1)
    if c.shape[1] == 1:  # one per box
        return torch.bmm(lam64, c.expand(b, 1, *lam.shape[2:]).reshape(b, -1, 1)).squeeze(-1)
    return (lam64 * c.expand(lam.shape).reshape(b, s, -1)).sum(-1)


def sparse_dot64(lam: Tensor, const: Tensor) -> Tensor:
    """:func:`dot64` with a per-box ``const [B, 1, *shape]`` that is mostly exact zeros (ReLU intercepts): the same
    float64 sum over the entries where some box's ``const`` is non-zero (the others add exact zeros)."""
    b, s = lam.shape[:2]
    c = const.reshape(const.shape[0], -1)
    if const.dim() != lam.dim() or const.shape[1] != 1 or c.shape[1] != lam[0, 0].numel():
        return dot64(lam, const)
    cols = (c != 0).any(0).nonzero().squeeze(1)
    if 2 * cols.numel() > c.shape[1]:
        return dot64(lam, const)
    picked = lam.reshape(b, s, -1)[..., cols]
    return torch.bmm(picked.to(F64), c[:, cols].to(F64).expand(b, -1).unsqueeze(-1)).squeeze(-1)


def dot_error(lam: Tensor, radius: Tensor) -> Tensor:
    """``<|lam|, radius>`` in float64, ``[B, S]``, for a non-negative ``radius`` broadcastable like
    :func:`dot64`'s ``const`` (with ``radius [B, *shape]`` meaning one per box)."""
    if radius.dim() == lam.dim() - 1 and radius.dim() > 0 and radius.shape[0] == lam.shape[0] != 1:
        radius = radius.unsqueeze(1)
    elif radius.dim() == lam.dim() - 1 and radius.shape[0] == 1:
        radius = radius.unsqueeze(1)
    # The float64 sum of non-negative terms is exact to a relative gamma; the callers' constants cover it.
    return dot64(lam.detach().abs(), radius.detach())


# -- directed arithmetic: floats enclosing exact results ---------------------------------------------------



def sub_enclose(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Floats ``lo <= a - b <= hi`` (exact real difference): the rounding error of ``a - b`` is computed exactly
    by Knuth's two-sum, so ``lo = hi = a - b`` whenever the difference is exact."""
    nb = -b
    s = a + nb
    bv = s - a
    av = s - bv
    e = (a - av) + (nb - bv)
    return torch.where(e < 0, down(s), s), torch.where(e > 0, up(s), s)


def _exact_product(x: Tensor, y: Tensor) -> Tensor:
    """Where ``x y`` is certainly exact: a zero factor (keeps exact zeros exact)."""
    return (x == 0) | (y == 0)


def mul_up(x: Tensor, y: Tensor) -> Tensor:
    """A float ``>= x y`` (exact product)."""
    if x.dtype == torch.float32:  # a product of two float32 numbers is exact in float64
        return cast_up(x.to(F64) * y.to(F64), torch.float32)
    p = x * y
    return torch.where(_exact_product(x, y), p, up(p))


def mul_down(x: Tensor, y: Tensor) -> Tensor:
    """A float ``<= x y`` (exact product)."""
    if x.dtype == torch.float32:
        return cast_down(x.to(F64) * y.to(F64), torch.float32)
    p = x * y
    return torch.where(_exact_product(x, y), p, down(p))


def mul_enclose(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(mul_down(x, y), mul_up(x, y))`` from one product."""
    if x.dtype == torch.float32:
        p64 = x.to(F64) * y.to(F64)
        return cast_down(p64, torch.float32), cast_up(p64, torch.float32)
    p = x * y
    exact = _exact_product(x, y)
    return torch.where(exact, p, down(p)), torch.where(exact, p, up(p))


def outward(lo: Tensor, hi: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
    """``[lo - pad, hi + pad]`` rounded outward; entries with ``pad == 0`` (exact zeros) are kept exactly."""
    return (torch.where(pad > 0, down(lo - pad), lo), torch.where(pad > 0, up(hi + pad), hi))


def sum_up(t: Tensor) -> Tensor:
    """A float64 ``[N]`` upper bound of the exact sum of each row of ``t [N, ...]`` (exact zeros kept)."""
    t64 = t.reshape(t.shape[0], -1).to(F64)
    s, mass = t64.sum(-1), t64.abs().sum(-1)
    return torch.where(mass > 0, up(s + gamma(t64.shape[-1], F64) * mass), s)
