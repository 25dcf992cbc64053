"""Gates of the gradient graph (``y = d g``, ``d`` a Clarke derivative in ``[dl, du]``) and their relaxations,
sound in real arithmetic for their floating-point coefficients (``verify.lipschitz.jacobian`` docstring).

The gate's graph is bilinear, so a line is valid on ``[dl, du] x [lg, ug]`` iff it is valid at the four vertices:
intercepts are the vertex extrema of ``g (d - a)``, computed with directed rounding (``verify.rounding``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.errors import UnsupportedOperator
from verify.ops.activation import Activation, LeakyRelu, Relu
from verify.ops.base import Bounds, merge_leading
from verify.ops.bilinear import Mul
from verify.ops.pooling import MaxPool2d
from verify.rounding import F64, cast_down, cast_up, down, mul_down, mul_up, sub_enclose, up


def _diff_enclose(d: Tensor, a: Tensor, da: Tensor | None) -> Bounds:
    """Floats enclosing the exact ``d - a - da`` (``da`` None: 0), exact where the differences are."""
    t_lo, t_hi = sub_enclose(d, a)
    if da is not None:
        t_lo, t_hi = sub_enclose(t_lo, da)[0], sub_enclose(t_hi, da)[1]
    return t_lo, t_hi


def _vertex_max(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor, a: Tensor, da: Tensor | None = None) -> Tensor:
    """A float ``>= max g (d - s)`` over ``d in [dl, du]``, ``g in {lg, ug}`` for the slope ``s = a + da`` (exact
    arithmetic; ``da`` None: 0)."""
    vals = []
    for g in (lg, ug):
        pos = g >= 0
        t_lo, t_hi = _diff_enclose(torch.where(pos, du, dl), a, da)  # d = du maximises g d for g >= 0, else dl
        vals.append(mul_up(g, torch.where(pos, t_hi, t_lo)))
    return torch.maximum(*vals)


def _vertex_min(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor, a: Tensor, da: Tensor | None = None) -> Tensor:
    """A float ``<= min g (d - s)`` over ``d in [dl, du]``, ``g in {lg, ug}``, ``s = a + da`` (exact arithmetic)."""
    vals = []
    for g in (lg, ug):
        pos = g >= 0
        t_lo, t_hi = _diff_enclose(torch.where(pos, dl, du), a, da)
        vals.append(mul_down(g, torch.where(pos, t_lo, t_hi)))
    return torch.minimum(*vals)


def gate_lines(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``aL g + cL <= d g <= aU g + cU`` for all ``d in [dl, du]`` (``dl <= du``, either sign), ``g in [lg, ug]``,
    valid in exact arithmetic for the returned floats.

    Sign-stable ``g``: exact (``[dl g, du g]`` or ``[du g, dl g]``, intercepts 0). Straddling: chords of
    ``max(dl g, du g)`` (convex, upper) and ``min(dl g, du g)`` (concave, lower) -- the convex hull of the gate's
    graph -- with intercepts from the four vertices, rounded outward (module docstring)."""
    a_lo, a_up = _chord_slopes(dl, du, lg, ug)
    c_up = _vertex_max(dl, du, lg, ug, a_up)
    c_lo = _vertex_min(dl, du, lg, ug, a_lo)
    return a_lo, c_lo, a_up, c_up


def _chord_slopes(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor) -> tuple[Tensor, Tensor]:
    pos, neg = lg >= 0, ug <= 0
    straddle = ~(pos | neg)
    width = torch.where(straddle, ug - lg, torch.ones_like(ug))
    a_up = torch.where(pos, du, torch.where(neg, dl, (du * ug - dl * lg) / width))
    a_lo = torch.where(pos, dl, torch.where(neg, du, (dl * ug - du * lg) / width))
    return a_lo, a_up


class StepLines:
    """Gate lines in the form a CROWN step uses: ``Lambda a_up + Lambda+ da`` (three products, no select), i.e.
    the lower line has the real slope ``a_up + da`` (``da = fl(a_lo - a_up)``), and its intercept ``c_lo`` is made
    sound for exactly that slope; kappa is ``<Lambda, c_up> + <Lambda+, c_lo - c_up>`` in float64 (``c_diff``).
    ``slope`` bounds ``|a_up| + |da|`` (the growth of ``|Lambda|``), ``c_mag`` bounds ``|c_lo| + |c_up|``."""

    def __init__(self, dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor):
        a_lo, a_up = _chord_slopes(dl, du, lg, ug)
        c_up = _vertex_max(dl, du, lg, ug, a_up)
        self.a_up, self.da = a_up, a_lo - a_up
        self.c_lo = _vertex_min(dl, du, lg, ug, a_up, self.da)
        self.c_up = c_up
        self.c_up64 = c_up.to(F64)
        self.c_diff64 = self.c_lo.to(F64) - self.c_up64
        self.slope = a_up.abs() + self.da.abs()
        self.c_mag = self.c_lo.abs() + c_up.abs()


def gate_interval(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor) -> Bounds:
    """Interval of ``d g``: min / max of the four corner products, rounded outward."""
    corners = [(dl, lg), (dl, ug), (du, lg), (du, ug)]
    if dl.dtype == torch.float32:  # float32 products are exact in float64: one outward cast of min / max
        p = torch.stack(torch.broadcast_tensors(*[d.to(F64) * g.to(F64) for d, g in corners]))
        return cast_down(p.min(0).values, torch.float32), cast_up(p.max(0).values, torch.float32)
    p = torch.stack(torch.broadcast_tensors(*[d * g for d, g in corners]))
    lo, hi = p.min(0).values, p.max(0).values
    # one step outward bounds the extreme exact product (rounding is monotone); none where every product is
    # exact: factors 0 or 1 (ReLU gates), or g = 0
    exact = (((dl == 0) | (dl == 1)) & ((du == 0) | (du == 1))) | ((lg == 0) & (ug == 0))
    return torch.where(exact, lo, down(lo)), torch.where(exact, hi, up(hi))


def abs_chord(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Upper line ``|g| <= a g + c`` on ``[lo, hi]``: ``+-g`` when sign-stable, else the chord. ``|g| - a g`` is
    convex, so ``c`` is its larger end-point value, rounded up (exact in real arithmetic for the float ``a``)."""
    pos, neg = lo >= 0, hi <= 0
    straddle = ~(pos | neg)
    width = torch.where(straddle, hi - lo, torch.ones_like(hi))
    one = torch.ones_like(hi)
    a = torch.where(pos, one, torch.where(neg, -one, (hi + lo) / width))
    one_minus = sub_enclose(one, a)[1]  # >= 1 - a
    one_plus = sub_enclose(one, -a)[1]  # >= 1 + a
    vals = [torch.where(g >= 0, mul_up(g, one_minus), mul_up(-g, one_plus)) for g in (lo, hi)]
    return a, torch.maximum(*vals)


def activation_gate(op: Activation, lo: Tensor, hi: Tensor, split: Tensor | None = None) -> Bounds:
    """``[dl, du]`` containing every Clarke derivative of the activation on ``[lo, hi]`` (exact arithmetic).

    ReLU splits override the bounds: an active split (``z >= 0``) uses derivative 1, an inactive one 0.
    On ``z = 0`` exactly this drops the Clarke interval's other end, which the sibling domain covers. Other
    element-wise ops (sigmoid, tanh, erf, sin, cos, powers, reciprocal, exp, log, sqrt) state their own rule
    (``derivative_interval``)."""
    if has_derivative_rule(op):
        return op.derivative_interval(lo, hi)
    if isinstance(op, Relu):
        dl = (lo > 0).to(lo.dtype)
        du = (hi >= 0).to(lo.dtype)
        if split is not None:
            dl = torch.where(split > 0, torch.ones_like(dl), torch.where(split < 0, torch.zeros_like(dl), dl))
            du = torch.where(split < 0, torch.zeros_like(du), torch.where(split > 0, torch.ones_like(du), du))
        return dl, torch.maximum(du, dl)
    if isinstance(op, LeakyRelu):  # derivatives s (z < 0) and 1 (z > 0), both at z = 0
        s = torch.full_like(lo, op.slope)
        one = torch.ones_like(lo)
        return torch.where(lo > 0, one, s), torch.where(hi >= 0, one, s)
    raise UnsupportedOperator(op.display_name, detail="Lipschitz bounds: no Clarke derivative rule")


def has_derivative_rule(op) -> bool:
    """An element-wise op of one input whose derivative range on an interval is its own rule (its Jacobian gate)."""
    return callable(getattr(op, "derivative_interval", None))


def unbounded_derivative(op) -> bool:
    """An op with a Jacobian rule but no global bound on its derivative (exp, powers, products of two variables):
    no naive bound."""
    if isinstance(op, Mul):
        return True
    return has_derivative_rule(op) and not math.isfinite(getattr(op, "global_lipschitz", math.inf))


def is_gated(op) -> bool:
    """Ops whose Jacobian is a diagonal gate ``d`` in ``[dl, du]`` (activations and the element-wise ops above)."""
    return isinstance(op, Activation) or has_derivative_rule(op)


def _window_view(op: MaxPool2d, t: Tensor) -> Tensor:
    """Per-output-position values ``[N, *lead, C, Ho, Wo]`` as ``[N, lead, C, 1, L]`` (broadcast over K)."""
    n = t.shape[0]
    ch = op.in_shapes[0][-3]
    return t.reshape(n, -1, ch, 1, t.shape[-2] * t.shape[-1])


def _fold(op: MaxPool2d, t: Tensor) -> Tensor:
    """Sum window elements ``[N, lead, C, K, L]`` back onto the pool's input ``[N, *in_shape]``."""
    x_shape = op.in_shapes[0]
    h, w = x_shape[-2:]
    n = t.shape[0]
    flat = t.reshape(n * t.shape[1], t.shape[2] * t.shape[3], t.shape[4])
    return F.fold(flat, (h, w), op.kernel, padding=op.padding, stride=op.stride).reshape(n, *x_shape)


def maxpool_gate(op: MaxPool2d, lo: Tensor, hi: Tensor) -> Bounds:
    """``[dl, du]`` ``[N, lead, C, K, L]`` of ``d y_w / d x_{w,k}``: 0 unless ``u_k >= max_j l_j`` (a candidate),
    1 for a sole candidate, else ``[0, 1]`` (Clarke: any convex combination at ties)."""
    n = lo.shape[0]
    lo_w = op._windows(merge_leading(lo, 3)[0])
    hi_w = op._windows(merge_leading(hi, 3)[0])
    best = lo_w.max(2, keepdim=True).values
    cand = (hi_w >= best) & torch.isfinite(hi_w)
    sole = cand.sum(2, keepdim=True) == 1
    du = cand.to(lo.dtype)
    dl = (cand & sole).to(lo.dtype)
    shape = (n, -1, *lo_w.shape[1:])
    return dl.reshape(shape), du.reshape(shape)
