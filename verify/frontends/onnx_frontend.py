"""ONNX -> graph IR with our own interpreter (opsets 8..18).

The real input is the one graph input without an initializer (ACAS Xu lists every weight as an
input). Subgraphs that only involve constants (shape arithmetic, Constant nodes) are folded with
numpy; everything touching the input becomes an IR node. Unknown ops raise ``UnsupportedOperator``.

A model is loaded in its own precision (float64 when its input or any float weight is double, else float32;
float16 models are refused). Constants the frontend computes (``1 / c``, folded BatchNorm, folded constant
arithmetic) are computed in float64 and carry an error bound (``verify.frontends.constants``) that the ops'
rounding allowances include, so the IR bounds the network as stored, not a rounded copy of it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from verify.errors import ModelError, ShapeError, UnsupportedOperator
from verify.frontends import composites
from verify.frontends import constants as K
from verify.graph import Graph, GraphBuilder
from verify.ops import (
    AddVars,
    AvgPool2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dense,
    Gather,
    LeakyRelu,
    MaxPool2d,
    Pad,
    ReduceSum,
    Relu,
    Reshape,
    Scale,
    Sigmoid,
    Sign,
    Slice,
    Softmax,
    Tanh,
    Transpose,
    UpsampleNearest,
)
from verify.ops.bilinear import Mul, Power, Reciprocal, Square
from verify.ops.periodic import Cos, Sin
from verify.ops.shape import Expand
from verify.rounding import gamma

Value = np.ndarray | str  # a folded constant, or the name of an IR node


class _Ctx:
    def __init__(self, builder: GraphBuilder, opset: int, dtype: torch.dtype):
        self.b, self.opset, self.dtype = builder, opset, dtype
        self.values: dict[str, Value] = {}
        self.errs = K.Errors()

    def t(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.array(a, dtype=np.float64), dtype=self.dtype)

    def err(self, a: np.ndarray | None) -> np.ndarray | None:
        """Error bound of a folded constant (``None``: exact as stored)."""
        return self.errs.get(a)

    def param(self, a: np.ndarray, err: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A constant in the model's precision and the bound on its distance to the exact value (its own
        error ``err`` plus the rounding of the cast), or ``None`` when it is exact."""
        t = self.t(a)
        e = K.cast_error(a, t.double().numpy())
        if err is not None:
            e = e + np.broadcast_to(err, e.shape)
        if not np.any(e > 0):
            return t, None
        # the error bound is rounded up to the model's precision
        et = torch.tensor(e, dtype=torch.float64)
        return t, torch.nextafter(et.to(self.dtype), torch.tensor(float("inf"), dtype=self.dtype))

    def shape(self, v: Value) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, np.ndarray) else self.b.shapes[v]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _const_input(ctx: _Ctx, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
    if i >= len(node.input) or node.input[i] == "":
        return None
    v = ctx.values[node.input[i]]
    if not isinstance(v, np.ndarray):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, f"{what} must be a constant")
    return v


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


def _elementwise(ctx: _Ctx, node, x: Value, y: Value, kind: str) -> Value:
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
        if sx != sy:
            raise UnsupportedOperator(node.op_type, node.name, ctx.opset, f"broadcast of variables {sx} and {sy}")
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


def _broadcast_var(ctx, node, var: str, const: np.ndarray) -> str:
    """Make the variable carry the broadcast output shape (reshape when only the rank differs)."""
    sv = ctx.shape(var)
    out = tuple(np.broadcast_shapes(sv, const.shape))
    if out == sv:
        return var
    if int(np.prod(out)) == int(np.prod(sv)):
        return ctx.b.add(f"{node.name}_bcast", Reshape(out), [var])
    return ctx.b.add(f"{node.name}_expand", Expand(out), [var])


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
        # A @ B = sum_k A[..., n, k, 1] * B[..., 1, k, m]: products of variables (McCormick), then the sum over k
        sa, sb = ctx.shape(a), ctx.shape(b)
        if sa[-1] != sb[-2]:
            raise ShapeError(f"node '{node.name}': MatMul of shapes {sa} and {sb}")
        left = ctx.b.add(f"{name}_left", Reshape((*sa, 1)), [a])
        right = ctx.b.add(f"{name}_right", Reshape((*sb[:-2], 1, *sb[-2:])), [b])
        prod = ctx.b.add(f"{name}_products", Mul(), [left, right])
        return ctx.b.add(name, ReduceSum([len(ctx.shape(prod)) - 2], keepdims=False), [prod])
    raise UnsupportedOperator(node.op_type, node.name, ctx.opset,
                              f"MatMul of shapes {ctx.shape(a)} and {ctx.shape(b)}")


def _gemm(ctx, node, attrs) -> Value:
    a = ctx.values[node.input[0]]
    if not isinstance(a, str):
        raise UnsupportedOperator("Gemm", node.name, ctx.opset, "first operand must be the variable")
    bmat = _const_input(ctx, node, 1, "Gemm weight")
    c = _const_input(ctx, node, 2, "Gemm bias")
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
    w = _const_input(ctx, node, 1, f"{op} weight")
    bias = _const_input(ctx, node, 2, f"{op} bias")
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
    if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "ceil_mode/dilations")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "auto_pad")
    k = _pair(attrs["kernel_shape"])
    s = _pair(attrs.get("strides"))
    pads = _sym_pads(node, ctx, attrs.get("pads"))
    if pads is None:
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "asymmetric pooling pads")
    if kind == "max":
        op = MaxPool2d(k, s, pads)
    else:
        op = AvgPool2d(k, s, pads, count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return ctx.b.add(node.name or node.output[0], op, [x])


def _reshape_to(ctx, node, x: str, shape) -> Value:
    return ctx.b.add(node.name or node.output[0], Reshape(tuple(int(d) for d in shape)), [x])


def _resolve_reshape(in_shape, target, allowzero=0) -> tuple[int, ...]:
    target = [int(t) for t in target]
    out = [in_shape[i] if (t == 0 and not allowzero and i < len(in_shape)) else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        raise ShapeError(f"reshape target {target} has more than one -1")
    n = int(np.prod(in_shape))
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1]))
        if rest == 0 or n % rest:
            raise ShapeError(f"cannot reshape {tuple(in_shape)} to {target}")
        out[out.index(-1)] = n // rest
    if int(np.prod(out)) != n:
        raise ShapeError(f"cannot reshape {tuple(in_shape)} to {target}")
    return tuple(out)


def _axes(ctx, node, attrs, idx: int) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    a = _const_input(ctx, node, idx, "axes")
    return None if a is None else [int(v) for v in a]


def _slices(ctx: _Ctx, node: onnx.NodeProto, ins: list, shape: tuple[int, ...]) -> list[slice]:
    """ONNX Slice (attribute form before opset 10, inputs after) as one python slice per axis, with ONNX's
    clamping: negative starts / ends count from the end, out-of-range values are clamped, and a negative step's
    end below 0 means 'through index 0'."""
    attrs = _attrs(node)
    if ctx.opset >= 10:
        def const(i: int, what: str):
            if len(ins) <= i or ins[i] is None:
                return None
            if isinstance(ins[i], str):
                raise UnsupportedOperator("Slice", node.name, ctx.opset, f"{what} that depend on the input")
            return [int(v) for v in np.asarray(ins[i]).reshape(-1)]
        starts, ends = const(1, "starts"), const(2, "ends")
        axes, steps = const(3, "axes"), const(4, "steps")
    else:
        starts, ends = [int(v) for v in attrs["starts"]], [int(v) for v in attrs["ends"]]
        axes, steps = attrs.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a %= len(shape)
        d = shape[a]
        if st == 0:
            raise ModelError(f"Slice node '{node.name}': step 0")
        s, e = (s + d if s < 0 else s), (e + d if e < 0 else e)
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        idx[a] = slice(s, None if e < 0 else e, st)
    return idx


def _check_steps(node: onnx.NodeProto, ctx: _Ctx, idx: list[slice]) -> list[slice]:
    if any((sl.step or 1) < 0 for sl in idx):
        raise UnsupportedOperator("Slice", node.name, ctx.opset, "negative steps on a variable")
    return idx


def _split_sizes(ctx: _Ctx, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, list[int]]:
    """``(axis, sizes)`` of an ONNX Split (sizes from the input at opset 13+, the attribute before, equal parts
    otherwise; opset 18's ``num_outputs`` makes the last part smaller)."""
    attrs = _attrs(node)
    axis = int(attrs.get("axis", 0)) % len(shape)
    sizes = None
    if ctx.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = _const_input(ctx, node, 1, "Split sizes")
    elif "split" in attrs:
        sizes = attrs["split"]
    n = len(node.output)
    d = shape[axis]
    if sizes is None:
        if "num_outputs" in attrs:
            k = -(-d // n)
            sizes = [min(k, d - i * k) for i in range(n)]
        elif d % n:
            raise ShapeError(f"Split node '{node.name}': axis of {d} does not split into {n} equal parts")
        else:
            sizes = [d // n] * n
    sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
    if len(sizes) != n or sum(sizes) != d or min(sizes) < 0:
        raise ShapeError(f"Split node '{node.name}': sizes {sizes} do not cut an axis of {d} into {n}")
    return axis, sizes


def _split(ctx: _Ctx, node: onnx.NodeProto) -> list[Value]:
    """ONNX Split of a variable: one Slice node per output."""
    x = ctx.values[node.input[0]]
    shape = ctx.shape(x)
    axis, sizes = _split_sizes(ctx, node, shape)
    outs, start = [], 0
    for out, k in zip(node.output, sizes, strict=True):
        idx = [slice(None)] * len(shape)
        idx[axis] = slice(start, start + k, 1)
        outs.append(ctx.b.add(out or f"{node.name}_{len(outs)}", Slice(idx), [x]))
        start += k
    return outs


def _reduce(ctx: _Ctx, node: onnx.NodeProto, x: str, mean: bool) -> Value:
    attrs = _attrs(node)
    shape = ctx.shape(x)
    axes_from_input = ctx.opset >= (18 if mean else 13)
    axes = _axes(ctx, node, {} if axes_from_input else attrs, 1) if axes_from_input else attrs.get("axes")
    if axes is None or len(axes) == 0:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(len(shape)))
    return ctx.b.add(node.name or node.output[0],
                     ReduceSum([int(a) % len(shape) for a in axes], bool(attrs.get("keepdims", 1)), mean), [x])


def _gather(ctx: _Ctx, node: onnx.NodeProto, x: Value, indices: Value) -> Value:
    if isinstance(indices, str):
        raise UnsupportedOperator("Gather", node.name, ctx.opset, "indices that depend on the input")
    shape = ctx.shape(x)
    axis = int(_attrs(node).get("axis", 0)) % len(shape)
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + shape[axis], idx)
    if idx.size and (idx.min() < 0 or idx.max() >= shape[axis]):
        raise ShapeError(f"Gather node '{node.name}': index out of range for an axis of {shape[axis]}")
    if len(np.unique(idx)) != idx.size:
        raise UnsupportedOperator("Gather", node.name, ctx.opset, "repeated indices into a variable")
    return ctx.b.add(node.name or node.output[0], Gather(axis, torch.as_tensor(idx)), [x])


_NEAREST_COORDS = (b"half_pixel", b"asymmetric", b"pytorch_half_pixel")
_NEAREST_ROUNDING = (b"round_prefer_floor", b"floor")


def _upsample(ctx: _Ctx, node: onnx.NodeProto, x: str, ins: list) -> Value:
    """ONNX Upsample (opsets 7-9) and Resize (10+) in 'nearest' mode with integer scales: every output index maps to
    ``i // s`` under the coordinate modes accepted here (for integer ``s`` half_pixel and asymmetric agree)."""
    op, attrs = node.op_type, _attrs(node)
    mode = attrs.get("mode", b"nearest")
    mode = mode.encode() if isinstance(mode, str) else mode
    if mode != b"nearest":
        raise UnsupportedOperator(op, node.name, ctx.opset, f"mode {mode.decode()} (only nearest)")
    shape = ctx.shape(x)
    if op == "Upsample":
        scales = attrs.get("scales") if ctx.opset < 9 else _const_input(ctx, node, 1, "Upsample scales")
    else:
        for key, allowed in (("coordinate_transformation_mode", _NEAREST_COORDS), ("nearest_mode", _NEAREST_ROUNDING)):
            v = attrs.get(key)
            v = v.encode() if isinstance(v, str) else v
            if v is not None and v not in allowed:
                raise UnsupportedOperator(op, node.name, ctx.opset, f"{key} {v.decode()}")
        if ctx.opset >= 18 and (attrs.get("axes") is not None or attrs.get("antialias", 0)):
            raise UnsupportedOperator(op, node.name, ctx.opset, "axes / antialias")
        idx = 1 if ctx.opset == 10 else 2
        scales = ins[idx] if len(ins) > idx and ins[idx] is not None and np.asarray(ins[idx]).size else None
        sizes = ins[3] if ctx.opset >= 11 and len(ins) > 3 and ins[3] is not None else None
        if isinstance(scales, str) or isinstance(sizes, str):
            raise UnsupportedOperator(op, node.name, ctx.opset, "scales / sizes that depend on the input")
        if scales is None and sizes is not None:
            scales = np.asarray(sizes, dtype=np.float64) / np.asarray(shape, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.size != len(shape) or np.any(scales < 1) or np.any(scales != np.round(scales)):
        raise UnsupportedOperator(op, node.name, ctx.opset, f"scales {scales.tolist()} (only integers >= 1)")
    return ctx.b.add(node.name or node.output[0], UpsampleNearest([int(v) for v in scales]), [x])


def _piecewise(ctx: _Ctx, node: onnx.NodeProto, name: str, ins: list, attrs: dict) -> Value:
    """Clip, Abs, and Max / Min of one variable and constants, through ReLUs (``verify.frontends.composites``)."""
    op = node.op_type

    def const(v: np.ndarray):
        return ctx.param(v)

    if op == "Abs":
        return composites.absolute(ctx.b, name, ins[0], ctx.dtype)
    if op == "Clip":
        if ctx.opset >= 11:
            lo, hi = (_const_input(ctx, node, i, "Clip limit") if len(node.input) > i and node.input[i] else None
                      for i in (1, 2))
        else:  # float32 attributes; the defaults are the float32 range (no limit)
            lo, hi = (np.float64(np.float32(attrs[k])) if k in attrs else None for k in ("min", "max"))
        if any(v is not None and ctx.err(v) is not None and np.any(ctx.err(v) > 0) for v in (lo, hi)):
            raise UnsupportedOperator(op, node.name, ctx.opset, "a computed (inexact) limit")
        return composites.clamp(ctx.b, name, ins[0], lo, hi, const)
    variables = [v for v in ins if isinstance(v, str)]
    consts = [v for v in ins if isinstance(v, np.ndarray)]
    if len(variables) != 1 or len(consts) != len(ins) - 1:
        raise UnsupportedOperator(op, node.name, ctx.opset, "the max / min of several variables")
    if any(ctx.err(v) is not None and np.any(ctx.err(v) > 0) for v in consts):
        raise UnsupportedOperator(op, node.name, ctx.opset, "a computed (inexact) constant")
    c = consts[0]
    for v in consts[1:]:
        c = np.maximum(c, v) if op == "Max" else np.minimum(c, v)
    x = variables[0]
    if np.broadcast_shapes(np.shape(c), ctx.shape(x)) != ctx.shape(x):
        raise UnsupportedOperator(op, node.name, ctx.opset, "a constant that broadcasts the variable")
    return (composites.maximum if op == "Max" else composites.minimum)(ctx.b, name, x, c, const)


def _var_node(ctx: _Ctx, node: onnx.NodeProto) -> Value:
    op = node.op_type
    attrs = _attrs(node)
    ins = [ctx.values[i] if i else None for i in node.input]
    x = ins[0]
    name = node.name or node.output[0]
    if op in ("Relu", "Sigmoid", "Tanh"):
        return ctx.b.add(name, {"Relu": Relu, "Sigmoid": Sigmoid, "Tanh": Tanh}[op](), [x])
    if op == "LeakyRelu":
        slope = float(np.float32(attrs.get("alpha", 0.01)))  # the attribute is a float32
        if not 0.0 <= slope <= 1.0:
            raise UnsupportedOperator(op, node.name, ctx.opset, f"slope {slope:g} outside [0, 1]")
        return ctx.b.add(name, LeakyRelu(slope), [x])
    if op == "Neg":
        return ctx.b.add(name, Scale(torch.tensor(-1.0, dtype=ctx.dtype)), [x])
    if op == "Sign":
        return ctx.b.add(name, Sign(), [x])
    if op in ("Clip", "Abs", "Max", "Min"):
        return _piecewise(ctx, node, name, ins, attrs)
    if op in ("Sin", "Cos"):
        return ctx.b.add(name, Sin() if op == "Sin" else Cos(), [x])
    if op == "Expand":
        target = _const_input(ctx, node, 1, "Expand shape")
        return ctx.b.add(name, Expand(np.broadcast_shapes(ctx.shape(x), tuple(int(d) for d in target))), [x])
    if op == "Reciprocal":
        return ctx.b.add(name, Reciprocal(), [x])
    if op == "Pow":
        p = ins[1]
        e = float(p.reshape(-1)[0]) if isinstance(p, np.ndarray) and p.size == 1 else None
        if e is None or e != int(e) or not 1 <= e <= 16 or not isinstance(x, str):
            raise UnsupportedOperator(op, node.name, ctx.opset, "exponents other than constant integers 1..16")
        return x if e == 1 else ctx.b.add(name, Power(int(e)), [x])
    if op == "Softmax":
        shape = ctx.shape(x)
        axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1)) % len(shape)
        if ctx.opset < 13:  # softmax over the flattened axes from `axis` on: the last axis when the others are 1
            if int(np.prod(shape[axis:])) != shape[-1]:
                raise UnsupportedOperator(op, node.name, ctx.opset, "a flattened softmax over several axes")
            axis = len(shape) - 1
        return ctx.b.add(name, Softmax(axis), [x])
    if op == "Slice":
        return ctx.b.add(name, Slice(_check_steps(node, ctx, _slices(ctx, node, ins, ctx.shape(x)))), [x])
    if op == "Gather":
        return _gather(ctx, node, ins[0], ins[1])
    if op in ("ReduceSum", "ReduceMean"):
        return _reduce(ctx, node, x, op == "ReduceMean")
    if op in ("Add", "Sub", "Mul", "Div"):
        return _elementwise(ctx, node, ins[0], ins[1], op)
    if op == "MatMul":
        return _matmul(ctx, node, ins[0], ins[1])
    if op == "Gemm":
        return _gemm(ctx, node, attrs)
    if op == "Conv":
        return _conv(ctx, node, attrs)
    if op == "ConvTranspose":
        return _conv_transpose(ctx, node, attrs)
    if op in ("Upsample", "Resize"):
        return _upsample(ctx, node, x, ins)
    if op == "MaxPool":
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOperator(op, node.name, ctx.opset, "Indices output")
        return _pool(ctx, node, attrs, "max")
    if op == "AveragePool":
        return _pool(ctx, node, attrs, "avg")
    if op in ("Dropout", "Identity"):
        return x
    if op == "Flatten":
        s = ctx.shape(x)
        axis = int(attrs.get("axis", 1))
        axis = axis + len(s) if axis < 0 else axis
        return _reshape_to(ctx, node, x, (int(np.prod(s[:axis])), int(np.prod(s[axis:]))))
    if op == "Reshape":
        target = _const_input(ctx, node, 1, "Reshape shape") if ctx.opset >= 5 else attrs["shape"]
        return _reshape_to(ctx, node, x, _resolve_reshape(ctx.shape(x), target, attrs.get("allowzero", 0)))
    if op == "Squeeze":
        s = ctx.shape(x)
        axes = _axes(ctx, node, attrs, 1)
        axes = [i for i, d in enumerate(s) if d == 1] if axes is None else [a % len(s) for a in axes]
        return _reshape_to(ctx, node, x, [d for i, d in enumerate(s) if i not in axes])
    if op == "Unsqueeze":
        s = list(ctx.shape(x))
        axes = sorted(a % (len(s) + len(_axes(ctx, node, attrs, 1))) for a in _axes(ctx, node, attrs, 1))
        for a in axes:
            s.insert(a, 1)
        return _reshape_to(ctx, node, x, s)
    if op == "Transpose":
        s = ctx.shape(x)
        perm = attrs.get("perm", list(reversed(range(len(s)))))
        return ctx.b.add(name, Transpose(perm), [x])
    if op == "Pad":
        mode = attrs.get("mode", b"constant")
        if mode not in (b"constant", "constant"):
            raise UnsupportedOperator(op, node.name, ctx.opset, f"mode {mode!r}")
        if ctx.opset >= 11:
            pads = _const_input(ctx, node, 1, "pads")
            value = _const_input(ctx, node, 2, "constant_value")
            value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
            if len(node.input) > 3 and node.input[3]:
                raise UnsupportedOperator(op, node.name, ctx.opset, "axes input")
        else:
            pads, value = attrs["pads"], float(attrs.get("value", 0.0))
        pads = [int(p) for p in pads]
        if any(p < 0 for p in pads):
            raise UnsupportedOperator(op, node.name, ctx.opset, "negative pads")
        n = len(pads) // 2
        torch_pads: list[int] = []
        for i in reversed(range(n)):
            torch_pads += [pads[i], pads[i + n]]
        return ctx.b.add(name, Pad(torch_pads, value), [x])
    if op == "Concat":
        s0 = ctx.shape(next(v for v in ins if isinstance(v, str)))
        axis = int(attrs["axis"]) % len(s0)
        var_names = [v for v in ins if isinstance(v, str)]
        consts, errs = {}, {}
        for i, v in enumerate(ins):
            if isinstance(v, np.ndarray):
                consts[i], err = ctx.param(v, ctx.err(v))
                if err is not None:
                    errs[i] = err
        return ctx.b.add(name, Concat(axis, len(var_names), consts, errs), var_names)
    if op == "BatchNormalization":
        scale, bias, mean, var = (_const_input(ctx, node, i, "BatchNorm parameter") for i in range(1, 5))
        # the attribute is a float32; the model divides by sqrt(var + eps) with that value
        eps = np.float64(np.float32(attrs.get("epsilon", 1e-5)))
        s = ctx.shape(x)
        e = ctx.errs.zero_or
        w, we = K.div(scale, e(scale), *K.sqrt(*K.add(var, e(var), eps, np.zeros(()))))
        b, be = K.add(bias, e(bias), *K.mul(mean, e(mean), w, we), sign=-1.0)
        tail = (1,) * (len(s) - 2)
        weight, weight_err = ctx.param(w.reshape(-1, *tail), we.reshape(-1, *tail))
        b_t, b_err = ctx.param(b.reshape(-1, *tail), be.reshape(-1, *tail))
        return ctx.b.add(name, Scale(weight, b_t, weight_err, b_err), [x])
    raise UnsupportedOperator(op, node.name, ctx.opset)


# --------------------------------------------------------------------------------------------
# Constant folding (numpy) for nodes whose inputs are all constants.


def _fold(ctx: _Ctx, node: onnx.NodeProto) -> list[np.ndarray]:
    """Evaluate a node on constant inputs. Float arithmetic runs in float64 with error bounds (registered in
    ``ctx.errs``); data movement carries the inputs' error bounds along."""
    ins = [ctx.values[i] if i else None for i in node.input]
    errs = [ctx.err(v) if isinstance(v, np.ndarray) else None for v in ins]
    floating = any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in ins)
    if floating and node.op_type in _ARITH:
        e = [np.zeros(np.shape(v)) if err is None and isinstance(v, np.ndarray) else err
             for v, err in zip(ins, errs, strict=True)]
        val, err = _ARITH[node.op_type](ctx, node, ins, e)
        return [ctx.errs.set(np.asarray(val), err)]
    outs = _fold_value(ctx, node, ins)
    if any(e is not None for e in errs):  # same data movement on the error bounds
        e_ins = [(ctx.errs.zero_or(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for v in ins]
        e_outs = _fold_value(ctx, node, e_ins)
        outs = [ctx.errs.set(np.asarray(o), np.abs(np.asarray(eo, dtype=np.float64)))
                for o, eo in zip(outs, e_outs, strict=True)]
    return outs


def _gemm_fold(ctx, node, ins, e):
    attrs = _attrs(node)
    a, ea = (ins[0].T, e[0].T) if attrs.get("transA", 0) else (ins[0], e[0])
    b, eb = (ins[1].T, e[1].T) if attrs.get("transB", 0) else (ins[1], e[1])
    out, err = K.mul(*K.matmul(a, ea, b, eb), np.float64(attrs.get("alpha", 1.0)), np.zeros(()))
    if len(ins) > 2 and ins[2] is not None:
        out, err = K.add(out, err, *K.mul(ins[2], e[2], np.float64(attrs.get("beta", 1.0)), np.zeros(())))
    return out, err


def _cast_fold(ctx, node, ins, e):
    to = onnx.helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])
    out = ins[0].astype(to)
    if np.dtype(to).kind == "f":
        return out, e[0] + K.cast_error(ins[0], out)
    return out, None if not np.any(e[0]) else np.full(np.shape(out), np.inf)


def _sigmoid64(a):
    return 1 / (1 + np.exp(-np.asarray(a, dtype=np.float64)))


_ARITH: dict[str, Callable] = {  # float arithmetic on constants: (value, error bound) in float64
    # exact ops; max / min are 1-Lipschitz in every argument, so the largest input error bounds the output's
    "Abs": lambda ctx, node, i, e: (np.abs(i[0]), e[0]),
    "ReduceSum": lambda ctx, node, i, e: _reduce_fold(ctx, node, i, e, mean=False),
    "ReduceMean": lambda ctx, node, i, e: _reduce_fold(ctx, node, i, e, mean=True),
    "Max": lambda ctx, node, i, e: (_fold_extreme(np.maximum, i), _fold_extreme(np.maximum, e)),
    "Min": lambda ctx, node, i, e: (_fold_extreme(np.minimum, i), _fold_extreme(np.maximum, e)),
    "Add": lambda ctx, node, i, e: K.add(i[0], e[0], i[1], e[1]),
    "Sub": lambda ctx, node, i, e: K.add(i[0], e[0], i[1], e[1], sign=-1.0),
    "Mul": lambda ctx, node, i, e: K.mul(i[0], e[0], i[1], e[1]),
    "Div": lambda ctx, node, i, e: K.div(i[0], e[0], i[1], e[1]),
    "MatMul": lambda ctx, node, i, e: K.matmul(i[0], e[0], i[1], e[1]),
    "Sqrt": lambda ctx, node, i, e: K.sqrt(i[0], e[0]),
    "Neg": lambda ctx, node, i, e: (-np.asarray(i[0], dtype=np.float64), e[0]),
    "Relu": lambda ctx, node, i, e: (np.maximum(np.asarray(i[0], dtype=np.float64), 0), e[0]),
    # sigmoid is 1/4-Lipschitz, tanh 1-Lipschitz; a few ulps for the float64 evaluation
    "Sigmoid": lambda ctx, node, i, e: (_sigmoid64(i[0]), e[0] / 4 + 4 * K.U64),
    "Tanh": lambda ctx, node, i, e: (np.tanh(np.asarray(i[0], dtype=np.float64)), e[0] + 4 * K.U64),
    "Gemm": _gemm_fold,
    "Cast": _cast_fold,
}


def _reduce_fold(ctx: _Ctx, node: onnx.NodeProto, ins: list, errs: list, mean: bool):
    """ReduceSum / ReduceMean of a constant in float64: the inputs' errors add up; the float64 sum of ``n`` terms
    (and the division by ``n``) adds ``gamma_n`` times the sum of magnitudes."""
    attrs = _attrs(node)
    a, e = np.asarray(ins[0], dtype=np.float64), np.asarray(errs[0], dtype=np.float64)
    axes_from_input = ctx.opset >= (18 if mean else 13)
    axes = _axes(ctx, node, {}, 1) if axes_from_input else attrs.get("axes")
    if axes is None or len(axes) == 0:
        if attrs.get("noop_with_empty_axes", 0):
            return a, e
        axes = list(range(a.ndim))
    axes = tuple(int(x) % a.ndim for x in axes)
    keep = bool(attrs.get("keepdims", 1))
    n = int(np.prod([a.shape[x] for x in axes])) if axes else 1
    val = a.sum(axis=axes, keepdims=keep)
    err = e.sum(axis=axes, keepdims=keep) + gamma(n + 2, torch.float64) * np.abs(a).sum(axis=axes, keepdims=keep)
    if mean:
        val, err = val / n, err / n * (1 + 4 * np.finfo(np.float64).eps) + gamma(2, torch.float64) * np.abs(val / n)
    return val, err


def _fold_extreme(f, arrays: list) -> np.ndarray:
    """``np.maximum`` / ``np.minimum`` over broadcast arrays (ONNX Max / Min take any number of inputs)."""
    return f.reduce(np.broadcast_arrays(*arrays))


def _fold_value(ctx: _Ctx, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
    op, attrs = node.op_type, _attrs(node)
    unary: dict[str, Callable] = {
        "Relu": lambda a: np.maximum(a, 0), "Identity": lambda a: a, "Dropout": lambda a: a, "Neg": np.negative,
        "Abs": np.abs,
    }
    if op in ("Max", "Min"):  # exact; on error bounds too: max / min is 1-Lipschitz in each argument
        return [_fold_extreme(np.maximum if op == "Max" else np.minimum, ins)]
    binary: dict[str, Callable] = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                                   "MatMul": np.matmul}
    if op in unary:
        return [unary[op](ins[0])]
    if op in binary:  # integer (shape) arithmetic; float arithmetic is in _ARITH
        return [binary[op](ins[0], ins[1])]
    if op == "Cast":
        return [ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]
    if op == "Reshape":
        target = ins[1] if ctx.opset >= 5 else attrs["shape"]
        return [ins[0].reshape(_resolve_reshape(ins[0].shape, target, attrs.get("allowzero", 0)))]
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % max(ins[0].ndim, 1)
        return [ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)]
    if op == "Transpose":
        return [np.transpose(ins[0], attrs.get("perm"))]
    if op == "Gather":
        return [np.take(ins[0], ins[1].astype(np.int64), axis=int(attrs.get("axis", 0)))]
    if op == "Unsqueeze":
        axes = _axes(ctx, node, attrs, 1)
        out = ins[0]
        for a in sorted(a % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = _axes(ctx, node, attrs, 1)
        return [np.squeeze(ins[0], axis=None if axes is None else tuple(axes))]
    if op == "Concat":
        return [np.concatenate(ins, axis=int(attrs["axis"]))]
    if op == "ConstantOfShape":
        value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in ins[0]), value.reshape(-1)[0], dtype=value.dtype)]
    if op == "Slice":
        full = [ctx.values[i] if i else None for i in node.input]
        return [ins[0][tuple(_slices(ctx, node, full, ins[0].shape))]]
    if op == "Split":
        axis, sizes = _split_sizes(ctx, node, ins[0].shape)
        return list(np.split(ins[0], np.cumsum(sizes)[:-1], axis=axis))
    raise UnsupportedOperator(op, node.name, ctx.opset, "on constant inputs")


# --------------------------------------------------------------------------------------------


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = vi.type.tensor_type.shape.dim
    # Symbolic or unknown dims (batch 'unk__6', 'BatchSize') are taken as 1.
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def load_onnx(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Graph:
    """Read an ONNX file into the graph IR, in the model's own precision (``dtype``: a wider one, e.g. float64
    for a float32 model; never a narrower one). Raises ``ModelError`` / ``UnsupportedOperator``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                model = onnx.load_model_from_string(f.read())
        else:
            model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, gzip errors and friends
        detail = str(e).splitlines()[0] if str(e) else "parse error"
        raise ModelError(f"{path}: not a valid ONNX file ({type(e).__name__}: {detail})") from None
    return from_onnx_model(model, source=str(path), dtype=dtype)


_FLOAT_TYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
                onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16}


def model_dtype(model: onnx.ModelProto, source: str = "<onnx>") -> torch.dtype:
    """The model's own precision: float64 when its input or any float weight is double, else float32. Half
    precision models are refused: Clarke evaluates a model in its own precision and has no float16 engine."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    types = [i.type.tensor_type.elem_type for i in g.input if i.name not in inits]
    types += [i.data_type for i in g.initializer]
    found = {_FLOAT_TYPES[t] for t in types if t in _FLOAT_TYPES}
    half = found & {torch.float16, torch.bfloat16}
    if half:
        raise ModelError(f"{source}: {sorted(map(str, half))[0].replace('torch.', '')} model: not supported "
                         "(Clarke computes a model in its own precision: float32 or float64)")
    return torch.float64 if torch.float64 in found else torch.float32


def from_onnx_model(model: onnx.ModelProto, source: str = "<onnx>", dtype: torch.dtype | None = None) -> Graph:
    own = model_dtype(model, source)
    if dtype is None:
        dtype = own
    elif torch.finfo(dtype).eps > torch.finfo(own).eps:
        raise ModelError(f"{source}: a {str(own).replace('torch.', '')} model cannot be loaded as "
                         f"{str(dtype).replace('torch.', '')} (its weights would be rounded)")
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not (7 <= opset <= 21):
        raise ModelError(f"{source}: unsupported opset {opset} (supported: 8..18)")
    inits = {i.name: i for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    if len(real_inputs) != 1:
        raise ModelError(f"{source}: expected exactly one non-constant graph input, found "
                         f"{[i.name for i in real_inputs]}")
    if len(g.output) != 1:
        raise ModelError(f"{source}: expected exactly one graph output, found {len(g.output)}")
    inp = real_inputs[0]
    builder = GraphBuilder(inp.name, _shape_of(inp), source=source)
    ctx = _Ctx(builder, opset, dtype)
    ctx.values[inp.name] = inp.name
    for name, init in inits.items():
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"{source}: non-finite values (NaN/Inf) in weight '{name}'")
        ctx.values[name] = arr
    for node in g.node:
        for i in node.input:
            if i and i not in ctx.values:
                raise ModelError(f"{source}: node '{node.name}' ({node.op_type}) uses undefined value '{i}'")
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperator(f"{node.domain}.{node.op_type}", node.name, opset)
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" not in a:
                raise UnsupportedOperator("Constant", node.name, opset, "only the 'value' attribute")
            ctx.values[node.output[0]] = numpy_helper.to_array(a["value"])
            continue
        ins = [ctx.values[i] for i in node.input if i]
        if node.op_type == "Shape":
            ctx.values[node.output[0]] = np.array(ctx.shape(ins[0]), dtype=np.int64)
            continue
        try:
            if node.op_type == "Split" and isinstance(ins[0], str):
                for o, v in zip(node.output, _split(ctx, node), strict=True):
                    ctx.values[o] = v
            elif any(isinstance(v, str) for v in ins):
                ctx.values[node.output[0]] = _var_node(ctx, node)
            else:
                outs = _fold(ctx, node)
                for o, v in zip(node.output, outs, strict=False):
                    ctx.values[o] = np.asarray(v)
        except (UnsupportedOperator, ModelError, ShapeError):
            raise
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise ModelError(f"{source}: cannot interpret node '{node.name}' ({node.op_type}): {e}") from None
    out = ctx.values[g.output[0].name]
    if not isinstance(out, str):
        raise ModelError(f"{source}: the output does not depend on the input")
    return builder.build(out)
