"""Element-wise activations with sound linear relaxations ``aL z + cL <= f(z) <= aU z + cU`` on [l, u].

ReLU: triangle relaxation, lower slope alpha in [0, 1] (CROWN / alpha-CROWN, Xu et al., ICLR 2021).
Sigmoid / Tanh: any slope ``a`` gives a sound line once its intercept is the exact extremum of
``f(z) - a z`` on [l, u]; that extremum is attained at an end point or where ``f'(z) = a``, which has a
closed form for both functions. Slopes are tangent/chord heuristics (CROWN) or optimised (alpha).

Rounding: the lines are sound for their floating-point coefficients in real arithmetic (ReLU's chord
intercept is rounded up past both end-point conditions; sigmoid/tanh intercepts come from float64 extrema
with a margin and are rounded outward). The backward step's products and float64 dots are covered by the
error radius ``16 u a + 8 u + 3 gamma_n (1 + 2a)`` (slopes in [0, 1], ``|c| <= 1 + a``; ``u`` the unit roundoff,
``8 u`` for a float evaluation of sigmoid/tanh, whose values lie in [-1, 1]); intervals need only ``8 u``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.ops.base import Op
from verify.rounding import F64, cast_down, cast_up, dot64, gamma, sparse_dot64, tiny, unit_roundoff


class Activation(Op):
    """Element-wise ``h = f(z)``; one input, same shape."""

    needs_input_bounds = True
    n_alpha = 1  # optimisable slopes per neuron (lower only for ReLU; lower and upper otherwise)

    def relax(self, lo: Tensor, hi: Tensor, alpha: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def init_alpha(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Default slopes, stacked on a leading axis of size ``n_alpha``."""
        raise NotImplementedError

    def project_alpha(self, alpha: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        raise NotImplementedError

    def interval(self, bounds):
        lo, hi = bounds
        return self.forward(lo), self.forward(hi)

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = in_bounds[0]
        # Bounds are per box [B, *shape]; broadcast over the spec axis S.
        return self.apply_relaxation(lam, *self.relax(lo.unsqueeze(1), hi.unsqueeze(1), alpha))

    def apply_relaxation(self, lam: Tensor, aL: Tensor, cL: Tensor, aU: Tensor, cU: Tensor
                         ) -> tuple[list[Tensor], Tensor]:
        """The backward step with the lines ``aL z + cL <= f(z) <= aU z + cU`` (broadcastable to ``lam``)."""
        # Lambda+ takes the lower line, Lambda- the upper: lam*aU + (aL - aU)*Lambda+ in fewer passes.
        pos = lam.clamp(min=0)
        lam_in = torch.addcmul(lam * aU, pos, aL - aU)
        kappa = dot64(lam, cU) + dot64(pos, cL - cU)
        return [lam_in], kappa

    def error_radius(self, mags):
        a = mags[0].detach()
        u = unit_roundoff(a.dtype)
        return 16 * u * a + 8 * u + 3 * gamma(self.out_numel(), F64) * (1 + 2 * a) + tiny(a.dtype)

    def abs_forward(self, ts):
        # every slope used lies in [0, 1] (projected alphas, chords and tangents of functions with f' <= 1)
        return (1 + 16 * unit_roundoff(ts[0].dtype)) * ts[0]

    def interval_radius(self, mags):
        return 8 * unit_roundoff(mags[0].dtype)  # f(l), f(u) and any float evaluation: a few ulps of |f| <= 1


class Relu(Activation):
    kind = "relu"
    interval_exact = True

    def forward(self, x):
        return torch.relu(x)

    def relax(self, lo, hi, alpha=None):
        active, inactive = lo >= 0, hi <= 0
        unstable = ~(active | inactive)
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        a_up = torch.where(unstable, hi / denom, active.to(hi.dtype))
        # The line a z + c lies above ReLU on [l, u] iff a l + c >= 0 and a u + c >= u (convexity). With the
        # rounded slope a, take c above both -a l and u (1 - a), each off by at most 3 roundings: 4u covers it.
        u = unit_roundoff(hi.dtype)
        c_chord = torch.maximum(-a_up * lo, hi * (1 - a_up)) * (1 + 4 * u) + tiny(hi.dtype)
        c_up = torch.where(unstable, c_chord, torch.zeros_like(hi))
        if alpha is None:
            a_lo_unstable = (hi >= -lo).to(hi.dtype)
        else:
            a_lo_unstable = alpha[0]
        a_lo = torch.where(unstable, a_lo_unstable, active.to(hi.dtype))
        return a_lo, torch.zeros_like(c_up), a_up, c_up

    def apply_relaxation(self, lam, aL, cL, aU, cU):
        # Lambda+ takes the lower line, Lambda- the upper (lam aU + Lambda+ (aL - aU): exact where the neuron is
        # stable, a few roundings otherwise, within the allowance); the lower lines have no intercept
        cols = _differing_columns(aL, aU, lam)
        if cols is None:
            lam_in = torch.addcmul(lam * aU, lam.clamp(min=0), aL - aU)
            return [lam_in], sparse_dot64(lam.clamp(max=0), cU)
        # Only the columns where the lines differ (unstable neurons) need the sign split; elsewhere aL = aU and
        # the same formula gives lam aU exactly. The intercepts are zero off those columns too.
        sub = lam.reshape(*lam.shape[:2], -1)[..., cols]

        def pick(t: Tensor) -> Tensor:
            return t.expand(*t.shape[:2], *lam.shape[2:]).reshape(t.shape[0], t.shape[1], -1)[..., cols]

        a_lo, a_up = pick(aL), pick(aU)
        fixed = torch.addcmul(sub * a_up, sub.clamp(min=0), a_lo - a_up)
        prod = lam * aU  # a fresh tensor: the in-place column update below is safe for autograd
        flat = prod.reshape(*prod.shape[:2], -1)
        flat.index_copy_(2, cols, fixed.expand(*flat.shape[:2], -1))
        lam_in = flat.reshape(prod.shape)
        kappa = (sub.clamp(max=0).to(F64) * pick(cU).to(F64)).sum(-1)
        return [lam_in], kappa

    def init_alpha(self, lo, hi):
        return (hi >= -lo).to(hi.dtype).unsqueeze(0)

    def project_alpha(self, alpha, lo, hi):
        return alpha.clamp(0.0, 1.0)

    def error_radius(self, mags):
        a = mags[0].detach()
        # backward: 3 roundings per product of Lambda with slopes in [0, 1]; kappa: float64 dots with |c| <= a
        return (16 * unit_roundoff(a.dtype) + 3 * gamma(self.out_numel(), F64)) * a + tiny(a.dtype)


class _SShaped(Activation):
    """Convex on z < 0, concave on z > 0, increasing, with closed-form ``(f')^{-1}``."""

    n_alpha = 2

    def f(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def df(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def stationary(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """Both solutions of ``f'(z) = a`` (+-inf / 0 where there are none; callers clamp to [l, u])."""
        raise NotImplementedError

    def forward(self, x):
        return self.f(x)

    def _tangent_through(self, lo, hi, anchor_hi: bool) -> Tensor:
        """Slope of the tangent at t touching the curve and passing through an end point (bisection).

        For the upper line (anchor at l): t in [0, u]; for the lower line (anchor at u): t in [l, 0].
        """
        if anchor_hi:
            a, b, px = lo.clamp(max=0), torch.zeros_like(lo), hi
        else:
            a, b, px = torch.zeros_like(hi), hi.clamp(min=0), lo
        py = self.f(px)
        for _ in range(24):
            t = (a + b) / 2
            # g(t) = tangent at t evaluated at px, minus f(px)
            g = self.f(t) + self.df(t) * (px - t) - py
            if anchor_hi:  # lower line: need tangent at t (t<=0) below f(u): g <= 0; move t towards 0
                a, b = torch.where(g <= 0, t, a), torch.where(g <= 0, b, t)
            else:  # upper line: need tangent at t (t>=0) above f(l): g >= 0; move t towards 0
                a, b = torch.where(g >= 0, a, t), torch.where(g >= 0, t, b)
        t = a if anchor_hi else b
        return self.df(t)

    def init_alpha(self, lo, hi):
        mid = (lo + hi) / 2
        width = hi - lo
        chord = (self.f(hi) - self.f(lo)) / torch.where(width > 1e-6, width, torch.ones_like(width))
        chord = torch.where(width > 1e-6, chord, self.df(mid))
        tangent = self.df(mid)
        up_straddle = self._tangent_through(lo, hi, anchor_hi=False)
        lo_straddle = self._tangent_through(lo, hi, anchor_hi=True)
        a_up = torch.where(hi <= 0, chord, torch.where(lo >= 0, tangent, torch.minimum(up_straddle, chord)))
        a_lo = torch.where(lo >= 0, chord, torch.where(hi <= 0, tangent, torch.minimum(lo_straddle, chord)))
        return torch.stack([a_lo, a_up])

    def derivative_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian rule: ``f'`` is even and decreasing in ``|z|``: its maximum on ``[lo, hi]`` is at the point
        nearest 0, its minimum at an end. Evaluated in float64, whose sigmoid / tanh / erf are within a few ulps:
        values of at most ``2 / sqrt(pi)``, so ``64 u64 (1 + du)`` absolute covers it; rounded outward."""
        lo64, hi64 = lo.to(F64), hi.to(F64)
        near = torch.minimum(torch.maximum(torch.zeros_like(lo64), lo64), hi64)
        du, dl = self.df(near), torch.minimum(self.df(lo64), self.df(hi64))
        margin = 64 * unit_roundoff(F64) * (1 + du)
        return cast_down((dl - margin).clamp(min=0), lo.dtype), cast_up(du + margin, lo.dtype)

    def project_alpha(self, alpha, lo, hi):
        # Slopes outside [0, max f' on [l, u]] are sound but never useful.
        peak = self.df(torch.minimum(torch.maximum(torch.zeros_like(lo), lo), hi))
        return torch.minimum(alpha.clamp(min=0.0), peak)

    def _offsets(self, lo, hi, a):
        """``(min, max)`` of ``f(z) - a z`` over [l, u], computed in float64 plus a safety margin."""
        lo64, hi64, a64 = lo.double(), hi.double(), a.double()
        with torch.no_grad():  # envelope theorem: d/da max_z (f(z) - a z) = -z*, so z* is a constant
            z1, z2 = self.stationary(a64)
            z1 = torch.minimum(torch.maximum(z1, lo64), hi64)
            z2 = torch.minimum(torch.maximum(z2, lo64), hi64)
        cands = torch.stack(torch.broadcast_tensors(lo64, hi64, z1, z2))
        vals = self.f(cands) - a64 * cands
        cmin, cmax = vals.min(0).values, vals.max(0).values
        # Never let a NaN through as a bound: an infinite offset is loose but sound.
        cmin = torch.where(torch.isnan(cmin), torch.full_like(cmin, float("-inf")), cmin)
        cmax = torch.where(torch.isnan(cmax), torch.full_like(cmax, float("inf")), cmax)
        # float64 rounding of f(z) - a z at the candidates (the error of the stationary points is second order)
        scale = 1 + cmin.abs().maximum(cmax.abs()) + a64.abs() * torch.maximum(lo64.abs(), hi64.abs())
        margin = 64 * unit_roundoff(F64) * scale
        return cast_down(cmin - margin, lo.dtype), cast_up(cmax + margin, lo.dtype)

    def relax(self, lo, hi, alpha=None):
        if alpha is None:
            alpha = self.init_alpha(lo, hi)
        a_lo, a_up = alpha[0], alpha[1]
        c_lo, _ = self._offsets(lo, hi, a_lo)
        _, c_up = self._offsets(lo, hi, a_up)
        return a_lo.expand_as(c_lo), c_lo, a_up.expand_as(c_up), c_up


class Sigmoid(_SShaped):
    kind = "sigmoid"
    global_lipschitz = 0.25  # max sigma' (the naive Lipschitz bound)

    def f(self, z):
        return torch.sigmoid(z)

    def df(self, z):
        s = torch.sigmoid(z)
        return s * (1 - s)

    def stationary(self, a):
        disc = (1 - 4 * a).clamp(0, 1).sqrt()  # a <= 0: no stationary point (z -> -+inf, clamped)
        s1, s2 = (1 - disc) / 2, (1 + disc) / 2
        return torch.logit(s1), torch.logit(s2)


class Tanh(_SShaped):
    kind = "tanh"
    global_lipschitz = 1.0

    def f(self, z):
        return torch.tanh(z)

    def df(self, z):
        return 1 - torch.tanh(z) ** 2

    def stationary(self, a):
        t = (1 - a).clamp(min=0, max=1).sqrt()
        return torch.atanh(-t), torch.atanh(t)


class Erf(_SShaped):
    """``erf(z)`` (ONNX Erf; GELU is ``x (1 + erf(x / sqrt 2)) / 2``, a product the frontends build from it). Its
    slopes reach ``2 / sqrt(pi) ~ 1.128``, so the allowances of the other S-shaped functions (slopes in [0, 1]) are
    scaled by that bound."""

    kind = "erf"
    MAX_SLOPE = 1.1283791670955126 * (1 + 1e-12)  # 2 / sqrt(pi), rounded up
    global_lipschitz = MAX_SLOPE

    def f(self, z):
        return torch.erf(z)

    def df(self, z):
        return (2 / math.sqrt(math.pi)) * torch.exp(-z * z)

    def stationary(self, a):
        # erf'(z) = a  <=>  z^2 = -log(a sqrt(pi) / 2); no solution for a <= 0 (z -> +-inf) or a > 2 / sqrt(pi) (0)
        r = (a * (math.sqrt(math.pi) / 2)).clamp(min=1e-300)
        z = torch.sqrt((-torch.log(r)).clamp(min=0))
        z = torch.where(a > 0, z, torch.full_like(z, float("inf")))
        return -z, z

    def error_radius(self, mags):
        return self.MAX_SLOPE * super().error_radius(mags)

    def abs_forward(self, ts):
        return self.MAX_SLOPE * super().abs_forward(ts)


class LeakyRelu(Activation):
    """``f(z) = z`` for z >= 0, ``s z`` below, with ``0 <= s <= 1`` (ONNX LeakyRelu; PRelu with one slope).

    Convex and piecewise linear like ReLU: the upper line is the chord over [l, u]; the lower lines through the
    origin with slope alpha in [s, 1] (alpha-CROWN optimises it). Rounding as ReLU's: ``s z`` is one product."""

    kind = "leakyrelu"

    def __init__(self, slope: float):
        if not 0.0 <= float(slope) <= 1.0:
            raise ValueError(f"LeakyRelu slope {slope} outside [0, 1]")
        self.slope = float(slope)

    def forward(self, x):
        return F.leaky_relu(x, self.slope)

    def relax(self, lo, hi, alpha=None):
        s = self.slope
        active, inactive = lo >= 0, hi <= 0
        unstable = ~(active | inactive)
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        chord = (hi - s * lo) / denom
        a_up = torch.where(unstable, chord, torch.where(active, torch.ones_like(hi), torch.full_like(hi, s)))
        # the line a z + c is above f on [l, u] iff a l + c >= s l and a u + c >= u (convexity); c above both
        # (a - s)(-l) and (1 - a) u, each off by at most 3 roundings
        u = unit_roundoff(hi.dtype)
        c_chord = torch.maximum((a_up - s) * (-lo), hi * (1 - a_up)) * (1 + 4 * u) + tiny(hi.dtype)
        c_up = torch.where(unstable, c_chord.clamp(min=0), torch.zeros_like(hi))
        a_lo_unstable = torch.where(hi >= -lo, torch.ones_like(hi), torch.full_like(hi, s)) if alpha is None \
            else alpha[0]
        a_lo = torch.where(unstable, a_lo_unstable, a_up)
        return a_lo, torch.zeros_like(c_up), a_up, c_up

    def init_alpha(self, lo, hi):
        return torch.where(hi >= -lo, torch.ones_like(hi), torch.full_like(hi, self.slope)).unsqueeze(0)

    def project_alpha(self, alpha, lo, hi):
        return alpha.clamp(self.slope, 1.0)

    def error_radius(self, mags):
        a = mags[0].detach()
        return (16 * unit_roundoff(a.dtype) + 3 * gamma(self.out_numel(), F64)) * a + tiny(a.dtype)

    def interval_radius(self, mags):
        a = mags[0].detach()
        return 2 * unit_roundoff(a.dtype) * a + tiny(a.dtype)  # s l and s u: one rounding each

    def __repr__(self):
        return f"LeakyRelu({self.slope:g})"


def _differing_columns(aL: Tensor, aU: Tensor, lam: Tensor) -> Tensor | None:
    """Flat per-sample indices where some box or row has ``aL != aU`` (the unstable neurons), or None when they
    are more than a third of the columns or the slopes do not have ``lam``'s rank (then the dense step is as cheap)."""
    if aL.dim() != lam.dim() or aU.dim() != lam.dim():
        return None
    n = lam[0, 0].numel()
    differ = (aL != aU).reshape(-1, aL[0, 0].numel())
    if differ.shape[1] != n:
        return None
    cols = differ.any(0).nonzero().squeeze(1)
    return cols if 3 * cols.numel() <= n else None
