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
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from verify.errors import ModelError, ShapeError, UnsupportedOperator
from verify.frontends import composites, onnx_compositions, onnx_linear_maps
from verify.frontends import constants as K
from verify.frontends.onnx_context import (
    Ctx,
    Value,
    attrs_of,
    axes_of,
    const_input,
    reduce_axes,
    resolve_reshape,
    slices_of,
    split_sizes,
)
from verify.frontends.onnx_folding import fold
from verify.frontends.onnx_layers import (
    _conv,
    _conv_transpose,
    _elementwise,
    _gemm,
    _matmul,
    _pool,
)
from verify.graph import Graph, GraphBuilder
from verify.ops import (
    Concat,
    Gather,
    LeakyRelu,
    LogSoftmax,
    ReduceSum,
    Relu,
    Reshape,
    Scale,
    Sigmoid,
    Sign,
    Slice,
    Tanh,
    Transpose,
    UpsampleNearest,
)
from verify.ops.activation import Erf
from verify.ops.bilinear import Power, Reciprocal
from verify.ops.exp_log import Exp, Log, Sqrt
from verify.ops.periodic import Cos, Sin
from verify.ops.shape import Expand


def _reshape_to(ctx, node, x: str, shape) -> Value:
    return ctx.b.add(node.name or node.output[0], Reshape(tuple(int(d) for d in shape)), [x])


def _split(ctx: Ctx, node: onnx.NodeProto) -> list[Value]:
    """ONNX Split of a variable: one Slice node per output."""
    x = ctx.values[node.input[0]]
    shape = ctx.shape(x)
    axis, sizes = split_sizes(ctx, node, shape)
    outs, start = [], 0
    for out, k in zip(node.output, sizes, strict=True):
        idx = [slice(None)] * len(shape)
        idx[axis] = slice(start, start + k, 1)
        outs.append(ctx.b.add(out or f"{node.name}_{len(outs)}", Slice(idx), [x]))
        start += k
    return outs


def _reduce(ctx: Ctx, node: onnx.NodeProto, x: str, mean: bool) -> Value:
    axes = reduce_axes(ctx, node, x, 18 if mean else 13)
    if axes is None:
        return x
    return ctx.b.add(node.name or node.output[0],
                     ReduceSum(axes, bool(attrs_of(node).get("keepdims", 1)), mean), [x])


def _gather(ctx: Ctx, node: onnx.NodeProto, x: Value, indices: Value) -> Value:
    if isinstance(indices, str):
        raise UnsupportedOperator("Gather", node.name, ctx.opset, "indices that depend on the input")
    shape = ctx.shape(x)
    axis = int(attrs_of(node).get("axis", 0)) % len(shape)
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + shape[axis], idx)
    if idx.size and (idx.min() < 0 or idx.max() >= shape[axis]):
        raise ShapeError(f"Gather node '{node.name}': index out of range for an axis of {shape[axis]}")
    return ctx.b.add(node.name or node.output[0], Gather(axis, torch.as_tensor(idx, device="cpu")), [x])


_NEAREST_COORDS = (b"half_pixel", b"asymmetric", b"pytorch_half_pixel")
_NEAREST_ROUNDING = (b"round_prefer_floor", b"floor")


def _upsample(ctx: Ctx, node: onnx.NodeProto, x: str, ins: list) -> Value:
    """ONNX Upsample (opsets 7-9) and Resize (10+). 'nearest' with integer scales: every output index maps to ``i // s``
    under the coordinate modes accepted here (for integer ``s`` half_pixel and asymmetric agree): UpsampleNearest.
    Anything else (linear, cubic, fractional scales, other coordinate modes): one linear map per resized axis."""
    op, attrs = node.op_type, attrs_of(node)
    mode = attrs.get("mode", b"nearest")
    mode = mode.encode() if isinstance(mode, str) else mode
    if ctx.opset >= 18 and attrs.get("axes") is not None:
        raise UnsupportedOperator(op, node.name, ctx.opset, "axes")
    if op == "Upsample" and ctx.opset < 9:
        if mode != b"nearest":
            raise UnsupportedOperator(op, node.name, ctx.opset, "a mode other than nearest before opset 9")
        scales = attrs.get("scales")
    else:
        given, sizes = _resize_inputs(ctx, node, ins)
        scales = given
        if scales is None and sizes is not None:
            scales = np.asarray(sizes, dtype=np.float64) / np.asarray(ctx.shape(x), dtype=np.float64)
        if mode != b"nearest" or _other_nearest_modes(attrs, ctx.opset) or not _integer_scales(scales):
            return onnx_linear_maps.resize_per_axis(ctx, node, x, given, sizes, node.name or node.output[0])
    scales = np.asarray(scales, dtype=np.float64).reshape(-1)
    if scales.size != len(ctx.shape(x)) or not _integer_scales(scales):
        raise UnsupportedOperator(op, node.name, ctx.opset, f"scales {scales.tolist()} (only integers >= 1)")
    return ctx.b.add(node.name or node.output[0], UpsampleNearest([int(v) for v in scales]), [x])


def _slice(ctx: Ctx, name: str, x: str, idx: list[slice]) -> str:
    """A Slice; an axis with a negative step is a Gather of its (distinct) indices in that order."""
    shape = ctx.shape(x)
    backwards = [d for d, sl in enumerate(idx) if (sl.step or 1) < 0]
    if not backwards:
        return ctx.b.add(name, Slice(idx), [x])
    forward = [slice(0, n, 1) if d in backwards else sl for d, (sl, n) in enumerate(zip(idx, shape, strict=True))]
    if any(sl.indices(n) != (0, n, 1) for sl, n in zip(forward, shape, strict=True)):
        x = ctx.b.add(ctx.b.fresh(f"{name}_forward"), Slice(forward), [x])
    for d in backwards:
        picked = torch.as_tensor(np.arange(shape[d])[idx[d]].copy(), device="cpu")
        x = ctx.b.add(name if d == backwards[-1] else ctx.b.fresh(f"{name}_axis{d}"), Gather(d, picked), [x])
    return x


def _integer_scales(scales) -> bool:
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    return bool(np.all(s >= 1) and np.all(s == np.round(s)))


def _other_nearest_modes(attrs: dict, opset: int) -> bool:
    """Coordinate / rounding modes or antialiasing that UpsampleNearest does not reproduce."""
    for key, allowed in (("coordinate_transformation_mode", _NEAREST_COORDS), ("nearest_mode", _NEAREST_ROUNDING)):
        v = attrs.get(key)
        v = v.encode() if isinstance(v, str) else v
        if v is not None and v not in allowed:
            return True
    return bool(opset >= 18 and attrs.get("antialias", 0))


def _resize_inputs(ctx: Ctx, node: onnx.NodeProto, ins: list):
    """The constant (scales, sizes) of a Resize (opset 10+) or an Upsample (opset 9) node, one of them None."""
    if node.op_type == "Upsample":
        return const_input(ctx, node, 1, "Upsample scales"), None
    idx = 1 if ctx.opset == 10 else 2
    scales = ins[idx] if len(ins) > idx and ins[idx] is not None and np.asarray(ins[idx]).size else None
    sizes = ins[3] if ctx.opset >= 11 and len(ins) > 3 and ins[3] is not None else None
    if isinstance(scales, str) or isinstance(sizes, str):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, "scales / sizes that depend on the input")
    return scales, sizes


def _piecewise(ctx: Ctx, node: onnx.NodeProto, name: str, ins: list, attrs: dict) -> Value:
    """Clip, Abs, and Max / Min of one variable and constants, through ReLUs (``verify.frontends.composites``)."""
    op = node.op_type

    def const(v: np.ndarray):
        return ctx.param(v)

    if op == "Abs":
        return composites.absolute(ctx.b, name, ins[0], ctx.dtype)
    if op == "Clip":
        if ctx.opset >= 11:
            lo, hi = (const_input(ctx, node, i, "Clip limit") if len(node.input) > i and node.input[i] else None
                      for i in (1, 2))
        else:  # float32 attributes; the defaults are the float32 range (no limit)
            lo, hi = (np.float64(np.float32(attrs[k])) if k in attrs else None for k in ("min", "max"))
        if any(v is not None and ctx.err(v) is not None and np.any(ctx.err(v) > 0) for v in (lo, hi)):
            raise UnsupportedOperator(op, node.name, ctx.opset, "a computed (inexact) limit")
        return composites.clamp(ctx.b, name, ins[0], lo, hi, const)
    variables = [v for v in ins if isinstance(v, str)]
    consts = [v for v in ins if isinstance(v, np.ndarray)]
    if len(variables) == len(ins) and len({ctx.shape(v) for v in variables}) == 1:  # max(x, y) = y + relu(x - y)
        out = variables[0]
        for k, v in enumerate(variables[1:]):
            out = composites.max_of_two(ctx.b, name if k == len(variables) - 2 else f"{name}_{k}", out, v, op == "Max")
        return out
    if len(variables) != 1 or len(consts) != len(ins) - 1:
        raise UnsupportedOperator(op, node.name, ctx.opset, "the max / min of variables with constants or broadcasting")
    if any(ctx.err(v) is not None and np.any(ctx.err(v) > 0) for v in consts):
        raise UnsupportedOperator(op, node.name, ctx.opset, "a computed (inexact) constant")
    c = consts[0]
    for v in consts[1:]:
        c = np.maximum(c, v) if op == "Max" else np.minimum(c, v)
    x = variables[0]
    if np.broadcast_shapes(np.shape(c), ctx.shape(x)) != ctx.shape(x):
        raise UnsupportedOperator(op, node.name, ctx.opset, "a constant that broadcasts the variable")
    return (composites.maximum if op == "Max" else composites.minimum)(ctx.b, name, x, c, const)


def _var_node(ctx: Ctx, node: onnx.NodeProto) -> Value:
    op = node.op_type
    attrs = attrs_of(node)
    ins = [ctx.values[i] if i else None for i in node.input]
    x = ins[0]
    name = node.name or node.output[0]
    if op in ("Relu", "Sigmoid", "Tanh"):
        return ctx.b.add(name, {"Relu": Relu, "Sigmoid": Sigmoid, "Tanh": Tanh}[op](), [x])
    if op == "Gelu":  # opset 20
        approximate = attrs.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
        return composites.gelu(ctx.b, name, x, ctx.param, approximate)
    if op == "Elu":
        return composites.elu(ctx.b, name, x, float(np.float32(attrs.get("alpha", 1.0))), ctx.param)
    if op == "LeakyRelu":
        slope = float(np.float32(attrs.get("alpha", 0.01)))  # the attribute is a float32
        if not 0.0 <= slope <= 1.0:
            raise UnsupportedOperator(op, node.name, ctx.opset, f"slope {slope:g} outside [0, 1]")
        return ctx.b.add(name, LeakyRelu(slope), [x])
    if op == "Neg":
        return ctx.b.add(name, Scale(torch.tensor(-1.0, dtype=ctx.dtype, device="cpu")), [x])
    if op == "Sign":
        return ctx.b.add(name, Sign(), [x])
    if op in ("Clip", "Abs", "Max", "Min"):
        return _piecewise(ctx, node, name, ins, attrs)
    if op in ("Sin", "Cos"):
        return ctx.b.add(name, Sin() if op == "Sin" else Cos(), [x])
    if op == "Erf":
        return ctx.b.add(name, Erf(), [x])
    if op in ("Exp", "Log", "Sqrt"):
        return ctx.b.add(name, {"Exp": Exp, "Log": Log, "Sqrt": Sqrt}[op](), [x])
    if op == "Expand":
        target = const_input(ctx, node, 1, "Expand shape")
        return ctx.b.add(name, Expand(np.broadcast_shapes(ctx.shape(x), tuple(int(d) for d in target))), [x])
    if op == "Reciprocal":
        return ctx.b.add(name, Reciprocal(), [x])
    if op == "Pow":
        p = ins[1]
        e = float(p.reshape(-1)[0]) if isinstance(p, np.ndarray) and p.size == 1 else None
        if e is None or e != int(e) or not 1 <= e <= 16 or not isinstance(x, str):
            raise UnsupportedOperator(op, node.name, ctx.opset, "exponents other than constant integers 1..16")
        return x if e == 1 else ctx.b.add(name, Power(int(e)), [x])
    if op in ("Softmax", "LogSoftmax"):
        shape = ctx.shape(x)
        axis = int(attrs.get("axis", -1 if ctx.opset >= 13 else 1)) % len(shape)
        if ctx.opset < 13:  # softmax over the flattened axes from `axis` on: the last axis when the others are 1
            if int(np.prod(shape[axis:])) != shape[-1]:
                raise UnsupportedOperator(op, node.name, ctx.opset, "a flattened softmax over several axes")
            axis = len(shape) - 1
        if op == "Softmax":
            return composites.softmax(ctx.b, name, x, axis, ctx.dtype)
        return ctx.b.add(name, LogSoftmax(axis), [x])
    if op == "Slice":
        return _slice(ctx, name, x, slices_of(ctx, node, ins, ctx.shape(x)))
    if op == "Gather":
        return _gather(ctx, node, ins[0], ins[1])
    if op in ("ReduceSum", "ReduceMean"):
        return _reduce(ctx, node, x, op == "ReduceMean")
    if op in ("ReduceMax", "ReduceMin"):
        axes = reduce_axes(ctx, node, x, 18)
        if axes is None:
            return x
        return composites.reduce_max(ctx.b, name, x, axes, bool(attrs.get("keepdims", 1)), op == "ReduceMax")
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
        target = const_input(ctx, node, 1, "Reshape shape") if ctx.opset >= 5 else attrs["shape"]
        return _reshape_to(ctx, node, x, resolve_reshape(ctx.shape(x), target, attrs.get("allowzero", 0)))
    if op == "Squeeze":
        s = ctx.shape(x)
        axes = axes_of(ctx, node, attrs, 1)
        axes = [i for i, d in enumerate(s) if d == 1] if axes is None else [a % len(s) for a in axes]
        return _reshape_to(ctx, node, x, [d for i, d in enumerate(s) if i not in axes])
    if op == "Unsqueeze":
        s = list(ctx.shape(x))
        axes = sorted(a % (len(s) + len(axes_of(ctx, node, attrs, 1))) for a in axes_of(ctx, node, attrs, 1))
        for a in axes:
            s.insert(a, 1)
        return _reshape_to(ctx, node, x, s)
    if op == "Transpose":
        s = ctx.shape(x)
        perm = attrs.get("perm", list(reversed(range(len(s)))))
        return ctx.b.add(name, Transpose(perm), [x])
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
    if op == "LayerNormalization":
        shape = ctx.shape(x)
        axis = int(attrs.get("axis", -1)) % len(shape)
        if len(node.output) > 1 and any(node.output[1:]):
            raise UnsupportedOperator(op, node.name, ctx.opset, "the Mean / InvStdDev outputs")
        if attrs.get("stash_type", 1) != 1:
            raise UnsupportedOperator(op, node.name, ctx.opset, "stash_type other than float")
        eps = np.float64(np.float32(attrs.get("epsilon", 1e-5)))  # a float32 attribute
        scale, bias = (const_input(ctx, node, i, "LayerNormalization parameter") if len(node.input) > i and
                       node.input[i] else None for i in (1, 2))
        w, w_err = (None, None) if scale is None else ctx.param(scale, ctx.err(scale))
        b_t, b_err = (None, None) if bias is None else ctx.param(bias, ctx.err(bias))
        return composites.layer_norm(ctx.b, name, x, len(shape) - axis, ctx.param(np.asarray(eps), None),
                                     w, b_t, w_err, b_err)
    if op == "BatchNormalization":
        scale, bias, mean, var = (const_input(ctx, node, i, "BatchNorm parameter") for i in range(1, 5))
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
    if op in onnx_compositions.HANDLERS:
        return onnx_compositions.handle(ctx, node, ins, name)
    raise UnsupportedOperator(op, node.name, ctx.opset)


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
    ctx = Ctx(builder, opset, dtype)
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
            a = attrs_of(node)
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
                outs = fold(ctx, node)
                for o, v in zip(node.output, outs, strict=False):
                    ctx.values[o] = np.asarray(v)
        except (UnsupportedOperator, ModelError, ShapeError):
            raise
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise ModelError(f"{source}: cannot interpret node '{node.name}' ({node.op_type}): {e}") from None
    out = ctx.values[g.output[0].name]
    if not isinstance(out, str):
        raise ModelError(f"{source}: the output does not depend on the input")
    graph = builder.build(out)
    _attach_precise(graph, ctx.precise)
    return graph


def _attach_precise(graph: Graph, precise: dict) -> None:
    """Give ops whose folded constants (BatchNorm scales, ...) were rounded to the model's precision those constants'
    float64 values (``Op.precise``), which they take when the graph is computed in float64: the bound then pays
    the float64 value's error, not the float32 cast's (which grows through every later layer's allowance)."""
    for n in graph.nodes:
        for attr, v in list(vars(n.op).items()):
            hit = precise.get(id(v)) if isinstance(v, torch.Tensor) else None
            if hit is not None and hit[0] is v and hasattr(n.op, f"{attr}_err"):
                n.op.precise = {**getattr(n.op, "precise", {}), attr: (hit[1], hit[2])}
