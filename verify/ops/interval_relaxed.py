"""Ops bounded by their output interval alone: Sign, Floor, Ceil and Round (steps), Softmax and LogSoftmax.

CROWN relaxes them by constant lines, ``lo_y <= y <= hi_y`` (slope 0), with ``[lo_y, hi_y]`` the op's interval rule on
its input bounds: sound for any input in the box, though loose; the backward step passes no coefficient to the
input (``Lambda_x = 0``) and adds ``<Lambda+, lo_y> + <Lambda-, hi_y>``, float64 dots.

Sign: ``[sign(l), sign(u)]`` (exact; ONNX Sign(0) = 0); Floor / Ceil / Round: ``[floor(l), floor(u)]`` (exact).
Softmax along an axis: with ``y_i = 1 / (1 + sum_{j != i} exp(x_j - x_i))``,
``y_i >= 1 / (1 + sum_{j != i} exp(u_j - l_i))`` and ``y_i <= 1 / (1 + sum_{j != i} exp(l_j - u_i))``, computed
pairwise in float64 with a margin for its rounding and rounded outward. LogSoftmax:
``y_i = -log(1 + sum_{j != i} exp(x_j - x_i))`` between the same two expressions' logs, by a stable log-sum-exp.
None has a Lipschitz (Jacobian) rule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verify.ops.base import Op
from verify.rounding import F64, cast_down, cast_up, dot64, gamma, tiny, unit_roundoff


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


class Softmax(IntervalRelaxed):
    """``softmax`` along per-sample ``axis``."""

    kind = "softmax"

    def __init__(self, axis: int):
        self.axis = int(axis)

    def _dim(self, t: Tensor) -> int:
        return self.axis - len(self.in_shapes[0])  # counted from the end: works with or without a spec axis

    def forward(self, x):
        return torch.softmax(x, dim=self.axis + 1)

    def _pairs(self, bounds) -> tuple[int, int, Tensor, Tensor, Tensor]:
        """``(d, n, diff_hi, diff_lo, off)``: the softmax axis (from the end), its length, the float64 differences
        ``u_j - l_i`` and ``l_j - u_i`` as ``[..., i, j]`` and the off-diagonal mask."""
        lo, hi = bounds
        d = self._dim(lo)
        l64, u64 = lo.to(F64).movedim(d, -1), hi.to(F64).movedim(d, -1)
        n = l64.shape[-1]
        off = ~torch.eye(n, dtype=torch.bool, device=lo.device)
        return d, n, u64.unsqueeze(-2) - l64.unsqueeze(-1), l64.unsqueeze(-2) - u64.unsqueeze(-1), off

    def interval(self, bounds):
        lo = bounds[0]
        d, n, diff_hi, diff_lo, off = self._pairs(bounds)

        def others(diff: Tensor) -> tuple[Tensor, Tensor]:
            """``sum_{j != i} exp(diff_ij)`` for every i (pairwise: no cancellation) and max |diff_ij|."""
            terms = torch.where(off, torch.exp(diff), torch.zeros_like(diff))
            return terms.sum(-1), torch.where(off, diff.abs(), torch.zeros_like(diff)).amax(-1)

        s_hi, r_hi = others(diff_hi)  # largest competitor mass: the lower bound of y_i
        s_lo, r_lo = others(diff_lo)
        # exp of a rounded difference is within (|diff| + 2) u of exact, the sum adds n u; an error of rel * s in s
        # moves 1 / (1 + s) by at most rel / 4 (overflow to inf gives the bound 0, sound)
        # and the model's own float softmax in its precision: a sum of n exponentials and a division, (n + 8) u
        model = (n + 8) * unit_roundoff(lo.dtype)
        low = 1 / (1 + s_hi) - (64 + n + r_hi) * unit_roundoff(F64) - model
        up = 1 / (1 + s_lo) + (64 + n + r_lo) * unit_roundoff(F64) + model
        low, up = low.clamp(0.0, 1.0).movedim(-1, d), up.clamp(0.0, 1.0).movedim(-1, d)
        return cast_down(low, lo.dtype), cast_up(up, lo.dtype)

    def error_radius(self, mags):
        a = mags[0].detach()
        n = self.in_shapes[0][self.axis]
        # the model's float softmax ((n + 8) u of |y| <= 1) and the float64 dots of kappa
        return torch.full_like(a, (n + 8) * unit_roundoff(a.dtype) + 3 * gamma(self.out_numel(), F64)) + tiny(a.dtype)

    def __repr__(self):
        return f"Softmax(axis={self.axis})"


class LogSoftmax(Softmax):
    """``log_softmax`` along per-sample ``axis`` (torch.log_softmax, ONNX LogSoftmax)."""

    kind = "log_softmax"

    def forward(self, x):
        return torch.log_softmax(x, dim=self.axis + 1)

    def interval(self, bounds):
        lo = bounds[0]
        d, n, diff_hi, diff_lo, off = self._pairs(bounds)

        def log1p_others(diff: Tensor) -> tuple[Tensor, Tensor]:
            """``log(1 + sum_{j != i} exp(diff_ij))`` for every i (log-sum-exp with the 1 as the diagonal's
            exp(0)) and max |diff_ij|."""
            diff = torch.where(off, diff, torch.zeros((), dtype=F64, device=lo.device))
            return torch.logsumexp(diff, -1), diff.abs().amax(-1)

        big, r_big = log1p_others(diff_hi)  # the largest competitor mass: the lower bound of y_i
        small, r_small = log1p_others(diff_lo)
        u, um = unit_roundoff(F64), unit_roundoff(lo.dtype)
        # float64: each difference within r u, exp and the sum a few ulps, the log one more; the model's own
        # log_softmax in its precision: (n + 8) u absolute (the sum's relative error through the log) and 4 u of
        # |y| + log n (the shifts and the final subtraction)
        low = -big - (64 + n + r_big + 8 * big.abs()) * u - (n + 8) * um - 4 * um * (big.abs() + math.log(n))
        up = -small + (64 + n + r_small + 8 * small.abs()) * u + (n + 8) * um + 4 * um * (big.abs() + math.log(n))
        low, up = low.movedim(-1, d), up.clamp(max=0.0).movedim(-1, d)
        return cast_down(low, lo.dtype), cast_up(up, lo.dtype)

    def error_radius(self, mags):
        a = mags[0].detach()
        n = self.in_shapes[0][self.axis]
        y = 2 * a + math.log(n)  # |y_i| <= |x_i - max x| + log n
        um = unit_roundoff(a.dtype)
        return (n + 8) * um + 4 * um * y + 3 * gamma(self.out_numel(), F64) * y + tiny(a.dtype)

    def __repr__(self):
        return f"LogSoftmax(axis={self.axis})"
