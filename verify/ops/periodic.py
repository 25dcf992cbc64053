"""Sine and cosine (ONNX Sin, Cos; torch.sin, torch.cos).

Intervals: the end points' values, and +-1 wherever a critical point ``pi/2 + k pi`` (shifted for cos) may lie in
``[l, u]`` (tested on the interval widened by a margin that covers float64's pi and the division). Lines: for any slope
``s``, ``g(x) = f(x) - s x`` has ``|g''| <= 1``, so on ``[l, u]`` it lies within ``(u - l)^2 / 8`` of its chord, hence
between ``min(g(l), g(u)) - (u - l)^2 / 8`` and ``max(g(l), g(u)) + (u - l)^2 / 8``; with ``s`` the chord slope the
two end values nearly agree. Where the interval's constant lines are tighter (wide intervals) they are used instead.
``f`` is evaluated in float64 with a margin; the model's own sin / cos is within a few ulps of it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verify.ops.base import Op
from verify.rounding import F64, cast_down, cast_up, dot64, down, gamma, magnitude, tiny, unit_roundoff, up

_MARGIN = 8 * unit_roundoff(F64)  # float64 sin / cos (and products with them): within a few ulps of exact


class _Periodic(Op):
    needs_input_bounds = True
    allowance_from_bounds = True
    phase = 0.0  # cos(x) = sin(x + pi / 2)

    def f64(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = self.f64(x.to(F64))
        # range reduction of large arguments costs accuracy in proportion to |x| ulps of pi
        return v, _MARGIN * (1 + x.to(F64).abs()) + tiny(F64)

    def interval(self, bounds):
        lo, hi = bounds
        (fl, el), (fh, eh) = self._values(lo), self._values(hi)
        low, high = torch.minimum(fl - el, fh - eh), torch.maximum(fl + el, fh + eh)
        l64, h64 = lo.to(F64), hi.to(F64)
        slack = 1e-9 * (1 + torch.maximum(l64.abs(), h64.abs()))  # pi and the divisions below, generously
        # maxima of sin at pi/2 + 2k pi, minima at -pi/2 + 2k pi; shift by the phase for cos
        t_lo, t_hi = (l64 + self.phase - slack) / (2 * math.pi), (h64 + self.phase + slack) / (2 * math.pi)
        has_max = torch.ceil(t_lo - 0.25) <= torch.floor(t_hi - 0.25)
        has_min = torch.ceil(t_lo + 0.25) <= torch.floor(t_hi + 0.25)
        one = torch.ones_like(low)
        high = torch.where(has_max, one, high).clamp(max=1.0)
        low = torch.where(has_min, -one, low).clamp(min=-1.0)
        return cast_down(down(low), lo.dtype), cast_up(up(high), lo.dtype)

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``aL x + cL <= f(x) <= aU x + cU`` on ``[lo, hi]`` (slopes in the graph's precision, float64 intercepts)."""
        dtype = lo.dtype
        l64, h64 = lo.to(F64), hi.to(F64)
        (fl, el), (fh, eh) = self._values(lo), self._values(hi)
        width = h64 - l64
        slope64 = torch.where(width > 0, (fh - fl) / torch.where(width > 0, width, torch.ones_like(width)),
                              torch.zeros_like(width))
        s = slope64.clamp(-1.0, 1.0).to(dtype)
        s64 = s.to(F64)
        gl, gh = fl - s64 * l64, fh - s64 * h64
        err = torch.maximum(el, eh) + _MARGIN * (s64 * l64).abs().maximum((s64 * h64).abs())
        sag = width * width / 8 * (1 + _MARGIN) + tiny(F64)
        c_lo = down(torch.minimum(gl, gh) - err - sag)
        c_up = up(torch.maximum(gl, gh) + err + sag)
        ilo, ihi = self.interval((lo, hi))
        flat = (c_up - c_lo) >= (ihi.to(F64) - ilo.to(F64))  # the interval's constant lines are tighter
        zero = torch.zeros_like(s)
        a = torch.where(flat, zero, s)
        return a, torch.where(flat, ilo.to(F64), c_lo), a, torch.where(flat, ihi.to(F64), c_up)

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = (t.unsqueeze(1) for t in in_bounds[0])
        a, c_lo, _, c_up = self.relax(lo, hi)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        return [lam * a], dot64(pos, c_lo) + dot64(neg, c_up)

    def error_radius(self, bounds):
        a = magnitude(*bounds[0]).detach()
        u = unit_roundoff(a.dtype)
        # Lambda times slopes in [-1, 1] against |x| <= a; float64 intercepts |c| <= 1 + a + a^2 / 2; the model's
        # own sin / cos, a few ulps (more for large arguments)
        return (16 * u + 3 * gamma(self.out_numel(), F64)) * (2 + 2 * a + a * a) + 8 * u * (1 + a) + tiny(a.dtype)

    def interval_radius(self, bounds):
        a = magnitude(*bounds[0]).detach()
        return 8 * unit_roundoff(a.dtype) * (1 + a) + tiny(a.dtype)

    def abs_forward(self, ts, bounds):
        return (1 + 16 * unit_roundoff(ts[0].dtype)) * ts[0]  # slopes in [-1, 1]


    def derivative_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian rule: ``[dl, du]`` containing ``f'`` on ``[lo, hi]`` (``sin' = cos``, ``cos' = -sin``): the
        derivative's own interval rule (exact arithmetic, rounded outward)."""
        if isinstance(self, Sin):
            return Cos().interval((lo, hi))
        s_lo, s_hi = Sin().interval((lo, hi))
        return -s_hi, -s_lo  # negation is exact

    global_lipschitz = 1.0  # |f'| <= 1 everywhere (the naive bound)


class Sin(_Periodic):
    kind = "sin"

    def forward(self, x):
        return torch.sin(x)

    def f64(self, x):
        return torch.sin(x)


class Cos(_Periodic):
    kind = "cos"
    phase = math.pi / 2

    def forward(self, x):
        return torch.cos(x)

    def f64(self, x):
        return torch.cos(x)
