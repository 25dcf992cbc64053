"""Patch-form CROWN for intermediate bounds behind convolutions (the structured ``Lambda`` of auto_LiRPA's
"patches" mode, Xu et al., NeurIPS 2020).

A CROWN pass started at neuron ``(c, y, x)`` of a convolutional feature map depends, on every upstream map, only on
the window its receptive field covers. So row ``s`` of ``Lambda`` is kept as ``values[:, s] [C, ph, pw]`` at a
window origin ``(oy_s, ox_s)`` of the node's map (origins may lie in the zero padding): a conv step is
``conv_transpose(values, W)`` with origin ``o s - p``; an element-wise op (activation, constant scale) acts on the
window. Entries outside the map (padding) are kept at zero, so they contribute nothing anywhere. The pass leaves
patch form at the input (concretised on the windows) or where an op has no patch rule, or where the window has
grown to the whole map (converted to the dense ``Lambda`` that ``verify.bounds.crown`` continues with).

Every entry is computed by the same floating-point operations as in the dense pass (products with the same
slopes; dot products over the same or fewer terms), so the dense pass's rounding allowances cover it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.graph import Graph, Node
from verify.ops.activation import Activation
from verify.ops.affine import Scale
from verify.ops.base import Bounds
from verify.ops.linear import Conv2d, conv_adjoint
from verify.rounding import F64, down, gamma


def _spatial(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a per-sample shape ``(1, ..., 1, C, H, W)``; None for any other shape."""
    if len(shape) < 3 or any(d != 1 for d in shape[:-3]):
        return None
    return shape[-3], shape[-2], shape[-1]


def _scale_fits(op: Scale, shape: tuple[int, ...]) -> bool:
    return all(t is None or t.dim() <= len(shape) for t in (op.weight, op.bias))


def patch_chain(graph: Graph, start: str) -> tuple[list[Node], str | None] | None:
    """The nodes from ``start`` upwards that have patch rules (each with one variable input, all on feature maps),
    and the node where the pass leaves patch form: ``None`` for the graph input, else the name of the node whose
    dense ``Lambda`` the ordinary pass continues from. ``None`` when patch form does not apply (no conv in reach)."""
    chain: list[Node] = []
    name = start
    while name != graph.input_name:
        n = graph.node(name)
        op = n.op
        ok = len(n.inputs) == 1 and _spatial(n.shape) is not None and _spatial(graph.shape_of(n.inputs[0])) is not None
        ok = ok and (isinstance(op, Conv2d | Activation) or (isinstance(op, Scale) and _scale_fits(op, n.shape)))
        if not ok:
            break
        chain.append(n)
        name = n.inputs[0]
    if not any(isinstance(n.op, Conv2d) for n in chain):
        return None
    return chain, None if name == graph.input_name else name


@dataclass
class Patches:
    """``Lambda`` rows as windows: ``values [B, S, C, ph, pw]`` (B may be 1: shared by all boxes), window origins
    ``oy, ox [S]`` in the coordinates of a ``C x H x W`` map."""

    values: Tensor
    oy: Tensor
    ox: Tensor
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        return self.values.shape[-2], self.values.shape[-1]

    def _flat_index(self, pad_y: int, pad_x: int) -> Tensor:
        """``[S, ph * pw]`` indices of each row's window in the map padded by ``pad_y``/``pad_x`` (flattened)."""
        ph, pw = self.size
        ys = self.oy[:, None] + pad_y + torch.arange(ph, device=self.oy.device)  # [S, ph]
        xs = self.ox[:, None] + pad_x + torch.arange(pw, device=self.ox.device)  # [S, pw]
        return (ys[:, :, None] * (self.width + 2 * pad_x) + xs[:, None, :]).reshape(len(self.oy), ph * pw)

    def _pads(self) -> tuple[int, int]:
        ph, pw = self.size
        pad_y = max(0, -int(self.oy.min()), int(self.oy.max()) + ph - self.height)
        pad_x = max(0, -int(self.ox.min()), int(self.ox.max()) + pw - self.width)
        return pad_y, pad_x

    def windows(self, t: Tensor) -> Tensor:
        """Each row's window of a map ``t [N, C, H, W]`` (zero outside the map): ``[N, S, C, ph, pw]``. Rows share
        origins (both signs of a neuron, all channels at one position), so each distinct window is cut once and
        then copied whole to its rows."""
        pad_y, pad_x = self._pads()
        padded = F.pad(t, (pad_x, pad_x, pad_y, pad_y)).flatten(-2)  # [N, C, Hp * Wp]
        key = self.oy * (self.width + 2 * pad_x + 1) + self.ox
        _, first, inverse = _unique_first(key)
        idx = self._flat_index(pad_y, pad_x)[first]  # [U, ph * pw]
        out = padded[:, :, idx]  # [N, C, U, ph * pw]
        n, u = t.shape[0], len(first)
        out = out.permute(2, 0, 1, 3).reshape(u, -1)  # [U, N * C * ph * pw]: whole windows as rows
        out = F.embedding(inverse, out)  # row copies: torch's fastest row gather on the CPU (4x index_select's)
        return out.reshape(len(inverse), n, t.shape[1], *self.size).transpose(0, 1)

    def valid(self) -> Tensor:
        """``[S, 1, ph, pw]``: True where the window lies inside the map."""
        ph, pw = self.size
        ys = self.oy[:, None] + torch.arange(ph, device=self.oy.device)
        xs = self.ox[:, None] + torch.arange(pw, device=self.ox.device)
        vy = (ys >= 0) & (ys < self.height)
        vx = (xs >= 0) & (xs < self.width)
        return (vy[:, :, None] & vx[:, None, :]).unsqueeze(1)

    def dense(self, batch: int, shape: tuple[int, ...]) -> Tensor:
        """The dense ``Lambda [B, S, *shape]`` (per-sample ``shape`` ending in ``C, H, W``)."""
        pad_y, pad_x = self._pads()
        b, s, c = batch, len(self.oy), self.values.shape[2]
        hp, wp = self.height + 2 * pad_y, self.width + 2 * pad_x
        vals = self.values.expand(b, *self.values.shape[1:]).reshape(b, s, c, -1)
        idx = self._flat_index(pad_y, pad_x)[None, :, None, :].expand(b, s, c, -1)
        flat = vals.new_zeros(b, s, c, hp * wp).scatter(-1, idx, vals)
        full = flat.reshape(b, s, c, hp, wp)[..., pad_y:pad_y + self.height, pad_x:pad_x + self.width]
        return full.reshape(b, s, *shape)


def _unique_first(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, first, inverse)``: the distinct values of ``key``, the index of one occurrence of each, and for
    every entry the position of its value."""
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.empty(len(values), dtype=torch.long, device=key.device)
    first.scatter_(0, inverse, torch.arange(len(key), device=key.device))  # any occurrence will do
    return values, first, inverse


def _map(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A per-box tensor ``[B, *shape]`` as ``[B, C, H, W]``."""
    c, h, w = _spatial(shape)
    return t.reshape(t.shape[0], c, h, w)


def _const_map(t: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """A per-sample constant broadcastable to ``shape`` as one ``[1, C, H, W]`` map."""
    if t is None:
        return None
    c, h, w = _spatial(shape)
    return t.expand(shape).reshape(1, c, h, w)


def _dot(values: Tensor, const: Tensor) -> Tensor:
    """``sum over (C, ph, pw) of values * const`` in float64: ``[B, S]``."""
    return (values.to(F64) * const.to(F64)).flatten(2).sum(-1)


@dataclass
class PatchResult:
    """Where a patch pass ended: ``lam`` is a :class:`Patches` at the graph input (``node`` None) or the dense
    ``Lambda`` of ``node``; ``kappa``, ``kappa_abs`` and ``n_terms`` as accumulated by the dense pass."""

    lam: Patches | Tensor
    node: str | None
    kappa: Tensor
    kappa_abs: Tensor
    n_terms: int


def start_patches(graph: Graph, start: str, rows: Tensor, dtype: torch.dtype) -> Patches:
    """The rows ``[e_r; -e_r]`` of :func:`verify.bounds.crown.bound_rows` at the flat neurons ``rows`` of
    ``start``, as 1x1 patches."""
    c, h, w = _spatial(graph.shape_of(start))
    ch, rem = rows // (h * w), rows % (h * w)
    y, x = rem // w, rem % w
    r = rows.numel()
    vals = torch.zeros(1, 2 * r, c, 1, 1, dtype=dtype, device=rows.device)
    idx = torch.arange(r, device=rows.device)
    vals[0, idx, ch, 0, 0] = 1.0
    vals[0, r + idx, ch, 0, 0] = -1.0
    return Patches(vals, torch.cat([y, y]), torch.cat([x, x]), h, w)


def patch_pass(graph: Graph, chain: list[Node], end: str | None, lam: Patches, bounds: Mapping[str, Bounds],
               batch: int, alphas=None) -> PatchResult:
    """Back-substitute patch rows through ``chain`` (see :func:`patch_chain`), as
    :func:`verify.bounds.crown.backward_pass` does densely. ``alphas`` (``verify.bounds.crown.StartAlphas``, the
    chain's activations all ReLUs): the lower slopes of unstable neurons are optimisable, one per row and window
    entry (any slope in [0, 1] gives a lower line; the dense pass's allowance covers the same products)."""
    s = len(lam.oy)
    kappa = torch.zeros(batch, s, dtype=F64, device=lam.values.device)
    kappa_abs = torch.zeros_like(kappa)
    n_terms = 0

    def add(k: Tensor) -> None:
        nonlocal kappa, kappa_abs, n_terms
        kappa = kappa + k
        kappa_abs = kappa_abs + k.detach().abs()
        n_terms += 1

    for i, n in enumerate(chain):
        op, in_shape = n.op, graph.shape_of(n.inputs[0])
        if isinstance(op, Conv2d):
            if op.bias is not None:  # a per-channel constant: the window's channel sums (zero off the map)
                add(lam.values.to(F64).sum((-2, -1)) @ op.bias.to(F64))
            lam = _conv_step(op, lam, in_shape, first=i == 0)
        elif isinstance(op, Scale):
            if op.bias is not None:
                add(_dot(lam.values, lam.windows(_const_map(op.bias, n.shape))))
            if op.weight is not None:
                lam = Patches(lam.values * lam.windows(_const_map(op.weight, n.shape)), lam.oy, lam.ox,
                              lam.height, lam.width)
        else:  # an element-wise activation: its lines on the whole map, then its own step on each window
            lo, hi = bounds[n.inputs[0]]
            lo_m, hi_m = _map(lo, in_shape), _map(hi, in_shape)
            lines = list(op.relax(lo_m, hi_m))
            if alphas is not None:
                lines.append(((lo_m < 0) & (hi_m > 0)).to(lo_m.dtype))  # where the lower slope is free
            c = lines[0].shape[1]
            wins = lam.windows(torch.cat([t.expand_as(lines[0]) for t in lines], 1))  # [B, S, 4C or 5C, ph, pw]
            vals = lam.values.expand(batch, *lam.values.shape[1:])
            parts = list(wins.split(c, 2))
            if alphas is not None:
                free = parts.pop() > 0
                parts[0] = torch.where(free, alphas.patch(n.name, parts[0]), parts[0])
            (lam_in,), k = op.apply_relaxation(vals, *parts)
            if k is not None:
                add(k)
            lam = Patches(lam_in, lam.oy, lam.ox, lam.height, lam.width)
        ph, pw = lam.size
        whole = ph >= lam.height and pw >= lam.width  # the window covers the map: dense is no larger
        if whole and i + 1 < len(chain):
            return PatchResult(lam.dense(batch, in_shape), n.inputs[0], kappa, kappa_abs, n_terms)
    if end is not None:
        return PatchResult(lam.dense(batch, graph.shape_of(end)), end, kappa, kappa_abs, n_terms)
    return PatchResult(lam, None, kappa, kappa_abs, n_terms)


def _conv_step(op: Conv2d, lam: Patches, in_shape: tuple[int, ...], first: bool) -> Patches:
    """``Lambda W`` on windows: a transposed convolution without padding, the origin moved to ``o s - p``; entries
    that land in the padding are zeroed. ``first``: ``lam`` holds the start rows ``+-e_r`` (1x1), whose image is
    the kernel of the row's channel, signed (exact)."""
    vals = lam.values
    lead = vals.shape[:2]
    kh, kw = op.weight.shape[-2:]
    if first and op.groups == 1 and op.dilation == (1, 1):
        flat = vals.reshape(lead[1], -1)
        sign, ch = flat.sum(1), flat.abs().argmax(1)
        g = (sign[:, None, None, None] * op.weight[ch]).unsqueeze(0)
    else:
        flat = vals.reshape(-1, *vals.shape[2:])
        size = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(lam.size, op.stride, op.dilation, (kh, kw),
                                                                      strict=True)]
        g = conv_adjoint(flat, op.weight, size, op.stride, (0, 0), op.dilation, op.groups)
        g = g.reshape(*lead, *g.shape[1:])
    _, h, w = _spatial(in_shape)
    out = Patches(g, lam.oy * op.stride[0] - op.padding[0], lam.ox * op.stride[1] - op.padding[1], h, w)
    if op.padding != (0, 0):
        out.values = out.values * out.valid().to(out.values.dtype)
    return out


def concretize_patches(lam: Patches, kappa: Tensor, x_lo: Tensor, x_hi: Tensor, input_shape: tuple[int, ...]
                       ) -> Tensor:
    """:func:`verify.bounds.crown.concretize_lower` on windows: the same float64 sums over the window's entries
    (zero-padded input: padding entries are exact zeros), with the error allowance of that many terms."""
    lo_w = lam.windows(_map(x_lo, input_shape)).to(F64)
    hi_w = lam.windows(_map(x_hi, input_shape)).to(F64)
    v = lam.values.to(F64)
    val = (v.clamp(min=0) * lo_w + v.clamp(max=0) * hi_w).flatten(2).sum(-1) + kappa
    mass = (v.detach().abs() * torch.maximum(lo_w.abs(), hi_w.abs())).flatten(2).sum(-1)
    slack = gamma(v[0, 0].numel() + 2, F64) * (mass + kappa.detach().abs())
    return down(val - slack)
