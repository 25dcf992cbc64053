"""Softmax and LogSoftmax along one per-sample axis (ONNX Softmax / LogSoftmax, torch.softmax / log_softmax).

Interval (both): with ``y_i = 1 / (1 + sum_{j != i} exp(x_j - x_i))``, ``y_i >= 1 / (1 + sum_{j != i} exp(u_j - l_i))``
and ``y_i <= 1 / (1 + sum_{j != i} exp(l_j - u_i))``, computed pairwise in float64 with a margin for its rounding and
rounded outward; LogSoftmax takes the same expressions' logs by a stable log-sum-exp.

Softmax's CROWN relaxation is a pair of planes per output, ``P_i(x) <= y_i <= Q_i(x)`` on the box, composed as
auto_LiRPA composes its decomposition (Shi et al., ICLR 2020) with the shift by a fixed index (softmax is
shift-invariant): ``k`` = the argmax of the box centre, ``d_j = x_j - x_k`` (``d_k = 0``), ``e_j = exp(d_j)``
(chord above, tangent below), ``S = sum_j e_j >= 1``, ``r = 1 / S`` (chord above, tangent below), ``y_i = e_i r``
(McCormick: ``y >= r_l e + e_l r - e_l r_l``, ``y <= r_u e + e_l r - e_l r_u``). Every line is valid for its
rounded slope (intercepts from end-point values or global minima, with margins), every inner bound is rounded
outward, and the planes' intercepts give up ``gamma_{2n+16}`` of the magnitudes of all terms composed (float64),
so the planes hold for the exact softmax. Rows whose differences may exceed ``MAX_DIFFERENCE`` keep the constant
lines ``lo_y <= y <= hi_y``. LogSoftmax keeps the constant lines. Neither has a Jacobian rule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verify.ops.interval_relaxed import IntervalRelaxed
from verify.rounding import F64, cast_down, cast_up, down, gamma, tiny, unit_roundoff, up

MAX_DIFFERENCE = 8.0
"""Rows where some ``x_j - x_k`` may exceed this keep the constant relaxation (``exp`` there is too curved for a
useful chord, and the magnitudes the planes' margins scale with stay small)."""


class _LastPlanes:
    """The planes last computed by an op and the bound tensors they came from: a CROWN pass asks for them three
    times per node (its step, its allowance, the allowance pushed through it) and every pass over the same bounds
    again. Reused only for those very tensors, unchanged (same object, same version counter). Not pickled. The key
    and the planes live in one tuple, read and replaced whole, so threads sharing an op never pair one call's key
    with another call's planes."""

    def __init__(self) -> None:
        self.entry: tuple | None = None  # (lo, hi, lo version, hi version, planes)

    def get(self, lo: Tensor, hi: Tensor, compute):
        if lo.is_inference() or hi.is_inference():  # no version counter (torch.inference_mode): no reuse
            return compute()
        e = self.entry
        if e is not None and e[0] is lo and e[1] is hi and e[2] == lo._version and e[3] == hi._version:
            return e[4]
        value = compute()
        self.entry = (lo, hi, lo._version, hi._version, value)
        return value

    def __getstate__(self) -> dict:
        return {"entry": None}


def _last_planes(op) -> _LastPlanes:
    memo = op.__dict__.get("_last_planes")
    if memo is None:
        memo = op._last_planes = _LastPlanes()
    return memo


class _AxisOp(IntervalRelaxed):
    """One input, one axis: the pairwise differences both interval rules use."""

    def __init__(self, axis: int):
        self.axis = int(axis)

    def _dim(self, t: Tensor) -> int:
        return self.axis - len(self.in_shapes[0])  # counted from the end: works with or without a spec axis

    def _pairs(self, bounds) -> tuple[int, int, Tensor, Tensor, Tensor]:
        """``(d, n, diff_hi, diff_lo, off)``: the softmax axis (from the end), its length, the float64 differences
        ``u_j - l_i`` and ``l_j - u_i`` as ``[..., i, j]`` and the off-diagonal mask."""
        lo, hi = bounds
        d = self._dim(lo)
        l64, u64 = lo.to(F64).movedim(d, -1), hi.to(F64).movedim(d, -1)
        n = l64.shape[-1]
        off = ~torch.eye(n, dtype=torch.bool, device=lo.device)
        return d, n, u64.unsqueeze(-2) - l64.unsqueeze(-1), l64.unsqueeze(-2) - u64.unsqueeze(-1), off


def _interval_from_differences(diff_lo: Tensor, diff_hi: Tensor, model_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``y_i`` between ``1 / (1 + sum_{j != i} exp(diff_hi_ij))`` and the same with ``diff_lo`` (float64 ``[..., i,
    j]`` bounds of ``x_j - x_i``; pairwise sums, no cancellation). Margins: exp of a rounded difference is within
    ``(|diff| + 2) u`` of exact, the sum adds ``n u``, and an error of ``rel * s`` in ``s`` moves ``1 / (1 + s)`` by at
    most ``rel / 4`` (overflow to inf gives the bound 0, sound); plus the model's own float softmax in its precision,
    ``(n + 8) u`` (a sum of ``n`` exponentials and a division). Float64, clamped to [0, 1]."""
    n = diff_lo.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=diff_lo.device)

    def others(diff: Tensor) -> tuple[Tensor, Tensor]:
        """``sum_{j != i} exp(diff_ij)`` for every i and max |diff_ij|."""
        terms = torch.where(off, torch.exp(diff), torch.zeros_like(diff))
        return terms.sum(-1), torch.where(off, diff.abs(), torch.zeros_like(diff)).amax(-1)

    s_hi, r_hi = others(diff_hi)  # the largest competitor mass: the lower bound of y_i
    s_lo, r_lo = others(diff_lo)
    model = (n + 8) * unit_roundoff(model_dtype)
    low = 1 / (1 + s_hi) - (64 + n + r_hi) * unit_roundoff(F64) - model
    up_ = 1 / (1 + s_lo) + (64 + n + r_lo) * unit_roundoff(F64) + model
    return low.clamp(0.0, 1.0), up_.clamp(0.0, 1.0)


class Softmax(_AxisOp):
    """``softmax`` along per-sample ``axis``, relaxed by planes (module docstring)."""

    kind = "softmax"
    allowance_from_bounds = True  # the planes' slopes come from the input's bounds

    def forward(self, x):
        return torch.softmax(x, dim=self.axis + 1)

    def interval(self, bounds):
        lo = bounds[0]
        d, _, diff_hi, diff_lo, _ = self._pairs(bounds)
        low, up_ = _interval_from_differences(diff_lo, diff_hi, lo.dtype)
        return cast_down(low.movedim(-1, d), lo.dtype), cast_up(up_.movedim(-1, d), lo.dtype)

    def interval_radius(self, bounds):
        return tiny(bounds[0][0].dtype)  # the interval rule rounds outward itself

    # -- the planes ------------------------------------------------------------------------------------------------
    def planes(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(A_lo, b_lo, A_up, b_up)``, float64, the softmax axis last: ``A [B, *rows, n_i, n_j]``, ``b [B, *rows,
        n_i]`` with ``A_lo[i] . x + b_lo[i] <= y_i <= A_up[i] . x + b_up[i]`` on the box (module docstring)."""
        return _last_planes(self).get(lo, hi, lambda: self._planes(lo, hi))

    def _planes(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            d = self._dim(lo)
            low, high = self.interval((lo.detach(), hi.detach()))
            const_lo, const_up = low.to(F64).movedim(d, -1), high.to(F64).movedim(d, -1)
            lo64, hi64 = lo.detach().to(F64).movedim(d, -1), hi.detach().to(F64).movedim(d, -1)
            return _or_constant(_composed_planes(lo64, hi64), const_lo, const_up)

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = in_bounds[0]
        d = self._dim(lo)
        a_lo, b_lo, a_up, b_up = self.planes(lo, hi)
        lm = lam.movedim(d, -1)
        pos, neg = lm.clamp(min=0).to(F64), lm.clamp(max=0).to(F64)
        # row i of A times lambda_i, summed over i: [B, S, *rows, 1, n] @ [B, 1, *rows, n, n]
        lam_x = (pos.unsqueeze(-2) @ a_lo.unsqueeze(1) + neg.unsqueeze(-2) @ a_up.unsqueeze(1)).squeeze(-2)
        kappa = (pos * b_lo.unsqueeze(1) + neg * b_up.unsqueeze(1)).flatten(2).sum(-1)
        return [lam_x.movedim(-1, d).to(lam.dtype)], kappa

    def _slope_mass(self, bounds) -> tuple[Tensor, Tensor]:
        """``(max(|A_lo|, |A_up|) [B, *rows, n, n], max(|b_lo|, |b_up|) [B, *rows, n])``, the axis last."""
        a_lo, b_lo, a_up, b_up = self.planes(*bounds[0])
        return torch.maximum(a_lo.abs(), a_up.abs()), torch.maximum(b_lo.abs(), b_up.abs())

    def error_radius(self, bounds):
        if isinstance(bounds[0], Tensor):  # magnitudes only (forward-mode / MIP callers): the constant lines
            a = bounds[0].detach()
            n = self.in_shapes[0][self.axis]
            return torch.full_like(a, (n + 8) * unit_roundoff(a.dtype) + 3 * gamma(self.out_numel(), F64)) \
                + tiny(a.dtype)
        lo, hi = bounds[0]
        d, n = self._dim(lo), self.in_shapes[0][self.axis]
        slopes, consts = self._slope_mass(bounds)
        mag = torch.maximum(lo.detach().abs(), hi.detach().abs()).to(F64).movedim(d, -1)
        # the model's float softmax ((n + 8) u of |y| <= 1); lambda A and its cast, in the graph's precision; the
        # float64 dots of kappa
        dots = (slopes @ mag.unsqueeze(-1)).squeeze(-1)
        e = (n + 8) * unit_roundoff(lo.dtype) + 2 * gamma(n + 2, lo.dtype) * dots \
            + 3 * gamma(self.out_numel(), F64) * consts
        return cast_up(e.movedim(-1, d), lo.dtype) + tiny(lo.dtype)

    def abs_forward(self, ts, bounds=None):
        if bounds is None:
            return ts[0].new_zeros(ts[0].shape[0], *self.out_shape)  # not reached: allowance_from_bounds
        lo = bounds[0][0]
        d = self._dim(lo)
        slopes, _ = self._slope_mass(bounds)
        t = ts[0].to(F64).movedim(d, -1)
        out = (slopes @ t.unsqueeze(-1)).squeeze(-1) * (1 + 2 * gamma(slopes.shape[-1], F64))
        return cast_up(out.movedim(-1, d), ts[0].dtype)

    def __repr__(self):
        return f"Softmax(axis={self.axis})"


class SoftmaxOfDifferences(IntervalRelaxed):
    """``y_i = softmax(x)_i`` read from the pairwise differences ``D[..., i, j] = x_j - x_i`` (per-sample input
    ``(..., n, n)``, output ``(..., n)``): the frontends compute ``D`` with a constant Dense map, so CROWN bounds each
    difference (tighter than ``[l_j - u_i, u_j - l_i]``: the scores' common terms cancel). Interval: ``y_i`` between
    ``1 / sum_j exp(u_D[i, j])`` and ``1 / sum_j exp(l_D[i, j])``; planes: :func:`_planes_in_differences` on row
    ``k`` of ``D`` (``k`` the box centre's argmax: the row whose differences are least), so only ``D[k, :]``
    gets coefficients."""

    kind = "softmax"
    display_name = "Softmax"  # what messages call it (the differences are an implementation detail)
    allowance_from_bounds = True

    def forward(self, d):
        return torch.softmax(d[..., 0, :], dim=-1)  # D[0, j] = x_j - x_0: softmax is shift-invariant

    def interval(self, bounds):
        lo, hi = bounds
        low, up_ = _interval_from_differences(lo.to(F64), hi.to(F64), lo.dtype)
        return cast_down(low, lo.dtype), cast_up(up_, lo.dtype)

    def interval_radius(self, bounds):
        return tiny(bounds[0][0].dtype)

    def planes(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(C_lo, b_lo, C_up, b_up, k)``, float64: ``C [B, *rows, n_i, n_j]`` the coefficients of ``D[k, j]``,
        ``k [B, *rows, 1]``; rows without planes have ``C = 0`` and the interval as ``b``."""
        return _last_planes(self).get(lo, hi, lambda: self._planes(lo, hi))

    def _planes(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            lo64, hi64 = lo.detach().to(F64), hi.detach().to(F64)
            low, high = self.interval((lo.detach(), hi.detach()))
            const_lo, const_up = low.to(F64), high.to(F64)
            k = ((lo64 + hi64) / 2).sum(-1).argmin(-1, keepdim=True)  # [B, *rows, 1]
            pick = k.unsqueeze(-1).expand(*k.shape, lo64.shape[-1])
            dl, du = lo64.gather(-2, pick).squeeze(-2), hi64.gather(-2, pick).squeeze(-2)
            at_k = torch.zeros_like(dl, dtype=torch.bool).scatter(-1, k, True)
            finite = torch.isfinite(lo64).all(-1).all(-1) & torch.isfinite(hi64).all(-1).all(-1)
            return (*_or_constant(_planes_in_differences(dl, du, at_k, finite), const_lo, const_up), k)

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = in_bounds[0]
        c_lo, b_lo, c_up, b_up, k = self.planes(lo, hi)
        pos, neg = lam.clamp(min=0).to(F64), lam.clamp(max=0).to(F64)
        on_k = (pos.unsqueeze(-2) @ c_lo.unsqueeze(1) + neg.unsqueeze(-2) @ c_up.unsqueeze(1))  # [B, S, .., 1, n]
        row_k = torch.zeros(*k.shape[:-1], lo.shape[-1], dtype=F64, device=lo.device).scatter(-1, k, 1.0)
        lam_d = row_k.unsqueeze(1).unsqueeze(-1) * on_k  # row k of D: [B, S, .., n, n]
        kappa = (pos * b_lo.unsqueeze(1) + neg * b_up.unsqueeze(1)).flatten(2).sum(-1)
        return [lam_d.to(lam.dtype)], kappa

    def _row_k_mass(self, bounds, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum_j max(|C_lo|, |C_up|)_ij t[k, j], max(|b_lo|, |b_up|))`` for ``t`` on D's shape."""
        c_lo, b_lo, c_up, b_up, k = self.planes(*bounds[0])
        pick = k.unsqueeze(-1).expand(*k.shape, t.shape[-1])
        t_k = t.to(F64).gather(-2, pick).squeeze(-2)  # [B, *rows, n]
        slopes = torch.maximum(c_lo.abs(), c_up.abs())
        return (slopes @ t_k.unsqueeze(-1)).squeeze(-1), torch.maximum(b_lo.abs(), b_up.abs())

    def error_radius(self, bounds):
        if isinstance(bounds[0], Tensor):  # magnitudes only (forward-mode / MIP callers): the constant lines
            a = bounds[0].detach()
            n = self.in_shapes[0][-1]
            return torch.full((a.shape[0], *self.out_shape), (n + 8) * unit_roundoff(a.dtype)
                              + 3 * gamma(self.out_numel(), F64), dtype=a.dtype, device=a.device) + tiny(a.dtype)
        lo, hi = bounds[0]
        n = lo.shape[-1]
        dots, consts = self._row_k_mass(bounds, torch.maximum(lo.detach().abs(), hi.detach().abs()))
        e = (n + 8) * unit_roundoff(lo.dtype) + 2 * gamma(n + 2, lo.dtype) * dots \
            + 3 * gamma(self.out_numel(), F64) * consts
        return cast_up(e, lo.dtype) + tiny(lo.dtype)

    def abs_forward(self, ts, bounds=None):
        if bounds is None:
            return ts[0].new_zeros(ts[0].shape[0], *self.out_shape)  # not reached: allowance_from_bounds
        dots, _ = self._row_k_mass(bounds, ts[0])
        return cast_up(dots * (1 + 2 * gamma(ts[0].shape[-1], F64)), ts[0].dtype)

    def __repr__(self):
        return "SoftmaxOfDifferences()"


def _composed_planes(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """The planes of :meth:`Softmax.planes` (softmax axis last, float64) and the rows where they apply: the planes
    in ``d_j = x_j - x_k`` (:func:`_planes_in_differences`) with ``d`` substituted (``x_k``'s coefficient is minus
    the sum of the others: its rounding is paid in the constant)."""
    k = ((lo + hi) / 2).argmax(-1, keepdim=True)
    at_k = torch.zeros_like(lo, dtype=torch.bool).scatter(-1, k, True)
    lk, hk = lo.gather(-1, k), hi.gather(-1, k)
    dl = torch.where(at_k, 0.0, down(lo - hk))
    du = torch.where(at_k, 0.0, up(hi - lk))
    finite = torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
    out = _planes_in_differences(dl, du, at_k, finite)
    if out is None:
        return None
    c_lo, b_lo, c_up, b_up, ok = out
    mag_x = torch.maximum(lo.abs(), hi.abs())
    mag_k = (mag_x * at_k).sum(-1, keepdim=True).unsqueeze(-1)
    n = lo.shape[-1]

    def to_x(coef_d: Tensor, b: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        coef_x = coef_d - at_k.unsqueeze(-2) * coef_d.sum(-1, keepdim=True)
        slack = gamma(n + 2, F64) * (coef_d.abs() * (mag_x.unsqueeze(-2) + mag_k)).sum(-1) + tiny(F64)
        return coef_x, (b + slack) if upper else (b - slack)

    a_lo, b_lo = to_x(c_lo, b_lo, upper=False)
    a_up, b_up = to_x(c_up, b_up, upper=True)
    return a_lo, b_lo, a_up, b_up, ok


def _or_constant(planes, const_lo: Tensor, const_up: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The planes ``(A_lo, b_lo, A_up, b_up, ok)`` (or None) where ``ok`` holds and all are finite, the interval's
    constant lines (``A = 0``, ``b`` the interval) on every other row."""
    zeros = torch.zeros(*const_lo.shape, const_lo.shape[-1], dtype=F64, device=const_lo.device)
    if planes is None:
        return zeros, const_lo, zeros, const_up
    a_lo, b_lo, a_up, b_up, ok = planes
    ok = ok & torch.isfinite(a_lo).all(-1).all(-1) & torch.isfinite(a_up).all(-1).all(-1) \
        & torch.isfinite(b_lo).all(-1) & torch.isfinite(b_up).all(-1)
    keep = ok.unsqueeze(-1)
    return (torch.where(keep.unsqueeze(-1), a_lo, zeros), torch.where(keep, b_lo, const_lo),
            torch.where(keep.unsqueeze(-1), a_up, zeros), torch.where(keep, b_up, const_up))


def _planes_in_differences(dl: Tensor, du: Tensor, at_k: Tensor, finite: Tensor
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None:
    """Planes of ``y_i = exp(d_i) / sum_j exp(d_j)`` in the differences ``d_j = x_j - x_k`` (``d_k = 0``, marked by
    ``at_k``) on ``d_j in [dl_j, du_j]``: ``(C_lo [.., i, j], b_lo [.., i], C_up, b_up, ok)`` with
    ``C_lo[i] . d + b_lo[i] <= y_i <= C_up[i] . d + b_up[i]`` where ``ok`` (float64, axis last; module docstring)."""
    u = unit_roundoff(F64)
    n = dl.shape[-1]
    dl = torch.where(at_k, 0.0, dl)
    du = torch.where(at_k, 0.0, du)
    ok = finite & torch.isfinite(dl).all(-1) & (du.amax(-1) <= MAX_DIFFERENCE)
    if not bool(ok.any()):
        return None
    du = torch.where(ok.unsqueeze(-1), du, torch.zeros_like(du))  # rows kept constant: any finite values
    dl = torch.where(ok.unsqueeze(-1), dl, torch.zeros_like(dl))
    # e_j = exp(d_j) in [el, eu] (float64 exp within 2 ulps); e_k = 1 exactly
    el = torch.where(at_k, 1.0, dl.exp() * (1 - 4 * u))
    el_up = torch.where(at_k, 1.0, dl.exp() * (1 + 4 * u))  # exp(dl) from above, for the chord's intercept
    eu = torch.where(at_k, 1.0, du.exp() * (1 + 4 * u))
    s_lo = (el.sum(-1, keepdim=True) * (1 - 2 * (n + 2) * u)).clamp(min=1.0)  # S >= e_k = 1
    s_up = eu.sum(-1, keepdim=True) * (1 + 2 * (n + 2) * u)
    r_lo, r_up = (1 / s_up) * (1 - 4 * u), ((1 / s_lo) * (1 + 4 * u)).clamp(max=1.0)  # r <= 1 as S >= 1
    # exp's lines: the chord (above, valid through both end points), the tangent at the middle (below, everywhere:
    # min_z e^z - a z = a (1 - ln a))
    width = du - dl
    a_ch = torch.where(width > 0, (eu - el) / width.clamp(min=tiny(F64)), eu)
    v1, v2 = el_up - a_ch * dl, eu - a_ch * du
    c_ch = torch.maximum(v1, v2) + 4 * u * (el_up + (a_ch * dl).abs() + eu + (a_ch * du).abs()) + tiny(F64)
    a_tg = ((dl + du) / 2).exp().clamp(min=tiny(F64))
    c_tg = a_tg * (1 - a_tg.log()) - 8 * u * (a_tg + (a_tg * a_tg.log()).abs()) - tiny(F64)
    a_ch, c_ch = torch.where(at_k, 0.0, a_ch), torch.where(at_k, 1.0, c_ch)  # e_k = 1: the constant line
    a_tg, c_tg = torch.where(at_k, 0.0, a_tg), torch.where(at_k, 1.0, c_tg)
    # 1/S's lines: the tangent (below, everywhere on S > 0: min_S 1/S - a S = 2 sqrt(-a)) and the chord (above)
    s_mid = (s_lo + s_up) / 2
    ar_tg = -1 / (s_mid * s_mid)
    br_tg = 2 * (-ar_tg).sqrt() * (1 - 8 * u) - tiny(F64)
    ar_ch = -1 / (s_lo * s_up)
    inv_lo_up, inv_up_up = (1 / s_lo) * (1 + 4 * u), (1 / s_up) * (1 + 4 * u)
    br_ch = torch.maximum(inv_lo_up - ar_ch * s_lo, inv_up_up - ar_ch * s_up) \
        + 4 * u * (inv_lo_up + (ar_ch * s_lo).abs() + inv_up_up + (ar_ch * s_up).abs()) + tiny(F64)
    mag_d = torch.maximum(dl.abs(), du.abs())
    eye = torch.eye(n, dtype=F64, device=dl.device)

    def plane(r_self: Tensor, c_mc: Tensor, ar: Tensor, br: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        """``y_i >= (<=) r_self e_i + el_i r + c_mc_i`` with ``r`` replaced by its line ``ar S + br`` and each
        ``e_j`` by its line on the side the coefficient's sign asks for."""
        g = eye * r_self.unsqueeze(-1) + (el * ar).unsqueeze(-1)  # [.., i, j]: coefficient of e_j in row i
        const = el * br + c_mc
        below = (g >= 0) != upper  # e_j's line below it: the tangent
        a_e = torch.where(below, a_tg.unsqueeze(-2), a_ch.unsqueeze(-2))
        c_e = torch.where(below, c_tg.unsqueeze(-2), c_ch.unsqueeze(-2))
        coef_d = g * a_e  # zero at j = k (a_e = 0 there)
        const = const + (g * c_e).sum(-1)
        # every product and sum above rounds; gamma_{2n+16} of the magnitudes of all terms covers them
        mass = (r_self * eu + el * r_self.abs() + c_mc.abs() + el * (ar.abs() * s_up + br.abs())
                + (g.abs() * (eu.unsqueeze(-2) + a_e.abs() * mag_d.unsqueeze(-2) + c_e.abs())).sum(-1)
                + (coef_d.abs() * mag_d.unsqueeze(-2)).sum(-1))
        slack = gamma(2 * n + 16, F64) * mass + tiny(F64)
        return coef_d, (const + slack) if upper else (const - slack)

    c_lo = -(el * r_lo) * (1 + 2 * u) - tiny(F64)  # McCormick's constants, rounded to the safe side
    c_up = -(el * r_up) * (1 - 2 * u)
    a_lo, b_lo = plane(r_lo.expand_as(el), c_lo, ar_tg, br_tg, upper=False)
    a_up, b_up = plane(r_up.expand_as(el), c_up, ar_ch, br_ch, upper=True)
    return a_lo, b_lo, a_up, b_up, ok


class LogSoftmax(_AxisOp):
    """``log_softmax`` along per-sample ``axis`` (constant lines from the interval)."""

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
        up_ = -small + (64 + n + r_small + 8 * small.abs()) * u + (n + 8) * um + 4 * um * (big.abs() + math.log(n))
        low, up_ = low.movedim(-1, d), up_.clamp(max=0.0).movedim(-1, d)
        return cast_down(low, lo.dtype), cast_up(up_, lo.dtype)

    def error_radius(self, mags):
        a = mags[0].detach()
        n = self.in_shapes[0][self.axis]
        y = 2 * a + math.log(n)  # |y_i| <= |x_i - max x| + log n
        um = unit_roundoff(a.dtype)
        return (n + 8) * um + 4 * um * y + 3 * gamma(self.out_numel(), F64) * y + tiny(a.dtype)

    def interval_radius(self, mags):
        return tiny(mags[0].dtype)  # the interval rule rounds outward itself

    def __repr__(self):
        return f"LogSoftmax(axis={self.axis})"
