"""Bounds on the Clarke Jacobian of a graph over an input box (Shi et al., NeurIPS 2022).

The backward (gradient) graph has one value ``G:v = d f_j / d v`` per forward value ``v``, seeded with
``G:out = c_j`` (a row of the seed matrix), built from the forward ops in reverse:

* linear op ``y = L(x_1..x_n) + b``: ``G:x_k += L_k^T G:y`` (the op's ``adjoint``);
* activation ``h = sigma(z)``: ``G:z += D (.) G:h`` with ``D in [dl, du]`` from the forward bounds of ``z``
  (ReLU: Clarke derivative 1 / 0 / [0, 1]; smooth: ``[min sigma', max sigma']`` on ``[l_z, u_z]``);
* objective ``sum_i |G:x_i|`` (local l_inf Lipschitz constant of ``f_j``) or ``G:x_i`` (monotonicity).

The gate ``y = d g`` with ``d in [dl, du]`` (``dl >= 0``) and ``g in [lg, ug]`` is relaxed by the convex hull
of ``{(g, d g)}``: two chords (``y <= max(dl g, du g)``, ``y >= min(dl g, du g)``), the doc's Clarke ReLU
rule for ``[0, 1]``. CROWN on the gradient graph pushes ``Lambda`` from ``G:x`` towards the seed, i.e. along
the *forward* direction of the network: the transpose of ``L_k^T`` is the forward linear map ``L_k``, so
conv Jacobians need no dense identity specs. The batch axis ``N`` enumerates (box, seed) pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.errors import UnsupportedOperator
from verify.graph import Graph, Node
from verify.ops.activation import Activation, Relu, Sigmoid, Tanh
from verify.ops.affine import AddVars, Scale
from verify.ops.base import Bounds, LinearOp, merge_leading
from verify.ops.linear import Conv2d, Dense
from verify.ops.pooling import AvgPool2d, MaxPool2d
from verify.ops.shape import Concat, Pad, Reshape, Transpose

ELEMENTS_PER_PASS = 2 ** 22  # cap on N * rows * numel per intermediate CROWN pass (memory, cache)
MIN_ROWS = 64  # rows per pass at least (per-pass overhead)


def _dot(lam: Tensor, const: Tensor) -> Tensor:
    """``sum over per-sample dims of lam [N|1, S, *shape] * const [N, *shape]`` -> ``[N, S]``."""
    prod = lam * const.unsqueeze(1)
    return prod.reshape(*prod.shape[:2], -1).sum(-1)


def _bdot(lam: Tensor, const: Tensor) -> Tensor:
    """``_dot`` as a batched matrix product; ``lam`` may have batch 1 (broadcast over ``const``'s N)."""
    n = const.shape[0]
    lam = lam.expand(n, *lam.shape[1:])
    return torch.bmm(lam.reshape(n, lam.shape[1], -1), const.reshape(n, -1, 1)).squeeze(-1)


def forward_linear(op: LinearOp, k: int, lam: Tensor) -> Tensor:
    """The linear part ``L_k`` of an affine op applied to ``lam [M, S, *in_shape_k]`` (no offset).

    This is the transpose of the Jacobian step ``G:x_k = L_k^T G:y``, hence the CROWN step of the gradient
    graph. Explicit rules avoid subtracting the offset (rounding); the fallback uses a jvp at zero."""
    m, s = lam.shape[:2]
    out_shape = op.out_shape
    if isinstance(op, Dense):
        return F.linear(lam, op.weight)
    if isinstance(op, Conv2d):
        return op._conv(lam, op.weight, None)
    if isinstance(op, Scale):
        y = lam if op.weight is None else lam * op.weight
        return y.expand(m, s, *out_shape)
    if isinstance(op, AddVars):
        return (lam * op.signs[k]).expand(m, s, *out_shape)
    if isinstance(op, Reshape):
        return lam.reshape(m, s, *out_shape)
    if isinstance(op, Transpose):
        return lam.permute(0, 1, *[p + 2 for p in op.perm])
    if isinstance(op, Pad):
        return F.pad(lam, op.pads, mode="constant", value=0.0)
    if isinstance(op, AvgPool2d):
        return op.forward(lam)  # no offset; merges the leading axes itself
    flat, lead = merge_leading(lam, len(op.in_shapes[k]))
    primals = tuple(torch.zeros(flat.shape[0], *sh, dtype=lam.dtype) for sh in op.in_shapes)
    tangents = tuple(flat if i == k else torch.zeros_like(p) for i, p in enumerate(primals))
    _, dy = torch.func.jvp(op.forward, primals, tangents)
    return dy.reshape(*lead, *out_shape)


def abs_adjoint(op: LinearOp, rad: Tensor) -> list[Tensor | None]:
    """``|L_k|^T rad`` for every input ``k`` (the radius step of interval arithmetic on ``G``)."""
    if isinstance(op, Dense):
        return [rad @ op.weight.abs()]
    if isinstance(op, Conv2d):
        absop = copy.copy(op)
        absop.weight = op.weight.abs()
        return absop.adjoint(rad)
    if isinstance(op, Scale):
        r = rad if op.weight is None else rad * op.weight.abs()
        return [_scale_reduce(op, r.expand_as(rad))]
    if isinstance(op, AddVars):
        absop = copy.copy(op)
        absop.signs = tuple(abs(s) for s in op.signs)
        return absop.adjoint(rad)
    if isinstance(op, Reshape | Transpose | Pad | AvgPool2d | Concat) or getattr(op, "monotone", False):
        return op.adjoint(rad)  # non-negative coefficients
    raise UnsupportedOperator(type(op).__name__, detail="Lipschitz bounds: no interval rule for its Jacobian")


def _scale_reduce(op: Scale, g: Tensor) -> Tensor:
    """Sum a gradient over axes along which a Scale broadcast its input."""
    shape = op.in_shapes[0]
    if tuple(g.shape[2:]) == shape:
        return g
    extra = g.dim() - 2 - len(shape)
    if extra > 0:
        g = g.sum(dim=tuple(range(2, 2 + extra)))
    dims = tuple(i + 2 for i, d in enumerate(shape) if d == 1 and g.shape[i + 2] != 1)
    return g.sum(dim=dims, keepdim=True) if dims else g


def adjoint(op: LinearOp, lam: Tensor) -> list[Tensor | None]:
    """``L_k^T lam`` for every input (the Jacobian step), robust to broadcasting Scales."""
    if isinstance(op, Scale):
        g = lam if op.weight is None else lam * op.weight
        return [_scale_reduce(op, g.expand_as(lam))]
    return op.adjoint(lam)


def gate_lines(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lines ``aL g + cL <= d g <= aU g + cU`` for all ``d in [dl, du]`` (``0 <= dl <= du``), ``g in [lg, ug]``.

    Sign-stable ``g``: exact (``[dl g, du g]`` or ``[du g, dl g]``). Straddling: chords of ``max(dl g, du g)``
    (convex, upper) and ``min(dl g, du g)`` (concave, lower) -- the convex hull of the gate's graph."""
    pos, neg = lg >= 0, ug <= 0
    straddle = ~(pos | neg)
    width = torch.where(straddle, ug - lg, torch.ones_like(ug))
    a_up_s = (du * ug - dl * lg) / width
    a_lo_s = (dl * ug - du * lg) / width
    c_up_s = du * ug - a_up_s * ug
    c_lo_s = dl * ug - a_lo_s * ug
    # Rounding of the chord intercepts: widen by a few ulps of the magnitudes involved.
    slack = 16 * torch.finfo(ug.dtype).eps * (du * (ug.abs() + lg.abs()) + (a_up_s.abs() + a_lo_s.abs()) * ug.abs())
    zero = torch.zeros_like(ug)
    a_up = torch.where(pos, du, torch.where(neg, dl, a_up_s))
    a_lo = torch.where(pos, dl, torch.where(neg, du, a_lo_s))
    c_up = torch.where(straddle, c_up_s + slack, zero)
    c_lo = torch.where(straddle, c_lo_s - slack, zero)
    return a_lo, c_lo, a_up, c_up


def gate_interval(dl: Tensor, du: Tensor, lg: Tensor, ug: Tensor) -> Bounds:
    """Interval of ``d g``: min / max of the four corner products."""
    prods = torch.stack([dl * lg, dl * ug, du * lg, du * ug])
    return prods.min(0).values, prods.max(0).values


def abs_chord(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Upper line ``|g| <= a g + c`` on ``[lo, hi]``: ``+-g`` when sign-stable, else the chord."""
    pos, neg = lo >= 0, hi <= 0
    straddle = ~(pos | neg)
    width = torch.where(straddle, hi - lo, torch.ones_like(hi))
    a_s = (hi + lo) / width
    c_s = -2 * hi * lo / width + 16 * torch.finfo(hi.dtype).eps * (hi.abs() + lo.abs())
    a = torch.where(pos, torch.ones_like(hi), torch.where(neg, -torch.ones_like(hi), a_s))
    return a, torch.where(straddle, c_s, torch.zeros_like(hi))


def activation_gate(op: Activation, lo: Tensor, hi: Tensor, split: Tensor | None = None) -> Bounds:
    """``[dl, du]`` containing every Clarke derivative of the activation on ``[lo, hi]``.

    ReLU splits override the bounds: an active split (``z >= 0``) uses derivative 1, an inactive one 0.
    On ``z = 0`` exactly this drops the Clarke interval's other end, which the sibling domain covers."""
    if isinstance(op, Relu):
        dl = (lo > 0).to(lo.dtype)
        du = (hi >= 0).to(lo.dtype)
        if split is not None:
            dl = torch.where(split > 0, torch.ones_like(dl), torch.where(split < 0, torch.zeros_like(dl), dl))
            du = torch.where(split < 0, torch.zeros_like(du), torch.where(split > 0, torch.ones_like(du), du))
        return dl, torch.maximum(du, dl)
    if isinstance(op, Sigmoid | Tanh):
        # sigma' is even and decreasing in |z|: max at the point of [lo, hi] nearest 0, min at an end.
        near = torch.minimum(torch.maximum(torch.zeros_like(lo), lo), hi)
        du = op.df(near)
        dl = torch.minimum(op.df(lo), op.df(hi))
        margin = 1e-12 + 1e-9 * du
        return (dl - margin).clamp(min=0), du + margin
    raise UnsupportedOperator(type(op).__name__, detail="Lipschitz bounds: no Clarke derivative rule")


def _window_view(op: MaxPool2d, t: Tensor) -> Tensor:
    """Per-output-position values ``[N, *lead, C, Ho, Wo]`` as ``[N, lead, C, 1, L]`` (broadcast over K)."""
    n = t.shape[0]
    ch = op.in_shapes[0][-3]
    return t.reshape(n, -1, ch, 1, t.shape[-2] * t.shape[-1])


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


class JacobianGraph:
    """The gradient graph of a forward graph and its IBP / CROWN bounds.

    ``gates`` maps each activation node name to ``(dl, du)`` ``[N, *shape]``; ``gb`` maps forward names to
    bounds of ``G:name`` ``[N, *shape]``; ``seeds`` is ``[N, *out_shape]``."""

    def __init__(self, graph: Graph):
        for n in graph.nodes:
            if not (isinstance(n.op, LinearOp) or isinstance(n.op, Relu | Sigmoid | Tanh | MaxPool2d)):
                raise UnsupportedOperator(
                    type(n.op).__name__, n.name,
                    detail="Lipschitz bounds support affine ops, ReLU/Sigmoid/Tanh and MaxPool")
        self.graph = graph
        self.order = [graph.input_name] + [n.name for n in graph.nodes]
        self.pos = {v: i for i, v in enumerate(self.order)}
        self.cons: dict[str, list[tuple[Node, int]]] = {v: [] for v in self.order}
        for n in graph.nodes:
            for k, i in enumerate(n.inputs):
                self.cons[i].append((n, k))
        self.activations = [n for n in graph.nodes if isinstance(n.op, Activation)]
        self.pools = [n for n in graph.nodes if isinstance(n.op, MaxPool2d)]
        self.gated = {n.name for n in self.activations} | {n.name for n in self.pools}
        self.relu_inputs = [n.inputs[0] for n in graph.nodes if isinstance(n.op, Relu)]
        self._lines: dict = {}  # gate lines cache, cleared per bounds() call

    # -- gates --------------------------------------------------------------------------------
    def gates(self, fb: Mapping[str, Bounds], splits: Mapping[str, Tensor] | None = None) -> dict[str, Bounds]:
        """``[dl, du]`` of every activation's Clarke derivative from the forward bounds of its input."""
        out = {}
        for n in self.activations:
            lo, hi = fb[n.inputs[0]]
            split = None if splits is None else splits.get(n.inputs[0])
            out[n.name] = activation_gate(n.op, lo, hi, split)
        for n in self.pools:
            out[n.name] = maxpool_gate(n.op, *fb[n.inputs[0]])
        return out

    # -- CROWN pass on the gradient graph --------------------------------------------------------
    def lower(self, start: str, lam: Tensor | None, gates: Mapping[str, Bounds], gb: Mapping[str, Bounds],
              seeds: Tensor, record: dict[str, Tensor] | None = None,
              init: dict[str, Tensor] | None = None) -> Tensor:
        """Lower bound of ``<lam, G:start>`` over the relaxation: ``[N, S]``. ``lam`` is ``[N|1, S, *shape]``;
        ``record`` receives the Lambda on each gate output (``G:h`` of an activation ``h``) it names.
        ``init`` (instead of ``lam``): the Lambdas already pushed to the consumers of ``start``."""
        n_batch = seeds.shape[0]
        lams: dict[str, Tensor] = {start: lam} if init is None else dict(init)
        s = lam.shape[1] if init is None else next(iter(init.values())).shape[1]
        kappa = torch.zeros(n_batch, s, dtype=seeds.dtype)
        out = self.graph.output
        for v in self.order[self.pos[start]:]:
            lv = lams.pop(v, None)
            if lv is None:
                continue
            if v == out:
                kappa = kappa + _dot(lv, seeds)
            for c, k in self.cons[v]:
                if isinstance(c.op, Activation):
                    gate, gbc = gates[c.name], gb[c.name]
                    hit = self._lines.get(c.name)
                    # lines depend only on the gate and its g bounds: reuse them while those are the same
                    # tensor objects (the cache holds references, so identity cannot be recycled)
                    if hit is None or hit[0] is not gate or hit[1] is not gbc:
                        hit = (gate, gbc, gate_lines(*gate, *gbc))
                        self._lines[c.name] = hit
                    a_lo, c_lo, a_up, c_up = hit[2]
                    if record is not None and c.name in record:
                        record[c.name] = lv
                    # Lambda+ takes the lower line, Lambda- the upper: lv*aU + Lambda+*(aL - aU), and the
                    # constants as batched dot products (no [N, S, *shape] temporaries)
                    pos = lv.clamp(min=0)
                    lc = lv * a_up.unsqueeze(1) + pos * (a_lo - a_up).unsqueeze(1)
                    kappa = kappa + _bdot(lv, c_up) + _bdot(pos, c_lo - c_up)
                elif isinstance(c.op, MaxPool2d):
                    lc, kap = self._pool_step(c, lv, gates, gb)
                    kappa = kappa + kap
                    if record is not None and c.name in record:
                        record[c.name] = lv
                else:
                    lc = forward_linear(c.op, k, lv)
                lams[c.name] = lams[c.name] + lc if c.name in lams else lc
        return kappa

    def _pool_lines(self, c: Node, gates, gb):
        gate, gbc = gates[c.name], gb[c.name]
        hit = self._lines.get(c.name)
        if hit is None or hit[0] is not gate or hit[1] is not gbc:
            lg, ug = (_window_view(c.op, t) for t in gbc)
            hit = (gate, gbc, gate_lines(*gate, lg, ug))
            self._lines[c.name] = hit
        return hit[2]

    def _pool_step(self, c: Node, lv: Tensor, gates, gb) -> tuple[Tensor, Tensor]:
        """MaxPool ``y = max_k x_k``: ``G:x = fold(delta (.) G:y)`` with ``delta_{w,k} in [dl, du]`` per window
        element (1 for a sole candidate, 0 for elements that can never be the max, else [0, 1]). The CROWN step
        unfolds Lambda on ``G:x`` to window elements, applies the gate lines and sums over each window."""
        a_lo, c_lo, a_up, c_up = self._pool_lines(c, gates, gb)
        op = c.op
        m, s = lv.shape[:2]
        x_shape = op.in_shapes[0]
        lead = int(torch.Size(x_shape[:-3]).numel())
        ch, h, w = x_shape[-3:]
        cols = F.unfold(lv.reshape(m * s * lead, ch, h, w), op.kernel, padding=op.padding, stride=op.stride)
        lam_e = cols.reshape(m, s, lead, ch, -1, cols.shape[-1])  # [M, S, lead, C, K, L]
        pos = lam_e.clamp(min=0)
        lc = (lam_e * a_up.unsqueeze(1) + pos * (a_lo - a_up).unsqueeze(1)).sum(4)
        kappa = _bdot(lam_e, c_up) + _bdot(pos, c_lo - c_up)
        return lc.reshape(lc.shape[0], s, *op.out_shape), kappa

    def _pool_interval(self, c: Node, gates, gb) -> Bounds:
        op = c.op
        lg, ug = (_window_view(op, t) for t in gb[c.name])
        elo, ehi = gate_interval(*gates[c.name], lg, ug)  # [N, lead, C, K, L]
        x_shape = op.in_shapes[0]
        h, w = x_shape[-2:]

        def fold(t: Tensor) -> Tensor:
            n = t.shape[0]
            flat = t.reshape(n * t.shape[1], t.shape[2] * t.shape[3], t.shape[4])
            return F.fold(flat, (h, w), op.kernel, padding=op.padding, stride=op.stride).reshape(n, *x_shape)
        return fold(elo), fold(ehi)

    # -- intermediate bounds of G ---------------------------------------------------------------
    def _interval_from_consumers(self, v: str, gates, gb, seeds) -> Bounds:
        """Interval of ``G:v = sum_c contribution_c``: centre/radius through adjoints, corner products at gates."""
        if v == self.graph.output:
            return seeds, seeds
        lo = hi = None
        for c, k in self.cons[v]:
            if isinstance(c.op, Activation):
                clo, chi = gate_interval(*gates[c.name], *gb[c.name])
            elif isinstance(c.op, MaxPool2d):
                clo, chi = self._pool_interval(c, gates, gb)
            else:
                glo, ghi = gb[c.name]
                mid, rad = (ghi + glo).unsqueeze(1) / 2, (ghi - glo).unsqueeze(1) / 2
                cm, cr = adjoint(c.op, mid)[k], abs_adjoint(c.op, rad)[k]
                if cm is None or cr is None:  # the op does not depend on this input
                    continue
                cm, cr = cm.squeeze(1), cr.squeeze(1)
                # float rounding of mid/rad: widen by a few ulps so interval bounds stay sound
                cr = cr + 8 * torch.finfo(cr.dtype).eps * (cm.abs() + cr)
                clo, chi = cm - cr, cm + cr
            lo = clo if lo is None else lo + clo
            hi = chi if hi is None else hi + chi
        if lo is None:  # no consumer depends on v: its gradient is zero
            zero = torch.zeros(seeds.shape[0], *self.graph.shape_of(v), dtype=seeds.dtype)
            return zero, zero
        return lo, hi

    def bounds(self, gates: Mapping[str, Bounds], seeds: Tensor, crown: bool = True) -> dict[str, Bounds]:
        """Bounds of every ``G:v``: interval arithmetic in gradient order, refined by CROWN at gate inputs
        (non-degenerate gates with a straddling ``G``) and at the input (straddling entries of ``|.|``)."""
        gb: dict[str, Bounds] = {}
        self._lines = {}
        act_names = self.gated
        pool_names = {n.name for n in self.pools}
        for v in reversed(self.order):
            lo, hi = self._interval_from_consumers(v, gates, gb, seeds)
            if crown and (v in act_names or v == self.graph.input_name):
                mask = (lo < 0) & (hi > 0)
                if v in act_names and v not in pool_names:  # activations: only non-degenerate gates
                    dl, du = gates[v]
                    mask = mask & (du > dl)
                lo, hi = self._refine(v, lo, hi, mask, gates, gb, seeds)
            gb[v] = (lo, hi)
        return gb

    def _refine(self, v: str, lo: Tensor, hi: Tensor, mask: Tensor, gates, gb, seeds) -> Bounds:
        """CROWN bounds of the masked entries of ``G:v`` (rows ``+-e_i``, chunked), intersected with ``[lo, hi]``."""
        n_batch = seeds.shape[0]
        rows = mask.reshape(n_batch, -1).any(0).nonzero().flatten()
        if rows.numel() == 0:
            return lo, hi
        shape = self.graph.shape_of(v)
        numel = lo[0].numel()
        widest = max(torch.Size(self.graph.shape_of(w)).numel() for w in self.order[self.pos[v]:])
        chunk = max(MIN_ROWS, ELEMENTS_PER_PASS // (2 * n_batch * widest))
        lo_f, hi_f = lo.reshape(n_batch, -1).clone(), hi.reshape(n_batch, -1).clone()
        for s in range(0, rows.numel(), chunk):
            r = rows[s:s + chunk]
            cons = self.cons[v]
            if cons and all(isinstance(c.op, Dense) and len(shape) == 1 for c, _ in cons):
                # one-hot rows through a dense layer are weight columns: skip the [R, n] x [n, m] product
                init: dict[str, Tensor] = {}
                for c, _ in cons:
                    cols = c.op.weight[:, r].T
                    lc = torch.cat([cols, -cols]).unsqueeze(0)
                    init[c.name] = init[c.name] + lc if c.name in init else lc
                res = self.lower(v, None, gates, gb, seeds, init=init)
            else:
                eye = torch.zeros(r.numel(), numel, dtype=lo.dtype)
                eye[torch.arange(r.numel()), r] = 1.0
                lam = torch.cat([eye, -eye]).reshape(1, 2 * r.numel(), *shape)
                res = self.lower(v, lam, gates, gb, seeds)
            lo_f[:, r] = torch.maximum(lo_f[:, r], res[:, : r.numel()])
            hi_f[:, r] = torch.minimum(hi_f[:, r], -res[:, r.numel():])
        return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)

    # -- objectives --------------------------------------------------------------------------------
    def l1_upper(self, gates, gb, seeds, crown: bool = True, record: dict[str, Tensor] | None = None
                 ) -> Tensor:
        """Upper bound of ``sum_i |G:x_i|`` per batch entry ``[N]``: min of the CROWN bound (``|.|`` chords)
        and the interval bound ``sum_i max(|l_i|, |u_i|)``."""
        x = self.graph.input_name
        lo, hi = gb[x]
        n_batch = seeds.shape[0]
        ibp = torch.maximum(lo.abs(), hi.abs()).reshape(n_batch, -1).sum(-1)
        if not crown:
            return ibp
        a, c = abs_chord(lo, hi)
        res = -self.lower(x, (-a).unsqueeze(1), gates, gb, seeds, record)[:, 0]
        res = res + c.reshape(n_batch, -1).sum(-1)
        return torch.minimum(res, ibp)

    def entry_bounds(self, index: int, gates, gb, seeds, crown: bool = True) -> Bounds:
        """Bounds ``[N]`` of ``G:x_index`` (one partial derivative)."""
        x = self.graph.input_name
        n_batch = seeds.shape[0]
        lo = gb[x][0].reshape(n_batch, -1)[:, index]
        hi = gb[x][1].reshape(n_batch, -1)[:, index]
        if crown:
            shape = self.graph.input_shape
            numel = int(torch.Size(shape).numel())
            e = torch.zeros(2, numel, dtype=seeds.dtype)
            e[0, index], e[1, index] = 1.0, -1.0
            res = self.lower(x, e.reshape(1, 2, *shape), gates, gb, seeds)
            lo, hi = torch.maximum(lo, res[:, 0]), torch.minimum(hi, -res[:, 1])
        return lo, hi


def seed_tensor(graph: Graph, outputs: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Rows ``e_j`` (``[K, *out_shape]``) for the selected flat output indices."""
    k = graph.output_numel
    eye = torch.zeros(len(outputs), k, dtype=dtype)
    eye[torch.arange(len(outputs)), torch.as_tensor(list(outputs))] = 1.0
    return eye.reshape(len(outputs), *graph.output_shape)
