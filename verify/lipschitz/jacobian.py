"""Bounds on the Clarke Jacobian of a graph over an input box (Shi et al., NeurIPS 2022).

The backward (gradient) graph has one value ``G:v = d f_j / d v`` per forward value ``v``, seeded with
``G:out = c_j`` (a row of the seed matrix), built from the forward ops in reverse:

* linear op ``y = L(x_1..x_n) + b``: ``G:x_k += L_k^T G:y`` (the op's ``adjoint``);
* activation ``h = sigma(z)``: ``G:z += D (.) G:h`` with ``D in [dl, du]`` from the forward bounds of ``z``
  (ReLU: Clarke derivative 1 / 0 / [0, 1]; smooth: ``[min sigma', max sigma']`` on ``[l_z, u_z]``);
* product of two variables ``h = a (.) b`` (same shapes; GELU's ``x Phi(x)``): the product rule ``G:a += b (.) G:h``,
  ``G:b += a (.) G:h``, two gates whose ``D`` is the other factor's forward interval (either sign);
* objective ``sum_i |G:x_i|`` (local l_inf Lipschitz constant of ``f_j``) or ``G:x_i`` (monotonicity).

The gate ``y = d g`` with ``d in [dl, du]`` (``dl >= 0``) and ``g in [lg, ug]`` is relaxed by the convex hull
of ``{(g, d g)}``: two chords (``y <= max(dl g, du g)``, ``y >= min(dl g, du g)``), the doc's Clarke ReLU
rule for ``[0, 1]``. CROWN on the gradient graph pushes ``Lambda`` from ``G:x`` towards the seed, i.e. along
the *forward* direction of the network: the transpose of ``L_k^T`` is the forward linear map ``L_k``, so
conv Jacobians need no dense identity specs. The batch axis ``N`` enumerates (box, seed) pairs.

Rounding (``verify.rounding``): every bound holds for the exact Jacobian of the network as stored, whose linear
maps are the exact ``L*`` with ``|L - L*| <= Err`` (the ops' ``weight_err``), for every (Clarke) gate value.

* Intervals of ``G``: a step ``L^T g`` (centre/radius) is widened by ``3 gamma_n |L|^T a + Err^T a`` with
  ``a = max |G|`` of the consumer, gate products ``d g`` are rounded outward, sums of contributions are widened
  by ``gamma_k`` times their magnitudes; gate derivatives of sigmoid/tanh come from float64 with a margin.
  Underflow costs a few smallest normals per product that is not an exact zero, so exact zeros stay exact.
* Gate lines: any float slope ``a`` is sound once the intercept bounds ``g (d - a)`` at the four vertices of
  ``[dl, du] x [lg, ug]`` (the gate is bilinear, so the vertices decide); it is computed with directed
  rounding (exact two-sum for ``d - a``, ``nextafter`` on products). Likewise the ``|g|`` chord.
* CROWN on ``G``: the rounded step ``L lam`` misses ``L* lam`` by ``gamma_n |L||lam| + Err |lam|``, i.e. costs
  ``<|lam|, gamma_n |L|^T a + Err^T a>`` against ``|G| <= a``; a gate step costs ``3 u |slope| a``, the float64
  kappa dots ``gamma_n^64 |c|``, a sum of contributions ``2 u a``. As in ``verify.bounds.crown`` these are
  accumulated once per :meth:`JacobianGraph.bounds` call into ``E_v = e_v + sum_c |step_c|^T E_c``, and a pass
  from ``v`` pays ``<|lam|, E_v>``; kappa is summed in float64 with its own gamma and rounded down.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.errors import UnsupportedOperator
from verify.graph import Graph, Node
from verify.lipschitz.gates import (
    StepLines,
    _fold,
    _window_view,
    abs_chord,
    activation_gate,
    gate_interval,
    has_derivative_rule,
    is_gated,
    maxpool_gate,
)
from verify.ops.activation import LeakyRelu, Relu, Sigmoid, Tanh
from verify.ops.affine import AddVars, Scale
from verify.ops.base import Bounds, LinearOp, merge_leading, unbroadcast
from verify.ops.bilinear import Mul
from verify.ops.linear import Conv2d, ConvTranspose2d, Dense
from verify.ops.pooling import AvgPool2d, MaxPool2d
from verify.ops.reduce import ReduceSum
from verify.ops.shape import Concat, Pad, Reshape, Transpose, _Copies, _DataMovement
from verify.rounding import F64, cast_down, cast_up, down, gamma, magnitude, outward, sum_up, tiny, unit_roundoff, up

ELEMENTS_PER_PASS = 2 ** 22  # cap on N * rows * numel per intermediate CROWN pass (memory, cache)
MIN_ROWS = 64  # rows per pass at least (per-pass overhead)


def _bdot64(lam: Tensor, const: Tensor) -> Tensor:
    """``sum over per-sample dims of lam [N|1, S, *shape] * const [N, *shape]`` in float64 -> ``[N, S]`` (a ``lam``
    shared by the batch is not expanded: one matrix product)."""
    n, s = const.shape[0], lam.shape[1]
    c = const.to(F64).reshape(n, -1)
    if lam.shape[0] == 1:
        return (lam.to(F64).reshape(s, -1) @ c.T).T
    return torch.bmm(lam.to(F64).reshape(n, s, -1), c.unsqueeze(-1)).squeeze(-1)


# -- linear steps -------------------------------------------------------------------------------------------


def forward_linear(op: LinearOp, k: int, lam: Tensor) -> Tensor:
    """The linear part ``L_k`` of an affine op applied to ``lam [M, S, *in_shape_k]`` (no offset).

    This is the transpose of the Jacobian step ``G:x_k = L_k^T G:y``, hence the CROWN step of the gradient
    graph. Explicit rules avoid subtracting the offset (rounding); the fallback uses a jvp at zero."""
    m, s = lam.shape[:2]
    out_shape = op.out_shape
    if isinstance(op, Dense):
        return F.linear(lam, op.weight)
    if isinstance(op, Conv2d | ConvTranspose2d):
        return op._map(lam, op.weight, None)
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
    primals = tuple(torch.zeros(flat.shape[0], *sh, dtype=lam.dtype, device=lam.device) for sh in op.in_shapes)
    tangents = tuple(flat if i == k else torch.zeros_like(p) for i, p in enumerate(primals))
    _, dy = torch.func.jvp(op.forward, primals, tangents)
    return dy.reshape(*lead, *out_shape)


def abs_adjoint(op: LinearOp, rad: Tensor) -> list[Tensor | None]:
    """``|L_k|^T rad`` for every input ``k`` (the radius step of interval arithmetic on ``G``)."""
    if isinstance(op, Dense):
        return [rad @ op.weight.abs()]
    if isinstance(op, Conv2d | ConvTranspose2d):
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
    raise UnsupportedOperator(op.display_name, detail="Lipschitz bounds: no interval rule for its Jacobian")


def err_adjoint(op: LinearOp, k: int, t: Tensor) -> Tensor | None:
    """``Err_k^T t`` for the op's parameter representation error ``Err = weight_err`` (None when exact)."""
    werr = getattr(op, "weight_err", None)
    if werr is None:
        return None
    if isinstance(op, Dense):
        return t @ werr
    if isinstance(op, Conv2d | ConvTranspose2d):
        errop = copy.copy(op)
        errop.weight = werr
        return errop.adjoint(t)[k]
    if isinstance(op, Scale):
        return _scale_reduce(op, (t * werr).expand_as(t))
    raise UnsupportedOperator(op.display_name, detail="Lipschitz bounds: no rule for its weight error")


def step_gamma(op: LinearOp, dtype: torch.dtype) -> float:
    """Relative rounding bound of the Jacobian step ``L^T g`` and of its transpose ``L lam`` (``gamma_n`` for
    the longest dot product of either; 0 for pure data movement)."""
    if isinstance(op, _DataMovement):
        return 0.0
    if isinstance(op, Dense | Conv2d | ConvTranspose2d):
        n = op.dot_length()
    elif isinstance(op, AvgPool2d):
        n = op.kernel[0] * op.kernel[1]
    elif isinstance(op, ReduceSum):  # the sum over the reduced axes (and the mean's division)
        n = op.count() + 1
    elif isinstance(op, _Copies):  # upsampling, broadcasting: the adjoint sums each input's copies
        n = op.copies()
    elif isinstance(op, Scale | AddVars):  # one product, plus the adjoint's sum over broadcast copies
        n = max(1, op.out_numel() // max(1, min(int(torch.Size(s).numel()) for s in op.in_shapes)))
    else:
        raise UnsupportedOperator(op.display_name, detail="Lipschitz bounds: no rounding rule for its Jacobian")
    return gamma(n + 2, dtype)


def _scale_reduce(op: Scale, g: Tensor) -> Tensor:
    """Sum a gradient over axes along which a Scale broadcast its input."""
    return unbroadcast(g, op.in_shapes[0])


def adjoint(op: LinearOp, lam: Tensor) -> list[Tensor | None]:
    """``L_k^T lam`` for every input (the Jacobian step), robust to broadcasting Scales."""
    if isinstance(op, Scale):
        g = lam if op.weight is None else lam * op.weight
        return [_scale_reduce(op, g.expand_as(lam))]
    return op.adjoint(lam)


class GradBounds(dict):
    """Bounds ``(lo, hi)`` of every ``G:v`` (``[N, *shape]``) and ``err[v]``: the accumulated rounding radius
    ``E_v`` (module docstring) that a CROWN pass starting at ``v`` with ``Lambda`` pays as ``<|Lambda|, E_v>``."""

    def __init__(self) -> None:
        super().__init__()
        self.err: dict[str, Tensor] = {}


class JacobianGraph:
    """The gradient graph of a forward graph and its IBP / CROWN bounds.

    ``gates`` maps each activation node name to ``(dl, du)`` ``[N, *shape]``; ``gb`` (a :class:`GradBounds`)
    maps forward names to bounds of ``G:name`` ``[N, *shape]``; ``seeds`` is ``[N, *out_shape]``."""

    def __init__(self, graph: Graph):
        for n in graph.nodes:
            supported = isinstance(n.op, LinearOp | Relu | LeakyRelu | Sigmoid | Tanh | MaxPool2d) or \
                (has_derivative_rule(n.op) and len(n.inputs) == 1) or _elementwise_product(n)
            if not supported:
                raise UnsupportedOperator(
                    n.op.display_name, n.name,
                    detail="Lipschitz bounds support affine ops, ReLU/LeakyReLU/Sigmoid/Tanh, MaxPool, the "
                           "element-wise sin/cos/pow/reciprocal/exp/log/sqrt/erf and products of two variables of "
                           "one shape")
            if isinstance(n.op, LinearOp):
                step_gamma(n.op, graph.dtype)  # refuses ops without a rounding rule, before any work
        self.graph = graph
        self.order = [graph.input_name] + [n.name for n in graph.nodes]
        self.pos = {v: i for i, v in enumerate(self.order)}
        self.cons: dict[str, list[tuple[Node, int]]] = {v: [] for v in self.order}
        for n in graph.nodes:
            for k, i in enumerate(n.inputs):
                self.cons[i].append((n, k))
        self.activations = [n for n in graph.nodes if is_gated(n.op)]
        self.pools = [n for n in graph.nodes if isinstance(n.op, MaxPool2d)]
        self.products = [n for n in graph.nodes if isinstance(n.op, Mul)]
        self.product_names = {n.name for n in self.products}
        self.gated = {n.name for n in self.activations} | {n.name for n in self.pools} | self.product_names
        # forward nodes whose bounds decide the gates
        self.gate_inputs = list(dict.fromkeys([n.inputs[0] for n in self.activations + self.pools] +
                                              [i for n in self.products for i in n.inputs]))
        self.relu_inputs = [n.inputs[0] for n in graph.nodes if isinstance(n.op, Relu)]
        # a node fed by several inputs sums their Lambdas in a pass (rounded)
        self.fan_in = {n.name for n in graph.nodes if len(n.inputs) > 1}
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
        for n in self.products:  # the derivative along one factor is the other factor (exact bounds of it)
            a, b = fb[n.inputs[0]], fb[n.inputs[1]]
            out[product_gate(n.name, 0)], out[product_gate(n.name, 1)] = b, a
        return out

    def gate_key(self, c: Node, k: int) -> str:
        """Name of the gate on the path from input ``k`` of the gated node ``c``."""
        return product_gate(c.name, k) if c.name in self.product_names else c.name

    def _gate_lines(self, c: Node, gates, gb, k: int = 0) -> StepLines:
        key = self.gate_key(c, k)
        gate, gbc = gates[key], gb[c.name]
        hit = self._lines.get(key)
        # lines depend only on the gate and its g bounds: reuse them while those are the same tensor objects
        # (the cache holds references, so identity cannot be recycled)
        if hit is None or hit[0] is not gate or hit[1] is not gbc:
            if isinstance(c.op, MaxPool2d):
                lg, ug = (_window_view(c.op, t) for t in gbc)
                hit = (gate, gbc, StepLines(*gate, lg, ug))
            else:
                hit = (gate, gbc, StepLines(*gate, *gbc))
            self._lines[key] = hit
        return hit[2]

    # -- CROWN pass on the gradient graph --------------------------------------------------------
    def lower(self, start: str, lam: Tensor | None, gates: Mapping[str, Bounds], gb: GradBounds,
              seeds: Tensor, record: dict[str, Tensor] | None = None,
              init: dict[str, Tensor] | None = None) -> Tensor:
        """Rigorous float64 lower bound ``[N, S]`` of ``<lam, G:start>`` over the relaxation (exact Jacobian).
        ``lam`` is ``[N|1, S, *shape]``; ``record`` receives the Lambda on each gate output (``G:h`` of an
        activation ``h``) it names. ``init`` (instead of ``lam``): the Lambdas already pushed, exactly, to the
        consumers of ``start``."""
        n_batch = seeds.shape[0]
        if init is None:
            lams: dict[str, Tensor] = {start: lam}
            err = _bdot64(lam.abs(), gb.err[start])
        else:
            lams = dict(init)
            err = sum(_bdot64(v.abs(), gb.err[k]) for k, v in init.items())
        first = next(iter(lams.values()))
        s = first.shape[1]
        kappa = torch.zeros(n_batch, s, dtype=F64, device=first.device)
        kappa_abs = torch.zeros_like(kappa)
        n_terms = 0
        out = self.graph.output
        for v in self.order[self.pos[start]:]:
            lv = lams.pop(v, None)
            if lv is None:
                continue
            terms = []
            if v == out:
                terms.append(_bdot64(lv, seeds))
            for c, k in self.cons[v]:
                if is_gated(c.op) or c.name in self.product_names:
                    ln = self._gate_lines(c, gates, gb, k)
                    if record is not None and c.name in record:
                        record[c.name] = lv
                    # Lambda+ takes the lower line, Lambda- the upper: lv a_up + Lambda+ da (StepLines)
                    pos = lv.clamp(min=0)
                    lc = lv * ln.a_up.unsqueeze(1) + pos * ln.da.unsqueeze(1)
                    lv64 = lv.to(F64)  # kappa in float64: one cast, shared by both dots
                    terms += [_bdot64(lv64, ln.c_up64), _bdot64(lv64.clamp(min=0), ln.c_diff64)]
                elif isinstance(c.op, MaxPool2d):
                    lc, kap = self._pool_step(c, lv, gates, gb)
                    terms += kap
                    if record is not None and c.name in record:
                        record[c.name] = lv
                else:
                    lc = forward_linear(c.op, k, lv)
                lams[c.name] = lams[c.name] + lc if c.name in lams else lc
            for t in terms:
                kappa = kappa + t
                kappa_abs = kappa_abs + t.abs()
            n_terms += len(terms)
        # the float64 sum of the kappa terms and of the allowances round too (as in verify.bounds.crown); with
        # no slack at all every term was an exact zero, and so is the bound
        slack = err * (1 + 1e-6) + gamma(n_terms + 1, F64) * (kappa_abs + err)
        return torch.where(slack > 0, down(kappa - slack), kappa)

    def _pool_step(self, c: Node, lv: Tensor, gates, gb) -> tuple[Tensor, list[Tensor]]:
        """MaxPool ``y = max_k x_k``: ``G:x = fold(delta (.) G:y)`` with ``delta_{w,k} in [dl, du]`` per window
        element (1 for a sole candidate, 0 for elements that can never be the max, else [0, 1]). The CROWN step
        unfolds Lambda on ``G:x`` to window elements, applies the gate lines and sums over each window."""
        ln = self._gate_lines(c, gates, gb)
        op = c.op
        m, s = lv.shape[:2]
        x_shape = op.in_shapes[0]
        lead = int(torch.Size(x_shape[:-3]).numel())
        ch, h, w = x_shape[-3:]
        cols = F.unfold(lv.reshape(m * s * lead, ch, h, w), op.kernel, padding=op.padding, stride=op.stride)
        lam_e = cols.reshape(m, s, lead, ch, -1, cols.shape[-1])  # [M, S, lead, C, K, L]
        pos = lam_e.clamp(min=0)
        lc = (lam_e * ln.a_up.unsqueeze(1) + pos * ln.da.unsqueeze(1)).sum(4)
        lam64 = lam_e.to(F64)
        kappa = [_bdot64(lam64, ln.c_up64), _bdot64(lam64.clamp(min=0), ln.c_diff64)]
        return lc.reshape(lc.shape[0], s, *op.out_shape), kappa

    # -- intermediate bounds of G ---------------------------------------------------------------
    def _from_consumers(self, v: str, gates, gb: GradBounds, seeds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Interval of ``G:v = sum_c contribution_c`` (centre/radius through adjoints, corner products at gates,
        all rounded outward) and the accumulated rounding radius ``E_v`` of passes from ``v``."""
        dtype = seeds.dtype
        u = unit_roundoff(dtype)
        if v == self.graph.output:  # kappa's float64 dot with the seed (exact for one-hot seeds, paid anyway)
            return seeds, seeds, gamma(seeds[0].numel(), F64) * seeds.abs()
        los, his, errs = [], [], []
        for c, k in self.cons[v]:
            glo, ghi = gb[c.name]
            a_c, e_c = magnitude(glo, ghi), gb.err[c.name]
            if is_gated(c.op) or c.name in self.product_names:
                clo, chi = gate_interval(*gates[self.gate_key(c, k)], glo, ghi)
                ln = self._gate_lines(c, gates, gb, k)
                g64 = gamma(a_c[0].numel(), F64)
                # three roundings per entry of lv a_up + Lambda+ da; the two float64 dots and the rounded c_diff;
                # underflow: a few smallest normals per product that is not an exact zero
                err = (3 * u * ln.slope * a_c + 3 * g64 * ln.c_mag + (1 + 4 * u) * ln.slope * e_c
                       + tiny(dtype) * ((ln.slope > 0) & (a_c > 0)))
            elif isinstance(c.op, _DataMovement):  # exact in both directions: moves values (and zeros) only
                moved = c.op.adjoint(torch.stack([glo, ghi, e_c], 1))[k]
                if moved is None:
                    continue
                clo, chi, err = moved.unbind(1)
            elif isinstance(c.op, MaxPool2d):
                op = c.op
                elo, ehi = gate_interval(*gates[c.name], *(_window_view(op, t) for t in (glo, ghi)))
                kk = op.kernel[0] * op.kernel[1]
                # fold sums at most K window elements per input position
                clo, chi = outward(_fold(op, elo), _fold(op, ehi), gamma(kk, dtype) * _fold(op, magnitude(elo, ehi)))
                ln = self._gate_lines(c, gates, gb)
                gk = gamma(kk + 3, dtype)  # three roundings per element, then a sum of K
                g64 = gamma(a_c[0].numel() * kk, F64)
                err = _fold(op, (gk * _window_view(op, a_c) + (1 + 2 * gk + 4 * u) * _window_view(op, e_c))
                            * ln.slope + 3 * g64 * ln.c_mag + tiny(dtype) * (ln.slope > 0))
            else:
                mid, rad = (ghi + glo) / 2, (ghi - glo) / 2
                cm = adjoint(c.op, mid.unsqueeze(1))[k]
                if cm is None:  # the op does not depend on this input
                    continue
                # |L|^T of the radius, of a, of E, and of the indicator of a > 0 (exact: which products can be
                # nonzero, for the underflow term)
                stacked = torch.stack([rad, a_c, e_c, (a_c > 0).to(dtype)], 1)
                cr, la, le, live = abs_adjoint(c.op, stacked)[k].unbind(1)
                cm = cm.squeeze(1)
                g = step_gamma(c.op, dtype)
                werr = err_adjoint(c.op, k, a_c.unsqueeze(1))
                # exact weights: |(L* - L)^T g| <= Err^T a; underflow: a few smallest normals per live product
                n_c = c.op.out_numel()
                extra = (n_c * tiny(dtype)) * (live > 0)
                if werr is not None:
                    extra = extra + 1.01 * werr.squeeze(1)
                # the rounded centre and radius (u a each, through |L|^T), the two rounded products (gamma each)
                # and the rounded cm -+ cr
                pad = 3 * g * la + 2 * u * (cm.abs() + cr + la) + extra
                clo, chi = outward(cm - cr, cm + cr, pad)
                err = g * la + extra + (1 + 2 * g + 4 * u) * le
            los.append(clo)
            his.append(chi)
            errs.append(err)
        if not los:  # no consumer depends on v: its gradient is zero
            zero = torch.zeros(seeds.shape[0], *self.graph.shape_of(v), dtype=dtype, device=seeds.device)
            return zero, zero, zero
        lo, hi, err = los[0], his[0], errs[0]
        if len(los) > 1:
            lo, hi, err = sum(los), sum(his), sum(errs) * (1 + 4 * u)
            mags = sum(magnitude(a, b) for a, b in zip(los, his, strict=True))
            lo, hi = outward(lo, hi, gamma(len(los), dtype) * mags)
        if v in self.fan_in:  # a pass sums the Lambdas its inputs push to v
            err = err + 2 * u * magnitude(lo, hi)
        return lo, hi, err

    def bounds(self, gates: Mapping[str, Bounds], seeds: Tensor, crown: bool = True) -> GradBounds:
        """Bounds of every ``G:v``: interval arithmetic in gradient order, refined by CROWN at gate inputs
        (non-degenerate gates with a straddling ``G``) and at the input (straddling entries of ``|.|``)."""
        gb = GradBounds()
        self._lines = {}
        act_names = self.gated
        pool_names = {n.name for n in self.pools}
        floor = 1e6 * tiny(seeds.dtype)  # straddles of rounding-noise width are not worth a CROWN row
        for v in reversed(self.order):
            lo, hi, err = self._from_consumers(v, gates, gb, seeds)
            gb.err[v] = err
            if crown and (v in act_names or v == self.graph.input_name):
                mask = (lo < 0) & (hi > 0) & (hi - lo > floor)
                if v in act_names and v not in pool_names and v not in self.product_names:
                    # activations: only non-degenerate gates
                    dl, du = gates[v]
                    mask = mask & (du > dl)
                lo, hi = self._refine(v, lo, hi, mask, gates, gb, seeds)
            gb[v] = (lo, hi)
        return gb

    def _refine(self, v: str, lo: Tensor, hi: Tensor, mask: Tensor, gates, gb: GradBounds, seeds
                ) -> Bounds:
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
        cons = self.cons[v]
        # one-hot rows through a dense layer are weight columns, exactly (no [R, n] x [n, m] product); with a
        # weight error the columns are not the exact ones, so those take the general pass that pays for it
        direct = bool(cons) and len(shape) == 1 and all(
            isinstance(c.op, Dense) and c.op.weight_err is None for c, _ in cons)
        for s in range(0, rows.numel(), chunk):
            r = rows[s:s + chunk]
            if direct:
                init: dict[str, Tensor] = {}
                for c, _ in cons:
                    cols = c.op.weight[:, r].T
                    lc = torch.cat([cols, -cols]).unsqueeze(0)
                    init[c.name] = init[c.name] + lc if c.name in init else lc
                res = self.lower(v, None, gates, gb, seeds, init=init)
            else:
                eye = torch.zeros(r.numel(), numel, dtype=lo.dtype, device=lo.device)
                eye[torch.arange(r.numel(), device=lo.device), r] = 1.0
                lam = torch.cat([eye, -eye]).reshape(1, 2 * r.numel(), *shape)
                res = self.lower(v, lam, gates, gb, seeds)
            lo_f[:, r] = torch.maximum(lo_f[:, r], cast_down(res[:, : r.numel()], lo.dtype))
            hi_f[:, r] = torch.minimum(hi_f[:, r], cast_up(-res[:, r.numel():], lo.dtype))
        return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)

    # -- objectives --------------------------------------------------------------------------------
    def l1_upper(self, gates, gb: GradBounds, seeds, crown: bool = True, record: dict[str, Tensor] | None = None
                 ) -> Tensor:
        """Float64 upper bound of ``sum_i |G:x_i|`` per batch entry ``[N]``: min of the CROWN bound (``|.|``
        chords) and the interval bound ``sum_i max(|l_i|, |u_i|)``, both rounded up."""
        x = self.graph.input_name
        lo, hi = gb[x]
        ibp = sum_up(magnitude(lo, hi))
        if not crown:
            return ibp
        a, c = abs_chord(lo, hi)
        res = -self.lower(x, (-a).unsqueeze(1), gates, gb, seeds, record)[:, 0]
        res = up(res + sum_up(c))
        return torch.minimum(res, ibp)

    def entry_bounds(self, index: int, gates, gb: GradBounds, seeds, crown: bool = True) -> Bounds:
        """Float64 bounds ``[N]`` of ``G:x_index`` (one partial derivative)."""
        x = self.graph.input_name
        n_batch = seeds.shape[0]
        lo = gb[x][0].reshape(n_batch, -1)[:, index].to(F64)
        hi = gb[x][1].reshape(n_batch, -1)[:, index].to(F64)
        if crown:
            shape = self.graph.input_shape
            numel = int(torch.Size(shape).numel())
            e = torch.zeros(2, numel, dtype=seeds.dtype, device=seeds.device)
            e[0, index], e[1, index] = 1.0, -1.0
            res = self.lower(x, e.reshape(1, 2, *shape), gates, gb, seeds)
            lo, hi = torch.maximum(lo, res[:, 0]), torch.minimum(hi, -res[:, 1])
        return lo, hi


def product_gate(name: str, k: int) -> str:
    """Key of the gate on the path from input ``k`` of the product node ``name``."""
    return f"{name}#d{k}"


def _elementwise_product(n: Node) -> bool:
    """A product of two variables without broadcasting (the product rule's gates are element-wise)."""
    if not isinstance(n.op, Mul):
        return False
    out = tuple(n.op.out_shape)
    return all(tuple(s) == out for s in n.op.in_shapes)


def seed_tensor(graph: Graph, outputs: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Rows ``e_j`` (``[K, *out_shape]``) for the selected flat output indices."""
    k = graph.output_numel
    eye = torch.zeros(len(outputs), k, dtype=dtype, device=graph.device)
    eye[torch.arange(len(outputs), device=eye.device), torch.as_tensor(list(outputs), device=eye.device)] = 1.0
    return eye.reshape(len(outputs), *graph.output_shape)
