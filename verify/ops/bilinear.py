"""Products of two variables, ``z = x * y`` element-wise with broadcasting (gates, attention-style scaling, ONNX Mul
of two variables), and integer powers ``z = x^n`` (ONNX Pow with a constant exponent).

Product: McCormick's envelopes on ``[lx, ux] x [ly, uy]`` (McCormick, Math. Prog. 1976): ``z >= ly x + lx y - lx ly``
and ``z >= uy x + ux y - ux uy``; ``z <= uy x + lx y - lx uy`` and ``z <= ly x + ux y - ux ly``. The CROWN step
gives ``Lambda+`` a convex combination of the two lower planes and ``Lambda-`` one of the two upper ones, weights
``r`` in [0, 1] per output (0.5, the means, unless alpha-CROWN optimises them, as auto_LiRPA's interpolated
relaxation); the constant is the extreme of ``xy - a x - b y`` over the four corners for the slopes as computed,
rounded to the safe side, so each plane holds exactly.
Powers ``x^n`` (``Power``): chord and tangent on convex pieces (sound on same-sign intervals too, where auto_LiRPA's
bound of ``x^2`` is not).

Rounding: the planes hold in real arithmetic for the exact end points; the computed coefficients and ``Lambda``
products round a few times, and the model's own product once. All of it is covered by the allowance
``(16 u + 3 gamma_n) a_x a_y`` (``a`` the inputs' magnitudes; the float64 constants ``|c| <= 2 a_x a_y``)."""

from __future__ import annotations

import torch
from torch import Tensor

from verify.errors import UnboundedError
from verify.ops.base import Op, unbroadcast
from verify.rounding import (
    F64,
    cast_down,
    cast_up,
    dot64,
    down,
    gamma,
    magnitude,
    mul_down,
    mul_enclose,
    mul_up,
    tiny,
    unit_roundoff,
    up,
)


class Mul(Op):
    """``z = x * y`` for two variables (per-sample shapes broadcast as torch does)."""

    kind = "mul"
    needs_input_bounds = True
    allowance_from_bounds = True

    def forward(self, x, y):
        return x * y

    def interval(self, bx, by):
        lx, ux = bx
        ly, uy = by
        shape = torch.broadcast_shapes(lx.shape, ly.shape)
        lo = hi = None
        for a in (lx, ux):
            for b in (ly, uy):
                down_, up_ = mul_enclose(a.expand(shape), b.expand(shape))
                lo = down_ if lo is None else torch.minimum(lo, down_)
                hi = up_ if hi is None else torch.maximum(hi, up_)
        return lo, hi

    n_alpha = 2  # the lower and the upper planes' weights

    def init_alpha(self, lo, hi):
        """``[2, B, 1, *out_shape]`` of 0.5: the planes' means (one weight per output; ``lo`` is the first input's)."""
        return torch.full((2, lo.shape[0], 1, *self.out_shape), 0.5, dtype=lo.dtype, device=lo.device)

    def project_alpha(self, alpha, lo, hi):
        return alpha.clamp(0.0, 1.0)

    def backward(self, lam, in_bounds, alpha=None):
        (lx, ux), (ly, uy) = (tuple(t.unsqueeze(1) for t in b) for b in in_bounds)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        r_lo, r_up = (0.5, 0.5) if alpha is None else (alpha[0], alpha[1])
        # lower: r (ly x + lx y - lx ly) + (1 - r) (uy x + ux y - ux uy); upper: r (uy x + lx y - lx uy) + (1 - r)
        # (ly x + ux y - ux ly)
        a_lo, b_lo = (ly - uy) * r_lo + uy, (lx - ux) * r_lo + ux
        a_up, b_up = (uy - ly) * r_up + ly, (lx - ux) * r_up + ux
        lam_x = pos * a_lo + neg * a_up
        lam_y = pos * b_lo + neg * b_up
        kappa = dot64(pos, _plane_constant(a_lo, b_lo, in_bounds, lower=True)) \
            + dot64(neg, _plane_constant(a_up, b_up, in_bounds, lower=False))
        return [unbroadcast(lam_x, self.in_shapes[0]), unbroadcast(lam_y, self.in_shapes[1])], kappa

    def error_radius(self, bounds):
        ax, ay = (magnitude(*b).detach() for b in bounds)
        u = unit_roundoff(ax.dtype)
        # the sums over broadcast copies of an input in the backward step: gamma_m
        m = max(self.out_numel() // max(1, int(torch.Size(s).numel())) for s in self.in_shapes)
        # slopes within [-a, a] (convex combinations of bounds), |c| <= 3 a_x a_y
        return (16 * u + 2 * gamma(m, ax.dtype) + 3 * gamma(self.out_numel(), F64)) * (ax * ay) * 3 + tiny(ax.dtype)

    def interval_radius(self, bounds):
        ax, ay = (magnitude(*b).detach() for b in bounds)
        return 2 * unit_roundoff(ax.dtype) * ax * ay + tiny(ax.dtype)  # the model's product; corners round once

    def abs_forward(self, ts, bounds):
        # |Lambda_x| <= |Lambda| |(ly + uy) / 2| <= |Lambda| a_y (and the same for y), times the rounding growth
        tx, ty = ts
        ax, ay = (magnitude(*b).detach() for b in bounds)
        return (1 + 16 * unit_roundoff(tx.dtype)) * (tx * ay + ax * ty)

    def __repr__(self):
        return "Mul()"


def _plane_constant(a: Tensor, b: Tensor, in_bounds, lower: bool) -> Tensor:
    """The constant that makes ``a x + b y + c`` a lower (upper) plane of ``xy`` on the box for the slopes as given:
    ``min`` (``max``) of ``xy - a x - b y`` over the four corners (a bilinear function takes its extremes there), in
    float64, moved by its rounding to the safe side: three products and two differences per corner, within
    ``4 u (|x y| + |a x| + |b y|)``, each term bounded by ``|a| max(|lx|, |ux|)`` etc. (one slack for all corners:
    no corner's is larger). The slopes ``a``, ``b`` carry a row axis (one per ``Lambda`` row, alpha-CROWN); the
    corner products of the bounds alone do not, so they are formed once."""
    (lx, ux), (ly, uy) = (tuple(t.unsqueeze(1).to(F64) for t in bnd) for bnd in in_bounds)
    a64, b64 = a.to(F64), b.to(F64)  # the constant follows the slopes (alpha-CROWN differentiates it)
    ax_l, ax_u, by_l, by_u = a64 * lx, a64 * ux, b64 * ly, b64 * uy
    pick = torch.minimum if lower else torch.maximum
    c = pick(pick(lx * ly - ax_l - by_l, lx * uy - ax_l - by_u), pick(ux * ly - ax_u - by_l, ux * uy - ax_u - by_u))
    with torch.no_grad():
        mx, my = torch.maximum(lx.abs(), ux.abs()), torch.maximum(ly.abs(), uy.abs())
        slack = 4 * unit_roundoff(F64) * (mx * my + a64.abs() * mx + b64.abs() * my) + tiny(F64)
    return c - slack if lower else c + slack


class _OddConvex(Op):
    """An element-wise ``f`` that is convex on ``x >= 0`` and either even (convex everywhere) or odd
    (``f(-x) = -f(x)``): integer powers (a reciprocal would fit too, once allowances can see ``min |x|``).

    On convex pieces: the tangent at the midpoint below, the chord above; an odd ``f`` with ``u <= 0`` is the mirror
    image; an odd ``f`` across 0 gets its interval's constant lines. Every line is exactly valid for its rounded
    slope: the chord's intercept is the larger of the two end-point conditions (a line above a convex function at
    both ends is above it between them), the tangent's is lowered by ``|f'(m) - s| max|x - m|`` (convexity); ``f`` is
    evaluated in float64 with a relative margin."""

    needs_input_bounds = True
    allowance_from_bounds = True
    even = False
    eval_ulps = 8  # the model's own evaluation of f is within this many ulps of |f|

    def _f(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x)`` in float64 and a bound on its rounding error."""
        raise NotImplementedError

    def _df(self, x64: Tensor) -> Tensor:
        raise NotImplementedError

    def _convex_lines(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Lines ``aL x + cL <= f(x) <= aU x + cU`` on ``[lo, hi]`` where ``f`` is convex: slopes in the graph's
        precision, intercepts float64 (rounded the safe way)."""
        dtype, u64 = lo.dtype, unit_roundoff(F64)
        l64, h64 = lo.to(F64), hi.to(F64)
        m = ((lo + hi) * 0.5).to(F64)
        d_m = self._df(m)
        a_lo = d_m.to(dtype)
        f_m, e_m = self._f(m)
        gap = (d_m - a_lo.to(F64)).abs() + 4 * u64 * d_m.abs()  # |f'(m) - s|, with room
        reach = torch.maximum(h64 - m, m - l64).clamp(min=0)
        prod = a_lo.to(F64) * m
        c_lo = down(f_m - e_m - prod - gap * reach - 4 * u64 * (prod.abs() + gap * reach) - tiny(F64))
        (f_l, e_l), (f_h, e_h) = self._f(l64), self._f(h64)
        width = h64 - l64
        chord = torch.where(width > 0, (f_h - f_l) / torch.where(width > 0, width, torch.ones_like(width)), d_m)
        a_up = chord.to(dtype)
        s64 = a_up.to(F64)
        at_l, at_h = f_l + e_l - s64 * l64, f_h + e_h - s64 * h64
        c_up = up(torch.maximum(at_l, at_h) + 4 * u64 * ((s64 * l64).abs() + (s64 * h64).abs()) + tiny(F64))
        return a_lo, c_lo, a_up, c_up

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.even:
            return self._convex_lines(lo, hi)
        pos, neg = lo >= 0, hi <= 0
        one = torch.ones_like(lo)
        # odd: f(x) = -f(-x); the lower line of f on [l, u] is minus the upper line of f on [-u, -l]. Pieces not
        # selected are computed on [1, 1] (no pole, no NaN anywhere, gradients included)
        a_lo_p, c_lo_p, a_up_p, c_up_p = self._convex_lines(torch.where(pos, lo, one), torch.where(pos, hi, one))
        a_lo_m, c_lo_m, a_up_m, c_up_m = self._convex_lines(torch.where(neg, -hi, one), torch.where(neg, -lo, one))
        across_lo, across_hi = self.interval((lo, hi))
        zero = torch.zeros_like(lo)
        a_lo = torch.where(pos, a_lo_p, torch.where(neg, a_up_m, zero))
        a_up = torch.where(pos, a_up_p, torch.where(neg, a_lo_m, zero))
        c_lo = torch.where(pos, c_lo_p, torch.where(neg, -c_up_m, across_lo.to(F64)))
        c_up = torch.where(pos, c_up_p, torch.where(neg, -c_lo_m, across_hi.to(F64)))
        return a_lo, c_lo, a_up, c_up

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = (t.unsqueeze(1) for t in in_bounds[0])
        a_lo, c_lo, a_up, c_up = self.relax(lo, hi)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        return [pos * a_lo + neg * a_up], dot64(pos, c_lo) + dot64(neg, c_up)

    def _slope_value_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per neuron: a bound on every slope used, on ``|f|``, and the magnitude ``a`` of the input."""
        raise NotImplementedError

    def error_radius(self, bounds):
        slope, value, a = self._slope_value_bounds(*bounds[0])
        u = unit_roundoff(a.dtype)
        # Lambda products with the slopes against |x| <= a, the model's evaluation of f, float64 kappas (|c| <= 3 |f|
        # + slope * a)
        e = (16 * u + 3 * gamma(self.out_numel(), F64)) * 3 * (slope * a + value) + self.eval_ulps * u * value \
            + tiny(a.dtype)
        return _capped(e)

    def interval_radius(self, bounds):
        _, value, a = self._slope_value_bounds(*bounds[0])
        return _capped(self.eval_ulps * unit_roundoff(a.dtype) * value + tiny(a.dtype))  # the model's evaluation

    def abs_forward(self, ts, bounds):
        slope, _, _ = self._slope_value_bounds(*bounds[0])
        return _capped((1 + 16 * unit_roundoff(ts[0].dtype)) * slope * ts[0])


def _capped(e: Tensor) -> Tensor:
    """Allowances of unbounded pieces: a huge finite number (inf would meet zero coefficients as NaN), which makes
    every bound through them effectively infinite."""
    return torch.nan_to_num(e, nan=HUGE(e.dtype), posinf=HUGE(e.dtype)).clamp(max=HUGE(e.dtype))


def HUGE(dtype: torch.dtype) -> float:  # noqa: N802 - a constant per dtype
    return float(torch.finfo(dtype).max) / 1e6


class Power(_OddConvex):
    """``z = x ** n`` for an integer ``n >= 2`` (ONNX Pow with a constant exponent, ``x * x``)."""

    kind = "power"

    def __init__(self, n: int):
        if int(n) != n or n < 2:
            raise ValueError(f"Power needs an integer exponent >= 2, got {n!r}")
        self.n = int(n)
        self.even = self.n % 2 == 0
        self.eval_ulps = 2 * (self.n + 2)  # pow, or n - 1 rounded products

    def forward(self, x):
        return x ** self.n

    def _f(self, x):
        v = x.to(F64) ** self.n
        return v, 4 * (self.n + 1) * unit_roundoff(F64) * v.abs() + tiny(F64)

    def _df(self, x64):
        return self.n * x64 ** (self.n - 1)

    def interval(self, bounds):
        lo, hi = bounds
        (pl, el), (ph, eh) = self._f(lo), self._f(hi)
        if not self.even:  # increasing
            return cast_down(down(pl - el), lo.dtype), cast_up(up(ph + eh), lo.dtype)
        top = torch.maximum(ph + eh, pl + el)
        bottom = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(pl), torch.minimum(pl - el, ph - eh))
        return cast_down(down(bottom.clamp(min=0)), lo.dtype), cast_up(up(top), lo.dtype)

    def _slope_value_bounds(self, lo, hi):
        a = magnitude(lo, hi).detach()
        return self.n * a ** (self.n - 1), a ** self.n, a  # every slope used is at most f' at the magnitude

    def derivative_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian rule: ``[dl, du]`` containing ``n x^(n-1)`` on ``[lo, hi]`` (exact arithmetic): ``n`` times the
        interval of ``x^(n-1)`` (``2 x`` for squares), products rounded outward."""
        p_lo, p_hi = (lo, hi) if self.n == 2 else Power(self.n - 1).interval((lo, hi))
        n = torch.tensor(float(self.n), dtype=lo.dtype, device=lo.device)
        return mul_down(n, p_lo), mul_up(n, p_hi)

    def __repr__(self):
        return f"Power({self.n})"


class Reciprocal(_OddConvex):
    """``z = 1 / x`` (ONNX Reciprocal; a Div by a variable is a product with it). On ``[l, u]`` away from 0 the slopes
    are at most ``1 / d^2`` and ``|z| <= 1 / d``, ``d = min(|l|, |u|)``. A range holding 0 has no bound: that raises
    ``UnboundedError`` (``clarke verify`` answers ``unknown``)."""

    kind = "reciprocal"

    def forward(self, x):
        return 1.0 / x

    def _f(self, x):
        v = 1.0 / x.to(F64)
        return v, 4 * unit_roundoff(F64) * v.abs() + tiny(F64)

    def _df(self, x64):
        return -1.0 / (x64 * x64)

    def interval(self, bounds):
        lo, hi = bounds
        inside = (lo <= 0) & (hi >= 0)
        if bool(inside.any()):
            i = int(inside.reshape(-1).nonzero()[0])
            raise UnboundedError(f"a divisor may be 0 on this input box (its bounds [{float(lo.reshape(-1)[i]):.6g}, "
                                 f"{float(hi.reshape(-1)[i]):.6g}]): the quotient has no bound")
        (fl, el), (fh, eh) = self._f(lo), self._f(hi)
        return cast_down(down(fh - eh), lo.dtype), cast_up(up(fl + el), lo.dtype)  # decreasing on each side of 0

    def derivative_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian rule: ``[dl, du]`` containing ``-1 / x^2`` on ``[lo, hi]`` away from 0 (exact arithmetic): from the
        smallest and largest ``|x|``, in float64 with a relative margin, rounded outward."""
        self.interval((lo, hi))  # raises UnboundedError where the range holds 0
        l64, h64 = lo.to(F64), hi.to(F64)
        near, far = torch.minimum(l64.abs(), h64.abs()), torch.maximum(l64.abs(), h64.abs())
        steep, flat = -1.0 / (near * near), -1.0 / (far * far)
        rel = 8 * unit_roundoff(F64)
        return cast_down(down(steep * (1 + rel)), lo.dtype), cast_up(up(flat * (1 - rel)), lo.dtype)

    def _slope_value_bounds(self, lo, hi):
        lo, hi = lo.detach(), hi.detach()
        d = torch.where((lo > 0) | (hi < 0), torch.minimum(lo.abs(), hi.abs()), torch.zeros_like(lo))
        safe = torch.where(d > 0, d, torch.ones_like(d))
        value = torch.where(d > 0, 1.0 / safe, torch.full_like(d, float("inf"))) * (1 + 4 * unit_roundoff(d.dtype))
        return value * value, value, magnitude(lo, hi)

    def __repr__(self):
        return "Reciprocal()"


def Square() -> Power:  # noqa: N802 - reads like the op it builds
    """``z = x * x``."""
    return Power(2)
