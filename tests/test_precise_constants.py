"""Folded ONNX constants (a BatchNormalization's scale and shift) computed in float64 keep that value for the float64
graph (``Op.precise``): the graph pays the float64 fold's error, not the float32 cast's, and its bounds still
contain onnxruntime's outputs and the float64 evaluation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from verify import bound
from verify.frontends.onnx_frontend import from_onnx_model
from verify.ops import Scale


def _bn_model(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(f32), "scale"),
             numpy_helper.from_array(rng.normal(size=3).astype(f32), "shift"),
             numpy_helper.from_array(rng.normal(size=3).astype(f32), "mean"),
             numpy_helper.from_array(rng.uniform(0.1, 3, 3).astype(f32), "var"),
             numpy_helper.from_array(rng.normal(size=(2, 12)).astype(f32), "w"),
             numpy_helper.from_array(rng.normal(size=2).astype(f32), "b")]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_float64_graph_takes_the_float64_fold():
    model = _bn_model(0)
    g32 = from_onnx_model(model)
    g64 = g32.with_dtype(torch.float64)
    s32 = next(n.op for n in g32.nodes if isinstance(n.op, Scale))
    s64 = next(n.op for n in g64.nodes if isinstance(n.op, Scale))
    assert s32.weight_err is not None and float(s32.weight_err.max()) > 1e-9  # the float32 cast's error
    assert s64.weight_err is None or float(s64.weight_err.max()) < 1e-14
    assert not torch.equal(s64.weight, s32.weight.double())  # the float64 value, not the float32 one widened
    assert float((s64.weight - s32.weight.double()).abs().max()) <= float(s32.weight_err.max())
    assert s32.weight.dtype == torch.float32  # the model's graph is unchanged


def test_bounds_with_the_float64_fold_hold():
    for seed in range(4):
        model = _bn_model(seed)
        g = from_onnx_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(1, 3, 2, 2)).astype(np.float32)
        lo, hi = torch.tensor(x - 0.1), torch.tensor(x + 0.1)
        pts = (lo + (hi - lo) * torch.rand(500, 3, 2, 2)).float()
        ort_y = torch.tensor(np.concatenate([sess.run(None, {"x": p[None].numpy()})[0] for p in pts]))
        b_lo, b_hi = bound(g, lo, hi, method="crown")  # float64 arithmetic (the default)
        y64 = g.with_dtype(torch.float64).forward(pts.double()).reshape(500, 2)
        assert torch.all(y64 >= b_lo) and torch.all(y64 <= b_hi)
        m_lo, m_hi = bound(g, lo, hi, method="crown", precision="model")
        assert torch.all(ort_y >= m_lo) and torch.all(ort_y <= m_hi)
