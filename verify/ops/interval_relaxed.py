"""Ops bounded by their output interval alone: Sign, Floor, Ceil and Round (steps); LogSoftmax (``verify.ops.softmax``).

CROWN relaxes them by constant lines, ``lo_y <= y <= hi_y`` (slope 0), with ``[lo_y, hi_y]`` the op's interval rule on
its input bounds: sound for any input in the box, though loose; the backward step passes no coefficient to the
input (``Lambda_x = 0``) and adds ``<Lambda+, lo_y> + <Lambda-, hi_y>``, float64 dots.

Sign: ``[sign(l), sign(u)]`` (exact; ONNX Sign(0) = 0); Floor / Ceil / Round: ``[floor(l), floor(u)]`` (exact).
None has a Lipschitz (Jacobian) rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verify.ops.base import Op
from verify.rounding import F64, dot64, gamma, tiny, unit_roundoff


class IntervalRelaxed(Op):
    """One input, output of the same shape, relaxed by the constant lines of its interval rule."""

    needs_input_bounds = True

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = self.interval(in_bounds[0])
        lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)  # broadcast over the spec axis
        kappa = dot64(lam.clamp(min=0), lo) + dot64(lam.clamp(max=0), hi)
        return [torch.zeros_like(lam)], kappa

    def abs_forward(self, ts):
        return ts[0].new_zeros(ts[0].shape[0], *self.out_shape)  # no coefficient reaches the input

    def error_radius(self, mags):
        a = mags[0].detach()
        # the model's float evaluation (a few ulps of |y| <= 1) and the float64 dots of kappa (|y| <= 1)
        return torch.full_like(a, 8 * unit_roundoff(a.dtype) + 3 * gamma(self.out_numel(), F64)) + tiny(a.dtype)

    def interval_radius(self, mags):
        return tiny(mags[0].dtype)  # the interval rules round outward themselves


class Sign(IntervalRelaxed):
    kind = "sign"
    interval_exact = True

    def forward(self, x):
        return torch.sign(x)

    def interval(self, bounds):
        lo, hi = bounds
        return torch.sign(lo), torch.sign(hi)

    def __repr__(self):
        return "Sign()"


class Floor(IntervalRelaxed):
    """``floor(x)``, ``ceil(x)`` or ``round(x)`` (half to even) by ``mode`` (ONNX Floor / Ceil / Round, torch.floor /
    ceil / round): monotone steps, so the end points' values are the exact interval (the model's evaluation rounds
    nothing)."""

    kind = "floor"
    interval_exact = True
    _FUNCS = {"floor": torch.floor, "ceil": torch.ceil, "round": torch.round}

    def __init__(self, mode: str = "floor"):
        if mode not in self._FUNCS:
            raise ValueError(f"mode must be one of {', '.join(self._FUNCS)}, got {mode!r}")
        self.mode = mode

    def _f(self, t: Tensor) -> Tensor:
        return self._FUNCS[self.mode](t)

    def forward(self, x):
        return self._f(x)

    def interval(self, bounds):
        lo, hi = bounds
        return self._f(lo), self._f(hi)

    def error_radius(self, mags):
        # only the float64 dots of kappa, over values |y| <= a + 1
        a = mags[0].detach()
        return 3 * gamma(self.out_numel(), F64) * (a + 1) + tiny(a.dtype)

    def __repr__(self):
        return f"Floor({self.mode!r})"
