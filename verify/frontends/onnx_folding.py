"""Constant folding for the ONNX frontend: nodes whose inputs are all constants are evaluated with numpy. Float
arithmetic runs in float64 with error bounds (``verify.frontends.constants``) registered in the context; data
movement carries the inputs' error bounds along."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from verify.errors import UnsupportedOperator
from verify.frontends import constants as K
from verify.frontends.onnx_context import Ctx, attrs_of, axes_of, resolve_reshape, slices_of, split_sizes
from verify.rounding import gamma


def fold(ctx: Ctx, node: onnx.NodeProto) -> list[np.ndarray]:
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
    outs = fold_value(ctx, node, ins)
    if any(e is not None for e in errs):  # same data movement on the error bounds
        e_ins = [(ctx.errs.zero_or(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for v in ins]
        e_outs = fold_value(ctx, node, e_ins)
        outs = [ctx.errs.set(np.asarray(o), np.abs(np.asarray(eo, dtype=np.float64)))
                for o, eo in zip(outs, e_outs, strict=True)]
    return outs


def _gemm_fold(ctx, node, ins, e):
    attrs = attrs_of(node)
    a, ea = (ins[0].T, e[0].T) if attrs.get("transA", 0) else (ins[0], e[0])
    b, eb = (ins[1].T, e[1].T) if attrs.get("transB", 0) else (ins[1], e[1])
    out, err = K.mul(*K.matmul(a, ea, b, eb), np.float64(attrs.get("alpha", 1.0)), np.zeros(()))
    if len(ins) > 2 and ins[2] is not None:
        out, err = K.add(out, err, *K.mul(ins[2], e[2], np.float64(attrs.get("beta", 1.0)), np.zeros(())))
    return out, err


def _cast_fold(ctx, node, ins, e):
    to = onnx.helper.tensor_dtype_to_np_dtype(attrs_of(node)["to"])
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


def _reduce_fold(ctx: Ctx, node: onnx.NodeProto, ins: list, errs: list, mean: bool):
    """ReduceSum / ReduceMean of a constant in float64: the inputs' errors add up; the float64 sum of ``n`` terms
    (and the division by ``n``) adds ``gamma_n`` times the sum of magnitudes."""
    attrs = attrs_of(node)
    a, e = np.asarray(ins[0], dtype=np.float64), np.asarray(errs[0], dtype=np.float64)
    axes_from_input = ctx.opset >= (18 if mean else 13)
    axes = axes_of(ctx, node, {}, 1) if axes_from_input else attrs.get("axes")
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


def fold_value(ctx: Ctx, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
    op, attrs = node.op_type, attrs_of(node)
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
        return [ins[0].reshape(resolve_reshape(ins[0].shape, target, attrs.get("allowzero", 0)))]
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % max(ins[0].ndim, 1)
        return [ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)]
    if op == "Transpose":
        return [np.transpose(ins[0], attrs.get("perm"))]
    if op == "Gather":
        return [np.take(ins[0], ins[1].astype(np.int64), axis=int(attrs.get("axis", 0)))]
    if op == "Unsqueeze":
        axes = axes_of(ctx, node, attrs, 1)
        out = ins[0]
        for a in sorted(a % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = axes_of(ctx, node, attrs, 1)
        return [np.squeeze(ins[0], axis=None if axes is None else tuple(axes))]
    if op == "Concat":
        return [np.concatenate(ins, axis=int(attrs["axis"]))]
    if op == "ConstantOfShape":
        value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in ins[0]), value.reshape(-1)[0], dtype=value.dtype)]
    if op == "Slice":
        full = [ctx.values[i] if i else None for i in node.input]
        return [ins[0][tuple(slices_of(ctx, node, full, ins[0].shape))]]
    if op == "Split":
        axis, sizes = split_sizes(ctx, node, ins[0].shape)
        return list(np.split(ins[0], np.cumsum(sizes)[:-1], axis=axis))
    if op in _BY_REFERENCE:
        return _reference(ctx, node, ins)
    raise UnsupportedOperator(op, node.name, ctx.opset, "on constant inputs")


# Exact ops folded by onnx's reference evaluator: selections and data movement (their error bounds move with the
# data, as fold() does for every op outside _ARITH) and steps / comparisons / integer ranges (refused on a computed
# constant: a step of a rounded value may be the wrong step).
_MOVES = {"Where", "Tile", "Expand", "OneHot", "ScatterND", "ScatterElements", "GatherElements", "GatherND", "Trilu",
          "ReduceMax", "ReduceMin"}  # max / min of shifted values moves by at most the largest shift
_STEPS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Floor", "Ceil",
          "Round", "Sign", "ArgMax", "ArgMin", "Mod", "IsNaN", "IsInf", "NonZero", "Size", "Range", "ReduceProd"}
_BY_REFERENCE = _MOVES | _STEPS


def _reference(ctx: Ctx, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
    """``node`` on constant inputs by ``onnx.reference`` at the model's opset."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    op, names = node.op_type, [i for i in node.input if i]
    given = [v for v in ins if v is not None]
    if op in _STEPS and any(np.any(ctx.errs.zero_or(v)) for v in given):
        raise UnsupportedOperator(op, node.name, ctx.opset, "on a computed (rounded) constant")
    if op in ("Range", "ReduceProd", "Mod") and any(v.dtype.kind == "f" for v in given):
        raise UnsupportedOperator(op, node.name, ctx.opset, "floating-point inputs (its float arithmetic)")
    typed = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), None)
             for n, v in zip(names, given, strict=True)]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", typed, outs),
                              opset_imports=[helper.make_opsetid("", ctx.opset)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, dict(zip(names, given, strict=True)))]
