"""Exponential, logarithm, square root and softplus (ONNX Exp, Log, Sqrt, Softplus; torch.exp, torch.log, torch.sqrt,
softplus).

``exp`` is convex, ``log`` and ``sqrt`` concave, all increasing: on ``[l, u]`` the tangent at the midpoint and the chord
bound them (below / above for convex, the other way round for concave: ``-f`` is convex, and negation is exact). The
lines come from ``verify.ops.bilinear``'s convex-piece rule, exactly valid for their rounded slopes. ``log`` needs
``l > 0`` and ``sqrt`` ``l >= 0``: a range reaching past that raises ``UnboundedError`` (``clarke verify`` answers
``unknown``). Jacobian rule (local Lipschitz constants): ``f'`` is monotone on ``[l, u]``, so its range is that of the
end points, evaluated in float64 with a relative margin and rounded outward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verify.errors import UnboundedError
from verify.ops.bilinear import HUGE, _capped, _OddConvex
from verify.rounding import F64, cast_down, cast_up, down, magnitude, tiny, unit_roundoff, up

_REL = 8 * unit_roundoff(F64)  # float64 exp / log / sqrt and one division: within a few ulps


def _outward(lo64: Tensor, hi64: Tensor, dtype: torch.dtype, rel: float = 0.0) -> tuple[Tensor, Tensor]:
    """``[lo, hi]`` widened by the relative margin (plus ``rel``, each end relative to itself), rounded outward into
    ``dtype``."""
    lo64 = lo64 - (_REL + rel) * lo64.abs() - tiny(F64)
    hi64 = hi64 + (_REL + rel) * hi64.abs() + tiny(F64)
    return cast_down(down(lo64), dtype), cast_up(up(hi64), dtype)


def _refuse(t: Tensor, bad: Tensor, message: str) -> None:
    """``UnboundedError(message)`` naming the first value of ``t`` where ``bad`` holds (``{v}`` in the message)."""
    if bool(bad.any()):
        raise UnboundedError(message.format(v=float(t.reshape(-1)[int(bad.reshape(-1).nonzero()[0])])))


class _Monotone(_OddConvex):
    """An increasing element-wise function, convex (``concave = False``) or concave, with a closed-form ``f'``."""

    concave = False
    eval_ulps = 8
    interval_rigorous = True  # interval() carries the evaluation allowance per end
    nonnegative = False  # f >= 0, and so is any float evaluation of it (exp, sqrt)

    def f64(self, x64: Tensor) -> Tensor:
        raise NotImplementedError

    def df64(self, x64: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_domain(self, lo: Tensor, hi: Tensor) -> None:
        """Raise ``UnboundedError`` where the input may leave the function's domain (or its value overflow)."""

    # -- the convex-piece rule works on g = f (convex) or g = -f (concave) -----------------------------------------
    def _f(self, x):
        v = self.f64(x.to(F64))
        err = _REL * v.abs() + tiny(F64)
        return (-v if self.concave else v), err

    def _df(self, x64):
        d = self.df64(x64)
        return -d if self.concave else d

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._check_domain(lo, hi)
        a_lo, c_lo, a_up, c_up = self._convex_lines(lo, hi)
        if not self.concave:
            return a_lo, c_lo, a_up, c_up
        return -a_up, -c_up, -a_lo, -c_lo  # lines of -g, exact negations

    def interval(self, bounds):
        """The end points' values, each widened by the model's own evaluation (``eval_ulps`` of itself: a relative
        allowance per end, so a huge upper end does not drag a small lower one below 0), rounded outward."""
        lo, hi = bounds
        self._check_domain(lo, hi)
        v_lo, v_hi = self.f64(lo.to(F64)), self.f64(hi.to(F64))
        low, high = _outward(v_lo, v_hi, lo.dtype, self.eval_ulps * unit_roundoff(lo.dtype))
        return (low.clamp(min=0) if self.nonnegative else low), high

    def derivative_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """``[dl, du]`` containing ``f'`` on ``[lo, hi]`` (exact arithmetic): its end-point values (``f'`` is monotone
        here: increasing for convex ``f``, decreasing for concave), in ``lo``'s dtype."""
        self._check_domain(lo, hi)
        d_lo, d_hi = self.df64(lo.to(F64)), self.df64(hi.to(F64))
        if self.concave:
            d_lo, d_hi = d_hi, d_lo
        dl, du = _outward(d_lo, d_hi, lo.dtype)
        return dl.clamp(min=0), _capped(du)

    def _slope_value_bounds(self, lo, hi):
        lo, hi = lo.detach(), hi.detach()
        d = self.derivative_interval(lo, hi)[1]  # every slope used lies between the end-point derivatives
        v_lo, v_hi = self.f64(lo.to(F64)), self.f64(hi.to(F64))
        value = torch.maximum(v_lo.abs(), v_hi.abs()) * (1 + _REL)
        return d, _capped(value.to(lo.dtype)), magnitude(lo, hi)


class Exp(_Monotone):
    """``z = exp(x)``."""

    kind = "exp"
    nonnegative = True

    def forward(self, x):
        return torch.exp(x)

    def _check_domain(self, lo, hi):
        _refuse(hi, hi >= math.log(torch.finfo(hi.dtype).max), "the input of Exp may reach {v:.6g} on this input box: "
                "exp overflows there")

    def f64(self, x64):
        return torch.exp(x64)

    def df64(self, x64):
        return torch.exp(x64)

    def __repr__(self):
        return "Exp()"


class Log(_Monotone):
    """``z = log(x)`` for ``x > 0``."""

    kind = "log"
    concave = True

    def forward(self, x):
        return torch.log(x)

    def _check_domain(self, lo, hi):
        _refuse(lo, lo <= 0, "the input of Log may be {v:.6g} <= 0 on this input box: log has no bound there")

    def f64(self, x64):
        return torch.log(x64.clamp(min=tiny(F64)))

    def df64(self, x64):
        return 1.0 / x64.clamp(min=tiny(F64))

    def __repr__(self):
        return "Log()"


class Sqrt(_Monotone):
    """``z = sqrt(x)`` for ``x >= 0`` (its slope is unbounded at 0: lines and Jacobian bounds through a range that
    reaches 0 are correspondingly loose)."""

    kind = "sqrt"
    nonnegative = True
    concave = True
    eval_ulps = 2  # IEEE square roots are correctly rounded

    def forward(self, x):
        return torch.sqrt(x)

    def _check_domain(self, lo, hi):
        _refuse(lo, lo < 0, "the input of Sqrt may be {v:.6g} < 0 on this input box: sqrt is undefined there")

    def f64(self, x64):
        return torch.sqrt(x64.clamp(min=0))

    def df64(self, x64):
        return torch.where(x64 > 0, 0.5 / torch.sqrt(x64.clamp(min=tiny(F64))), torch.full_like(x64, HUGE(F64)))

    def _slope_value_bounds(self, lo, hi):
        # the slopes used, the tangent at the midpoint m >= u / 2 and the chord 1 / (sqrt(l) + sqrt(u)), are at most
        # 1 / sqrt(u): finite even where the range reaches 0
        slope, value, a = super()._slope_value_bounds(lo, hi)
        h64 = hi.detach().to(F64)
        bound = torch.where(h64 > 0, 1.0 / torch.sqrt(h64.clamp(min=tiny(F64))), torch.zeros_like(h64))
        return _capped(cast_up(up(bound * (1 + _REL)), lo.dtype)), value, a

    def relax(self, lo, hi):
        self._check_domain(lo, hi)
        # a range [0, 0] has no tangent (f'(0) is infinite): its constant lines are exact
        point0 = hi <= 0
        safe_hi = torch.where(point0, torch.ones_like(hi), hi)
        a_lo, c_lo, a_up, c_up = super().relax(torch.where(point0, torch.zeros_like(lo), lo), safe_hi)
        zero = torch.zeros_like(a_lo)
        return (torch.where(point0, zero, a_lo), torch.where(point0, torch.zeros_like(c_lo), c_lo),
                torch.where(point0, zero, a_up), torch.where(point0, torch.zeros_like(c_up), c_up))

    def __repr__(self):
        return "Sqrt()"


class Softplus(_Monotone):
    """``z = log(1 + exp(x))``, convex and increasing, ``z' = sigmoid(x)``. torch's softplus returns ``x`` itself
    above ``threshold`` (20 by default), ``log1p(exp(-x)) <= exp(-threshold)`` below the real value: that gap is an
    absolute allowance, and the slope there is 1 (above every ``sigmoid``). ONNX Softplus has no threshold."""

    kind = "softplus"
    nonnegative = True

    def __init__(self, threshold: float | None = None):
        if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"softplus threshold must be a finite number >= 0, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.gap = 0.0 if threshold is None else math.exp(-self.threshold)

    def forward(self, x):
        if self.threshold is None:
            return torch.logaddexp(x, torch.zeros_like(x))  # no overflow: as onnxruntime's
        return torch.nn.functional.softplus(x, threshold=self.threshold)

    def f64(self, x64):
        return torch.logaddexp(x64, torch.zeros_like(x64))

    def df64(self, x64):
        return torch.sigmoid(x64)

    def interval(self, bounds):
        low, high = super().interval(bounds)
        if not self.gap:
            return low, high
        return cast_down(down(low.to(F64) - self.gap), low.dtype).clamp(min=0), high  # the model's x is below

    def derivative_interval(self, lo, hi):
        dl, du = super().derivative_interval(lo, hi)
        if self.threshold is None:
            return dl, du
        return dl, torch.where(hi > self.threshold, torch.ones_like(du), du).maximum(du)

    def error_radius(self, bounds):
        return super().error_radius(bounds) + self.gap

    def interval_radius(self, bounds):
        return super().interval_radius(bounds) + self.gap

    def __repr__(self):
        return "Softplus()" if self.threshold is None else f"Softplus(threshold={self.threshold:g})"
