"""ONNX layer nodes for ``verify.frontends.onnx_frontend``: element-wise arithmetic with constants or variables,
MatMul / Gemm, Conv / ConvTranspose and pooling (one handler each; the dispatcher is ``_var_node``)."""

from __future__ import annotations

import numpy as np
import torch

from verify.errors import ModelError, UnsupportedOperator
from verify.frontends import composites
from verify.frontends import constants as K
from verify.frontends.onnx_context import (
    Ctx,
    Value,
    const_input,
)
from verify.ops import (
    AddVars,
    AvgPool2d,
    Conv2d,
    ConvTranspose2d,
    Dense,
    MaxPool2d,
    Pad,
    Reshape,
    Scale,
    Transpose,
)
from verify.ops.bilinear import Mul, Reciprocal, Square
from verify.ops.shape import Expand


def _pair(v, default=(1, 1)):
    return tuple(int(x) for x in v) if v is not None else default


def _sym_pads(node, ctx, pads, n=2):
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> symmetric (p1, p2) or raise."""
    if pads is None:
        return (0,) * n
    pads = [int(p) for p in pads]
    begin, end = pads[:n], pads[n:]
    if begin != end:
        return None
    return tuple(begin)


# --------------------------------------------------------------------------------------------
# Handlers for nodes with at least one variable input. Each returns the IR node name.


def _elementwise(ctx: Ctx, node, x: Value, y: Value, kind: str) -> Value:
    xv, yv = isinstance(x, str), isinstance(y, str)
    name = node.name or node.output[0]
    if yv and kind == "Div":  # x / y = x * (1 / y)
        inv = ctx.b.add(f"{name}_reciprocal", Reciprocal(), [y])
        if not xv:
            inv = _broadcast_var(ctx, node, inv, x)
            c, ce = ctx.param(x, ctx.err(x))
            return ctx.b.add(name, Scale(c, None, weight_err=ce), [inv])
        y, kind = inv, "Mul"
    if xv and yv:
        if kind == "Mul":
            if x == y:
                return ctx.b.add(name, Square(), [x])
            if len(np.broadcast_shapes(ctx.shape(x), ctx.shape(y))) > max(len(ctx.shape(x)), len(ctx.shape(y))):
                raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "a product that adds axes")
            return ctx.b.add(name, Mul(), [x, y])
        sx, sy = ctx.shape(x), ctx.shape(y)
        if sx != sy:  # broadcast: each variable copied to the common shape (x - mean(x) in exported norms)
            out = tuple(np.broadcast_shapes(sx, sy))
            x, y = (_broadcast_var(ctx, node, v, np.zeros(out), tag) for v, tag in ((x, "x"), (y, "y")))
        return ctx.b.add(name, AddVars([1.0, 1.0 if kind == "Add" else -1.0]), [x, y])
    var, const = (x, y) if xv else (y, x)
    var = _broadcast_var(ctx, node, var, const)
    c, ce = ctx.param(const, ctx.err(const))
    if kind == "Add":
        op = Scale(None, c, bias_err=ce)
    elif kind == "Sub":
        op = Scale(None, -c, bias_err=ce) if xv else Scale(-torch.ones_like(c), c, bias_err=ce)
    elif kind == "Mul":
        op = Scale(c, None, weight_err=ce)
    else:  # Div
        if not xv:
            raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "division by a variable")
        if np.any(const == 0):
            raise ModelError(f"node '{node.name}': division by zero constant")
        inv, inv_err = K.div(np.ones(()), np.zeros(()), const, ctx.errs.zero_or(const))
        w, we = ctx.param(inv, inv_err)
        op = Scale(w, None, weight_err=we)
    return ctx.b.add(name, op, [var])


def _broadcast_var(ctx, node, var: str, const: np.ndarray, tag: str = "") -> str:
    """Make the variable carry the broadcast output shape (reshape when only the rank differs)."""
    sv = ctx.shape(var)
    out = tuple(np.broadcast_shapes(sv, const.shape))
    if out == sv:
        return var
    if int(np.prod(out)) == int(np.prod(sv)):
        return ctx.b.add(ctx.b.fresh(f"{node.name}_bcast{tag}"), Reshape(out), [var])
    return ctx.b.add(ctx.b.fresh(f"{node.name}_expand{tag}"), Expand(out), [var])


def _matmul(ctx, node, a: Value, b: Value) -> Value:
    name = node.name or node.output[0]
    def dense(w: np.ndarray, err: np.ndarray | None) -> Dense:
        weight, werr = ctx.param(w, err)
        return Dense(weight, weight_err=werr)

    if isinstance(a, str) and isinstance(b, np.ndarray):
        sa = ctx.shape(a)
        eb = ctx.err(b)
        if b.ndim == 2:  # [..., k] @ [k, n] -> [..., n] (also a 1-D input)
            return ctx.b.add(name, dense(b.T, None if eb is None else eb.T), [a])
        if b.ndim == 1:  # [..., k] @ [k] -> [...]
            d = ctx.b.add(name, dense(b[None, :], None if eb is None else eb[None, :]), [a])
            return ctx.b.add(f"{name}_squeeze", Reshape(sa[:-1]), [d])
    if isinstance(b, str) and isinstance(a, np.ndarray):
        sb = ctx.shape(b)
        if a.ndim == 2 and len(sb) == 1:  # [n, k] @ [k] -> [n]
            return ctx.b.add(name, dense(a, ctx.err(a)), [b])
        if a.ndim == 2 and len(sb) >= 2:  # W @ X: transpose the last two axes around a Dense
            perm = list(range(len(sb) - 2)) + [len(sb) - 1, len(sb) - 2]
            t1 = ctx.b.add(f"{name}_T", Transpose(perm), [b])
            d = ctx.b.add(name, dense(a, ctx.err(a)), [t1])
            return ctx.b.add(f"{name}_Tback", Transpose(perm), [d])
    if isinstance(a, str) and isinstance(b, str) and len(ctx.shape(a)) >= 2 and len(ctx.shape(b)) >= 2:
        return composites.matmul_vars(ctx.b, name, a, b)
    raise UnsupportedOperator(node.op_type, node.name, ctx.opset,
                              f"MatMul of shapes {ctx.shape(a)} and {ctx.shape(b)}")


def _gemm(ctx, node, attrs) -> Value:
    a = ctx.values[node.input[0]]
    if not isinstance(a, str):
        raise UnsupportedOperator("Gemm", node.name, ctx.opset, "first operand must be the variable")
    bmat = const_input(ctx, node, 1, "Gemm weight")
    c = const_input(ctx, node, 2, "Gemm bias")
    if attrs.get("transA", 0):
        raise UnsupportedOperator("Gemm", node.name, ctx.opset, "transA=1 on a variable")
    trans = bool(attrs.get("transB", 0))
    w, we = (bmat.T, ctx.errs.zero_or(bmat).T) if trans else (bmat, ctx.errs.zero_or(bmat))  # [k, n]
    w, we = K.mul(w, we, np.float64(attrs.get("alpha", 1.0)), np.zeros(()))
    weight, weight_err = ctx.param(w.T, we.T)
    bias = bias_err = None
    if c is not None:
        cb = np.broadcast_to(c, (1, w.shape[1])).reshape(-1)
        ce = np.broadcast_to(ctx.errs.zero_or(c), (1, w.shape[1])).reshape(-1)
        bias, bias_err = ctx.param(*K.mul(cb, ce, np.float64(attrs.get("beta", 1.0)), np.zeros(())))
    return ctx.b.add(node.name or node.output[0], Dense(weight, bias, weight_err, bias_err), [a])


def _conv_inputs(ctx, node, attrs):
    """``(x, weight, weight_err, bias, bias_err)`` of a 2-D Conv / ConvTranspose; refuses other dimensions and
    auto_pad."""
    op = node.op_type
    x = ctx.values[node.input[0]]
    w = const_input(ctx, node, 1, f"{op} weight")
    bias = const_input(ctx, node, 2, f"{op} bias")
    if w.ndim != 4:
        raise UnsupportedOperator(op, node.name, ctx.opset, f"{w.ndim - 2}-D convolution")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOperator(op, node.name, ctx.opset, "auto_pad")
    weight, weight_err = ctx.param(w, ctx.err(w))
    b, b_err = (None, None) if bias is None else ctx.param(bias, ctx.err(bias))
    return x, weight, weight_err, b, b_err


def _conv(ctx, node, attrs) -> Value:
    x, weight, weight_err, b, b_err = _conv_inputs(ctx, node, attrs)
    pads = _sym_pads(node, ctx, attrs.get("pads"))
    if pads is None:
        p = [int(v) for v in attrs["pads"]]
        x = ctx.b.add(f"{node.name}_pad", Pad((p[1], p[3], p[0], p[2])), [x])
        pads = (0, 0)
    op = Conv2d(weight, b, _pair(attrs.get("strides")), pads, _pair(attrs.get("dilations")),
                int(attrs.get("group", 1)), weight_err=weight_err, bias_err=b_err)
    return ctx.b.add(node.name or node.output[0], op, [x])


def _conv_transpose(ctx, node, attrs) -> Value:
    x, weight, weight_err, b, b_err = _conv_inputs(ctx, node, attrs)
    if "output_shape" in attrs:
        raise UnsupportedOperator("ConvTranspose", node.name, ctx.opset, "output_shape")
    pads = _sym_pads(node, ctx, attrs.get("pads"))
    if pads is None:
        raise UnsupportedOperator("ConvTranspose", node.name, ctx.opset, "asymmetric pads")
    op = ConvTranspose2d(weight, b, _pair(attrs.get("strides")), pads, _pair(attrs.get("output_padding"), (0, 0)),
                         _pair(attrs.get("dilations")), int(attrs.get("group", 1)), weight_err=weight_err,
                         bias_err=b_err)
    return ctx.b.add(node.name or node.output[0], op, [x])


def _pool(ctx, node, attrs, kind: str) -> Value:
    x = ctx.values[node.input[0]]
    if len(ctx.shape(x)) < 3 or len(attrs["kernel_shape"]) != 2:
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "only 2-D pooling")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "dilations")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "auto_pad")
    k = _pair(attrs["kernel_shape"])
    s = _pair(attrs.get("strides"))
    if kind == "max" and (attrs.get("ceil_mode", 0) or _sym_pads(node, ctx, attrs.get("pads")) is None):
        return _max_pool_by_edge_copies(ctx, node, x, k, s, attrs)
    if attrs.get("ceil_mode", 0):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "ceil_mode")
    pads = _sym_pads(node, ctx, attrs.get("pads"))
    if pads is None:
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "asymmetric pooling pads")
    if kind == "max":
        op = MaxPool2d(k, s, pads)
    else:
        op = AvgPool2d(k, s, pads, count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return ctx.b.add(node.name or node.output[0], op, [x])


def _max_pool_by_edge_copies(ctx, node, x: str, k, s, attrs) -> Value:
    """MaxPool with asymmetric pads or ceil_mode: the windows' padded positions (ignored by max pooling) become copies
    of the nearest input entry, which every such window holds already (windows are contiguous and overlap the
    input), so the max is unchanged; then an unpadded MaxPool."""
    from verify.frontends.onnx_compositions import copy_pad

    shape = ctx.shape(x)
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    begin, end = [0, 0], [0, 0]
    for i in range(2):
        n, pb, pe = shape[-2 + i], pads[i], pads[i + 2]
        span = n + pb + pe - k[i]
        out = (-(-span // s[i]) if attrs.get("ceil_mode", 0) else span // s[i]) + 1
        if attrs.get("ceil_mode", 0) and (out - 1) * s[i] >= n + pb:  # a last window starting in the end padding
            out -= 1
        begin[i], end[i] = pb, max((out - 1) * s[i] + k[i] - n - pb, 0)
        if pb >= k[i] or end[i] >= k[i]:
            raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "windows that lie in the padding")
    name = node.name or node.output[0]
    lead = [0] * (len(shape) - 2)
    padded = copy_pad(ctx, name, x, lead + begin, lead + end, "edge")
    return ctx.b.add(ctx.b.fresh(name), MaxPool2d(k, s, (0, 0)), [padded])
