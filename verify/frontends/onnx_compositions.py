"""ONNX ops on variables that Clarke writes with its own ops (no IR op of their own), and the one-line handlers of
the step / softplus ops.

Where (constant condition): ``m a + (1 - m) b`` with the 0/1 mask ``m``, exact in floating point (one term is an
exact zero). Tile: a concatenation of copies. HardSigmoid, HardSwish, Selu: ``verify.frontends.composites``.
Sum / Mean: sums of variables (Mean divides by ``n``). GlobalAveragePool / GlobalMaxPool: a mean / max over the
spatial axes. ReduceL1 / ReduceL2 / ReduceSumSquare: ``sum |x|``, ``sqrt(relu(sum x^2))``, ``sum x^2``.
InstanceNormalization: LayerNorm over the spatial axes of each channel, then the per-channel scale and bias (Ulyanov
et al., 2016). ScatterND of variable updates into constant data: a gather from the concatenation of the flattened
updates and data. Pad: constant, or reflect / edge / wrap as concatenated copies. Constant linear maps (Resize,
CumSum, Einsum, ...): ``verify.frontends.onnx_linear_maps``. Every identity holds in real arithmetic; the
composition's ops carry their own rounding allowances.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch

from verify.frontends import composites, onnx_linear_maps
from verify.frontends import constants as K
from verify.frontends.onnx_context import Ctx, Value, attrs_of, const_input, exact_constants, reduce_axes, unsupported
from verify.frontends.onnx_layers import _broadcast_var
from verify.ops import (
    AddVars,
    Concat,
    Floor,
    Gather,
    LeakyRelu,
    Pad,
    ReduceSum,
    Relu,
    Reshape,
    Scale,
    Softplus,
    Sqrt,
    Square,
)


def _float32_attr(attrs: dict, key: str, default: float) -> float:
    return float(np.float32(attrs.get(key, default)))  # ONNX float attributes are float32


def where(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> Value:
    cond, x, y = ins
    if isinstance(cond, str):
        raise unsupported(ctx, node, "a condition that depends on the input")
    shape = tuple(np.broadcast_shapes(*(ctx.shape(v) for v in ins)))
    mask = np.broadcast_to(np.asarray(cond, dtype=bool), shape)
    x, y = (v if isinstance(v, str) else (np.asarray(v, dtype=np.float64), ctx.err(v)) for v in (x, y))
    return composites.select(ctx.b, name, mask, x, y, ctx.param)


def tile(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> Value:
    x = ins[0]
    reps = const_input(ctx, node, 1, "Tile repeats")
    reps = [int(r) for r in np.asarray(reps).reshape(-1)]
    if len(reps) != len(ctx.shape(x)) or any(r < 1 for r in reps):
        raise unsupported(ctx, node, f"repeats {reps} for a rank-{len(ctx.shape(x))} input")
    for axis, r in enumerate(reps):
        if r > 1:
            x = ctx.b.add(ctx.b.fresh(f"{name}_tile{axis}"), Concat(axis, r), [x] * r)
    return x


def hard_sigmoid(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    alpha, beta = _float32_attr(attrs, "alpha", 0.2), _float32_attr(attrs, "beta", 0.5)
    return composites.hard_sigmoid(ctx.b, name, ins[0], alpha, beta, ctx.param)


def hard_swish(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return composites.hard_swish(ctx.b, name, ins[0], ctx.param)


def selu(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    alpha = _float32_attr(attrs, "alpha", 1.67326319217681884765625)
    gamma = _float32_attr(attrs, "gamma", 1.05070102214813232421875)
    return composites.selu(ctx.b, name, ins[0], alpha, gamma, ctx.param)


def sum_or_mean(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    shape = tuple(np.broadcast_shapes(*(ctx.shape(v) for v in ins)))
    variables = [_broadcast_var(ctx, node, v, np.zeros(shape), str(i)) for i, v in enumerate(ins) if isinstance(v, str)]
    total = variables[0] if len(variables) == 1 else ctx.b.add(ctx.b.fresh(f"{name}_sum"),
                                                               AddVars([1.0] * len(variables)), variables)
    bias, bias_err = None, None  # the constant terms' float64 sum and its error bound
    for v in ins:
        if not isinstance(v, str):
            e = ctx.errs.zero_or(v)
            bias, bias_err = (np.asarray(v, dtype=np.float64), e) if bias is None else K.add(bias, bias_err, v, e)
    weight, weight_err = None, None
    if node.op_type == "Mean":
        weight, weight_err = K.div(np.ones(()), np.zeros(()), np.asarray(float(len(ins))), np.zeros(()))
        if bias is not None:
            bias, bias_err = K.mul(bias, bias_err, weight, weight_err)
    w, we = (None, None) if weight is None else ctx.param(weight, weight_err)
    c, ce = (None, None) if bias is None else ctx.param(np.broadcast_to(bias, shape),
                                                        np.broadcast_to(bias_err, shape))
    return total if w is None and c is None else ctx.b.add(name, Scale(w, c, we, ce), [total])


def global_pool(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    x = ins[0]
    axes = list(range(2, len(ctx.shape(x))))
    if not axes:
        raise unsupported(ctx, node, "an input without spatial axes")
    if node.op_type == "GlobalAveragePool":
        return ctx.b.add(name, ReduceSum(axes, keepdims=True, mean=True), [x])
    return composites.reduce_max(ctx.b, name, x, axes, True, True)


def reduce_norm(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> Value:
    x = ins[0]
    axes = reduce_axes(ctx, node, x, 18)
    if axes is None:
        raise unsupported(ctx, node, "noop_with_empty_axes")
    keep = bool(attrs.get("keepdims", 1))
    if node.op_type == "ReduceL1":
        inner = composites.absolute(ctx.b, ctx.b.fresh(f"{name}_abs"), x, ctx.dtype)
    else:
        inner = ctx.b.add(ctx.b.fresh(f"{name}_square"), Square(), [x])
    if node.op_type != "ReduceL2":
        return ctx.b.add(name, ReduceSum(axes, keepdims=keep, mean=False), [inner])
    total = ctx.b.add(ctx.b.fresh(f"{name}_sum"), ReduceSum(axes, keepdims=keep, mean=False), [inner])
    # a sum of squares is >= 0 (so is its float evaluation), but rounding allowances may take its lower bound a hair
    # below 0, where sqrt is undefined: relu(s) = s there, exactly
    return ctx.b.add(name, Sqrt(), [ctx.b.add(ctx.b.fresh(f"{name}_nonneg"), Relu(), [total])])


def instance_norm(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    x = ins[0]
    shape = ctx.shape(x)
    if len(shape) < 3:
        raise unsupported(ctx, node, "an input without spatial axes")
    scale, bias = (const_input(ctx, node, i, "InstanceNormalization parameter") for i in (1, 2))
    eps = np.float64(np.float32(attrs.get("epsilon", 1e-5)))
    normed = composites.layer_norm(ctx.b, ctx.b.fresh(f"{name}_normed"), x, len(shape) - 2, ctx.param(np.asarray(eps)))
    tail = (1,) * (len(shape) - 2)
    w, we = ctx.param(np.asarray(scale, dtype=np.float64).reshape(-1, *tail), ctx.err(scale))
    b, be = ctx.param(np.asarray(bias, dtype=np.float64).reshape(-1, *tail), ctx.err(bias))
    return ctx.b.add(name, Scale(w, b, we, be), [normed])


def scatter_nd(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    data, indices, updates = ins
    if not isinstance(updates, str) or isinstance(data, str) or isinstance(indices, str):
        raise unsupported(ctx, node, "data or indices that depend on the input")
    if attrs.get("reduction", b"none") not in (b"none", "none"):
        raise unsupported(ctx, node, "a reduction")
    data, idx = np.asarray(data), np.asarray(indices).astype(np.int64)
    k, n_upd = idx.shape[-1], int(np.prod(ctx.shape(updates)))
    # src[p]: where output entry p comes from, in [updates (flat); data (flat)]
    src = (n_upd + np.arange(data.size)).reshape(data.shape)
    upd_pos = np.arange(n_upd).reshape(idx.shape[:-1] + data.shape[k:])
    targets = [tuple(int(i) % d for i, d in zip(t, data.shape, strict=False)) for t in idx.reshape(-1, k)]
    if len(set(targets)) != len(targets):
        raise unsupported(ctx, node, "repeated indices")
    for t, u in zip(targets, upd_pos.reshape(-1, *data.shape[k:]), strict=True):
        src[t] = u
    flat = ctx.b.add(ctx.b.fresh(f"{name}_updates"), Reshape((n_upd,)), [updates])
    c, ce = ctx.param(data.reshape(-1), None if ctx.err(data) is None else ctx.err(data).reshape(-1))
    pool = ctx.b.add(ctx.b.fresh(f"{name}_pool"), Concat(0, 1, {1: c}, {} if ce is None else {1: ce}), [flat])
    picked = ctx.b.add(ctx.b.fresh(f"{name}_pick"), Gather(0, torch.as_tensor(src.reshape(-1), device="cpu")), [pool])
    return ctx.b.add(name, Reshape(tuple(data.shape)), [picked])


def pad(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    """Pad in every mode: constant (one Pad op); reflect, edge and wrap (opset 19) as, per padded axis, a Concat of
    the border pieces (Gathers of distinct indices: copies) and the input."""
    x = ins[0]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    exact_constants(ctx, node, ins)
    if ctx.opset >= 11:
        pads = const_input(ctx, node, 1, "pads")
        value = const_input(ctx, node, 2, "constant_value") if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 3 and node.input[3]:
            raise unsupported(ctx, node, "axes input")
    else:
        pads, value = attrs["pads"], attrs.get("value", 0.0)
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    shape = ctx.shape(x)
    n = len(pads) // 2
    if n != len(shape) or any(p < 0 for p in pads):
        raise unsupported(ctx, node, f"pads {pads} for a rank-{len(shape)} input (negative pads: crops)")
    if mode == "constant":
        value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
        torch_pads: list[int] = []
        for i in reversed(range(n)):
            torch_pads += [pads[i], pads[i + n]]
        return ctx.b.add(name, Pad(torch_pads, value), [x])
    if mode not in ("reflect", "edge", "wrap"):
        raise unsupported(ctx, node, f"mode {mode}")
    for d in range(n):
        if mode == "reflect" and max(pads[d], pads[d + n]) >= shape[d]:
            raise unsupported(ctx, node, f"reflect pads {pads[d]}, {pads[d + n]} on an axis of {shape[d]}")
    return copy_pad(ctx, name, x, pads[:n], pads[n:], mode)


def copy_pad(ctx: Ctx, name: str, x: str, begin: list[int], end: list[int], mode: str) -> str:
    """Padding by copies of the input's own entries (reflect, edge or wrap): per padded axis a Concat of border
    Gathers with distinct indices and the input."""
    for d, (before, after) in enumerate(zip(begin, end, strict=True)):
        size = ctx.shape(x)[d]
        if not before and not after:
            continue
        if mode == "reflect":
            left, right = list(range(before, 0, -1)), list(range(size - 2, size - 2 - after, -1))
        elif mode == "edge":
            left, right = [0] * before, [size - 1] * after
        else:
            left, right = [(i - before) % size for i in range(before)], [i % size for i in range(after)]
        pieces = []
        for idx, tag in ((left, "left"), (None, ""), (right, "right")):
            if idx is None:
                pieces.append(x)
            elif idx:  # a repeated edge index: one Gather per copy keeps every Gather's indices distinct
                groups = [idx] if len(set(idx)) == len(idx) else [[i] for i in idx]
                for g in groups:
                    pieces.append(ctx.b.add(ctx.b.fresh(f"{name}_{tag}{d}"),
                                            Gather(d, torch.as_tensor(g, device="cpu")), [x]))
        x = ctx.b.add(ctx.b.fresh(f"{name}_axis{d}"), Concat(d, len(pieces)), pieces)
    return x


def softplus(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return ctx.b.add(name, Softplus(), [ins[0]])


def prelu(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    """``relu(x) - s relu(-x)`` with the constant slope ``s`` broadcast (per channel or one); one slope in [0, 1] is
    a LeakyReLU."""
    x, slope = ins
    if isinstance(slope, str):
        raise unsupported(ctx, node, "a slope that depends on the input")
    slope = np.asarray(slope, dtype=np.float64)
    if slope.size == 1 and 0.0 <= float(slope.reshape(-1)[0]) <= 1.0 and ctx.err(ins[1]) is None:
        return ctx.b.add(name, LeakyRelu(float(slope.reshape(-1)[0])), [x])
    shape = tuple(np.broadcast_shapes(ctx.shape(x), slope.shape))
    x = _broadcast_var(ctx, node, x, np.zeros(shape))
    minus, _ = ctx.param(np.asarray(-1.0))
    pos = ctx.b.add(ctx.b.fresh(f"{name}_pos"), Relu(), [x])
    neg = ctx.b.add(ctx.b.fresh(f"{name}_neg"), Relu(), [ctx.b.add(ctx.b.fresh(f"{name}_minus"), Scale(minus), [x])])
    w, we = ctx.param(-np.broadcast_to(slope, shape), None if ctx.err(ins[1]) is None else
                      np.broadcast_to(ctx.err(ins[1]), shape))
    scaled = ctx.b.add(ctx.b.fresh(f"{name}_slope"), Scale(w, None, weight_err=we), [neg])
    return ctx.b.add(name, AddVars([1.0, 1.0]), [pos, scaled])


def softsign(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return composites.softsign(ctx.b, name, ins[0], ctx.param)


def mish(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return composites.mish(ctx.b, name, ins[0])


def celu(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return composites.celu(ctx.b, name, ins[0], _float32_attr(attrs, "alpha", 1.0), ctx.param)


def floor_or_ceil(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    return ctx.b.add(name, Floor(node.op_type.lower()), [ins[0]])


HANDLERS: dict[str, Callable[[Ctx, onnx.NodeProto, list, dict, str], Value]] = {
    "Where": where, "Tile": tile, "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish, "Selu": selu,
    "Sum": sum_or_mean, "Mean": sum_or_mean, "GlobalAveragePool": global_pool, "GlobalMaxPool": global_pool,
    "ReduceL1": reduce_norm, "ReduceL2": reduce_norm, "ReduceSumSquare": reduce_norm,
    "InstanceNormalization": instance_norm, "ScatterND": scatter_nd, "Softplus": softplus, "Floor": floor_or_ceil,
    "Ceil": floor_or_ceil, "Round": floor_or_ceil, "Softsign": softsign, "Mish": mish, "Celu": celu, "PRelu": prelu,
    "Pad": pad, "CumSum": onnx_linear_maps.cumsum,
    **dict.fromkeys(onnx_linear_maps.LINEAR_IN, onnx_linear_maps.linear_by_reference),
}
"""op type -> handler ``(ctx, node, inputs, attributes, node name) -> value`` for nodes with a variable input."""


def handle(ctx: Ctx, node: onnx.NodeProto, ins: list, name: str) -> Value:
    return HANDLERS[node.op_type](ctx, node, ins, attrs_of(node), name)


