"""ONNX ops that are constant linear maps of their one variable input, with the map read off the node itself.

Resize / Upsample other than nearest with integer scales (linear, cubic, antialiased, fractional scales): one map
per resized axis, each computed by running the node through ``onnx.reference`` on one-hot inputs of that axis (Resize
is separable by axis), applied as a Dense layer on that axis. CumSum: a triangular 0/1 matrix on its axis. Einsum
with constant operands, DepthToSpace, SpaceToDepth, GatherElements / GatherND / Compress with constant indices,
Trilu, ReverseSequence: the whole map from ``onnx.reference`` on unit vectors, a Gather when it picks distinct
entries (copies, exact), else a Dense map. The model computes these maps' weights in its own precision: each Dense
weight carries an error bound for that.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from verify.frontends.onnx_context import Ctx, attrs_of, const_input, exact_constants, unsupported
from verify.ops import Dense, Gather, Reshape, Transpose


def resize_per_axis(ctx: Ctx, node: onnx.NodeProto, x: str, scales, sizes, name: str) -> str:
    """Resize / Upsample as one constant linear map per resized axis (module docstring). ``scales`` / ``sizes``: the
    node's constant inputs (one of them)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    attrs = attrs_of(node)
    exact_constants(ctx, node, [scales, sizes])
    for key, bad in (("coordinate_transformation_mode", b"tf_crop_and_resize"), ("keep_aspect_ratio_policy", None)):
        v = attrs.get(key)
        v = v.encode() if isinstance(v, str) else v
        if v is not None and (bad is None and v != b"stretch" or v == bad):
            raise unsupported(ctx, node, f"{key} {v.decode()}")
    if attrs.get("axes") is not None:
        raise unsupported(ctx, node, "axes")
    shape = ctx.shape(x)
    if sizes is not None:
        out = [int(v) for v in np.asarray(sizes).reshape(-1)]
    else:
        out = [int(np.floor(n * float(f))) for n, f in zip(shape, np.asarray(scales).reshape(-1), strict=True)]
    if len(out) != len(shape) or out[0] != shape[0]:
        raise unsupported(ctx, node, "resizing the batch axis")
    dtype = np.float64
    for d in range(1, len(shape)):
        n = shape[d]
        if sizes is None and float(np.asarray(scales).reshape(-1)[d]) == 1.0 or sizes is not None and out[d] == n:
            continue
        probe_shape = [n] + [1] * (len(shape) - 1)
        probe_shape[d] = n
        probe = np.zeros(probe_shape, dtype)
        for j in range(n):  # one-hot along axis d, sample j
            idx = [j] + [0] * (len(shape) - 1)
            idx[d] = j
            probe[tuple(idx)] = 1.0
        axis_scales = np.ones(len(shape), np.float32)
        inputs = {"x": probe}
        if sizes is not None:
            axis_sizes = np.asarray(probe_shape, np.int64)
            axis_sizes[d] = out[d]
            inputs["sizes"] = axis_sizes
            names = ["x", "", "", "sizes"]
        else:
            axis_scales[d] = float(np.asarray(scales).reshape(-1)[d])
            inputs["scales"] = axis_scales
            names = ["x", "scales"] if node.op_type == "Upsample" or ctx.opset == 10 else ["x", "", "scales"]
        probe_node = helper.make_node(node.op_type, names, ["y"], **attrs)
        typed = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), None)
                 for k, v in inputs.items()]
        graph = helper.make_graph([probe_node], "resize", typed,
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
        y = np.asarray(ReferenceEvaluator(model).run(None, inputs)[0], dtype=np.float64)
        a = y.reshape(n, -1).T  # [out_d, n]: output i of the axis = sum_j a[i, j] input j
        if a.shape[0] != out[d]:
            raise unsupported(ctx, node, f"an output size {a.shape[0]} on axis {d} (expected {out[d]})")
        # the model computes its interpolation weights in its own precision: a few of its ulps of the row's largest
        # weight for every weight of the row (also where the exact weight is 0)
        eps = np.finfo(np.float32 if ctx.dtype == torch.float32 else np.float64).eps
        w, we = ctx.param(a, np.broadcast_to(16 * eps * np.abs(a).max(1, keepdims=True), a.shape) + 1e-300)
        x = _on_axis(ctx, name, x, d, Dense(w, None, we))
    return x


def cumsum(ctx: Ctx, node, ins: list, attrs: dict, name: str) -> str:
    """CumSum along a constant axis: a Dense map with a triangular 0/1 matrix on that axis (exclusive / reverse
    variants), between two Transposes."""
    x = ins[0]
    axis = const_input(ctx, node, 1, "CumSum axis")
    shape = ctx.shape(x)
    d = int(np.asarray(axis).reshape(-1)[0]) % len(shape)
    if d == 0:
        raise unsupported(ctx, node, "a sum along the batch axis")
    size = shape[d]
    m = np.tril(np.ones((size, size)), -1 if attrs.get("exclusive", 0) else 0)  # y_i = sum_{j <= i} x_j
    if attrs.get("reverse", 0):
        m = m[::-1, ::-1].copy()
    w, we = ctx.param(m)
    return _on_axis(ctx, name, x, d, Dense(w, None, we))


def _on_axis(ctx: Ctx, name: str, x: str, d: int, op) -> str:
    """``op`` (acting on the last axis) applied along axis ``d``."""
    last = len(ctx.shape(x)) - 1
    perm = list(range(last + 1))
    perm[d], perm[last] = perm[last], perm[d]
    if d != last:
        x = ctx.b.add(ctx.b.fresh(f"{name}_to_last{d}"), Transpose(perm), [x])
    x = ctx.b.add(ctx.b.fresh(f"{name}_axis{d}"), op, [x])
    if d != last:
        x = ctx.b.add(ctx.b.fresh(f"{name}_back{d}"), Transpose(perm), [x])
    return x


# ops linear in one variable input (its position; None: any one of them, the others constant)
LINEAR_IN = {"Einsum": None, "DepthToSpace": 0, "SpaceToDepth": 0, "GatherElements": 0, "GatherND": 0,
              "Compress": 0, "Trilu": 0, "ReverseSequence": 0}
_LINEAR_MAX = 4_000_000  # entries of the map (inputs x outputs)


def linear_by_reference(ctx: Ctx, node: onnx.NodeProto, ins: list, attrs: dict, name: str) -> str:
    """An op that is linear in its one variable input: its map is read off ``onnx.reference`` runs on the unit
    vectors of that input. A 0/1 map picking distinct inputs is a Gather of the flattened input (copies, exact);
    anything else a Dense map (e.g. Einsum with constant operands)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    var = [i for i, v in enumerate(ins) if isinstance(v, str)]
    where = LINEAR_IN[node.op_type]
    if len(var) != 1 or (where is not None and var != [where]):
        raise unsupported(ctx, node, "more than one input, or an index input, that depends on the network input")
    exact_constants(ctx, node, ins)
    k, x = var[0], ins[var[0]]
    shape = ctx.shape(x)
    n_in = int(np.prod(shape))
    names = [f"in{i}" for i in range(len(ins))]
    feeds = {nm: (None if i == k else np.asarray(v)) for i, (nm, v) in enumerate(zip(names, ins, strict=True))
             if v is not None}
    inputs = [nm if v is not None else "" for nm, v in zip(names, ins, strict=True)]
    probe = helper.make_node(node.op_type, inputs, ["y"], **attrs)
    typed = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(
        np.dtype(np.float64) if i == k else np.asarray(ins[i]).dtype), None)
        for i, nm in enumerate(names) if ins[i] is not None]
    model = helper.make_model(helper.make_graph([probe], "linear", typed,
                                                [helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)]),
                              opset_imports=[helper.make_opsetid("", ctx.opset)])
    run = ReferenceEvaluator(model)
    cols = []
    for j in range(n_in):
        e = np.zeros(n_in)
        e[j] = 1.0
        out = np.asarray(run.run(None, {**{nm: v for nm, v in feeds.items() if v is not None},
                                        names[k]: e.reshape(shape)})[0], dtype=np.float64)
        if j == 0:
            out_shape = out.shape
            if out.size * n_in > _LINEAR_MAX:
                raise unsupported(ctx, node, f"a linear map of {n_in} x {out.size} entries (at most {_LINEAR_MAX})")
        cols.append(out.reshape(-1))
    m = np.stack(cols, axis=1)  # [n_out, n_in]
    flat = ctx.b.add(ctx.b.fresh(f"{name}_flat"), Reshape((1, n_in)), [x])
    ones = m == 1.0
    if np.all((m == 0) | ones) and np.all(ones.sum(1) == 1):
        src = ones.argmax(1)
        if len(np.unique(src)) == len(src):
            picked = ctx.b.add(ctx.b.fresh(f"{name}_pick"), Gather(1, torch.as_tensor(src, device="cpu")), [flat])
            return ctx.b.add(name, Reshape(tuple(out_shape)), [picked])
    # the model's own float evaluation of the map: the Dense allowance covers its sums; its products with constant
    # operands are those of the map's entries, computed here in float64 (a few ulps each)
    w, we = ctx.param(m, np.abs(m) * 4 * np.finfo(np.float64).eps)
    mapped = ctx.b.add(ctx.b.fresh(f"{name}_map"), Dense(w, None, we), [flat])
    return ctx.b.add(name, Reshape(tuple(out_shape)), [mapped])
