"""The ONNX interpreter against onnxruntime: every VNN-COMP network, every supported op over opsets,
and one-line errors for malformed files, unknown ops, NaN weights and bad shapes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import vnncomp_dir
from verify.errors import ModelError, ShapeError, UnsupportedOperator
from verify.frontends.onnx_frontend import from_onnx_model, load_onnx
from verify.vnnlib import parse_vnnlib


def _vnncomp_models() -> list[tuple[str, str]]:
    """(onnx, vnnlib) pairs: each distinct network with the first property that uses it."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"
    pairs: dict[str, str] = {}
    for inst in sorted(root.glob("*/instances.csv")):
        for row in csv.reader(inst.open()):
            if row and not row[0].startswith("#"):
                pairs.setdefault(str(inst.parent / row[0].strip()), str(inst.parent / row[1].strip()))
    return sorted(pairs.items()) or [("<missing>", "<missing>")]


def _ort_run(model_path_or_proto, x: np.ndarray) -> np.ndarray:
    src = model_path_or_proto if isinstance(model_path_or_proto, str) else model_path_or_proto.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    inits = set()
    if isinstance(model_path_or_proto, str):
        inits = {i.name for i in onnx.load(model_path_or_proto).graph.initializer}
    inp = next(i for i in sess.get_inputs() if i.name not in inits)
    return np.stack([sess.run(None, {inp.name: xi})[0] for xi in x])


@pytest.mark.parametrize("onnx_path,vnnlib_path", _vnncomp_models(),
                         ids=lambda p: Path(p).name if p.endswith(".onnx") else "")
def test_vnncomp_network_matches_onnxruntime(onnx_path, vnnlib_path):
    vnncomp_dir()
    graph = load_onnx(onnx_path)
    spec = parse_vnnlib(vnnlib_path, n_inputs=graph.input_numel, n_outputs=graph.output_numel)
    box = spec.properties[0].box
    rng = np.random.default_rng(0)
    x = (box.lo + rng.random((100, box.lo.size)) * (box.hi - box.lo)).astype(np.float32)
    x = x.reshape(100, *graph.input_shape)
    ref = _ort_run(onnx_path, x).reshape(100, -1)
    with torch.no_grad():
        ours = graph(torch.from_numpy(x)).reshape(100, -1).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= 1e-4 * scale


def test_acasxu_real_input_is_the_one_without_initializer(vnncomp):
    path = vnncomp / "acasxu" / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    model = onnx.load(str(path))
    assert len(model.graph.input) > 1  # weights are listed as graph inputs
    graph = load_onnx(path)
    assert graph.input_name == "input" and graph.input_shape == (1, 1, 1, 5)


# --- synthetic models covering every supported op, over several opsets ------------------------

def _init(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32) if np.asarray(a).dtype.kind == "f"
                                   else np.asarray(a, dtype=np.int64), name)


def _model(nodes, inits, in_shape, out_shape, opset, extra_inputs=()):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape),
                                       *extra_inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def _axes_args(opset: int, name: str, axes: list[int], inits: list) -> tuple[list[str], dict]:
    if opset >= 13:
        inits.append(_init(name, axes))
        return [name], {}
    return [], {"axes": axes}


def _cnn_model(opset: int) -> onnx.ModelProto:
    """Conv(asymmetric pads) -> BatchNorm -> Relu -> MaxPool -> Pad -> AveragePool -> Transpose ->
    Sigmoid -> Flatten -> Gemm -> Tanh -> Unsqueeze/Squeeze -> Sub/Div/Mul by constants -> Dropout."""
    rng = np.random.default_rng(opset)
    inits = [_init("W", rng.normal(size=(3, 2, 3, 3))), _init("B", rng.normal(size=3)),
             _init("bn_s", rng.uniform(0.5, 1.5, 3)), _init("bn_b", rng.normal(size=3)),
             _init("bn_m", rng.normal(size=3)), _init("bn_v", rng.uniform(0.5, 2, 3)),
             _init("G", rng.normal(size=(4, 27))), _init("g", rng.normal(size=4)),
             _init("mean", rng.normal(size=(1, 2, 1, 1))), _init("std", rng.uniform(0.5, 2, (1, 2, 1, 1))),
             _init("k", [2.0])]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["n1"]), helper.make_node("Div", ["n1", "std"], ["n2"]),
             helper.make_node("Conv", ["n2", "W", "B"], ["c"], pads=[1, 0, 0, 1], strides=[1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[1, 1])]
    if opset >= 11:
        inits.append(_init("pads", [0, 0, 1, 1, 0, 0, 1, 1]))
        inits.append(_init("padv", np.array(0.5, dtype=np.float32)))
        nodes.append(helper.make_node("Pad", ["mp", "pads", "padv"], ["pd"], mode="constant"))
    else:
        nodes.append(helper.make_node("Pad", ["mp"], ["pd"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5))
    nodes += [helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Transpose", ["ap"], ["tr"], perm=[0, 1, 3, 2]),
              helper.make_node("Sigmoid", ["tr"], ["sg"]),
              helper.make_node("Flatten", ["sg"], ["fl"], axis=1),
              helper.make_node("Gemm", ["fl", "G", "g"], ["gm"], transB=1, alpha=0.5, beta=2.0),
              helper.make_node("Tanh", ["gm"], ["th"])]
    names, kw = _axes_args(opset, "ax_u", [1], inits)
    nodes.append(helper.make_node("Unsqueeze", ["th", *names], ["us"], **kw))
    names, kw = _axes_args(opset, "ax_s", [1], inits)
    nodes.append(helper.make_node("Squeeze", ["us", *names], ["sq"], **kw))
    nodes += [helper.make_node("Mul", ["sq", "k"], ["mu"]),
              helper.make_node("Dropout", ["mu"], ["y"])]
    return _model(nodes, inits, [1, 2, 7, 7], [1, 4], opset)


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
def test_every_op_matches_onnxruntime(opset):
    model = _cnn_model(opset)
    onnx.checker.check_model(model)
    graph = from_onnx_model(model)
    x = np.random.default_rng(1).normal(size=(20, 1, 2, 7, 7)).astype(np.float32)
    ref = _ort_run(model, x).reshape(20, -1)
    ours = graph(torch.from_numpy(x)).reshape(20, -1).detach().numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("opset", [11, 13])
def test_residual_concat_reshape_and_constant_nodes(opset):
    rng = np.random.default_rng(2)
    inits = [_init("W1", rng.normal(size=(6, 6))), _init("W2", rng.normal(size=(6, 6)))]
    nodes = [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 2, 3], np.int64))),
             helper.make_node("MatMul", ["x", "W1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["h2"]), helper.make_node("Add", ["h2", "x"], ["res"]),
             helper.make_node("Sub", ["res", "r1"], ["d"]),
             helper.make_node("Concat", ["d", "res"], ["cat"], axis=1),
             helper.make_node("Shape", ["cat"], ["shp"]),
             helper.make_node("Reshape", ["cat", "shape2"], ["y"])]
    inits.append(_init("shape2", [1, -1]))
    model = _model(nodes, inits, [1, 6], [1, 12], opset)
    graph = from_onnx_model(model)
    x = rng.normal(size=(10, 1, 6)).astype(np.float32)
    np.testing.assert_allclose(graph(torch.from_numpy(x)).reshape(10, -1).numpy(),
                               _ort_run(model, x).reshape(10, -1), atol=1e-5, rtol=1e-5)


def test_one_dimensional_matmul_input(vnncomp):
    graph = load_onnx(vnncomp / "test" / "test_small.onnx")
    assert graph.input_shape == (1,)
    x = np.linspace(-1, 1, 7, dtype=np.float32).reshape(7, 1)
    ref = _ort_run(str(vnncomp / "test" / "test_small.onnx"), x).reshape(7, -1)
    np.testing.assert_allclose(graph(torch.from_numpy(x)).reshape(7, -1).numpy(), ref, atol=1e-6)


# --- errors --------------------------------------------------------------------------------

def test_unknown_op_names_op_node_and_opset():
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], name="sp1")]
    with pytest.raises(UnsupportedOperator) as e:
        from_onnx_model(_model(nodes, [], [1, 3], [1, 3], 13))
    msg = str(e.value)
    assert "Hardmax" in msg and "sp1" in msg and "opset 13" in msg and "\n" not in msg


def test_division_by_a_variable_is_a_reciprocal_product_and_a_square_is_a_power():
    ratio = from_onnx_model(_model([helper.make_node("Div", ["x", "x"], ["y"], name="ratio")], [], [1, 3], [1, 3], 13))
    assert [repr(n.op) for n in ratio.nodes] == ["Reciprocal()", "Mul()"]
    graph = from_onnx_model(_model([helper.make_node("Mul", ["x", "x"], ["y"], name="sq")], [], [1, 3], [1, 3], 13))
    assert repr(graph.nodes[-1].op) == "Power(2)"


def test_nan_weights_are_rejected():
    inits = [_init("W", np.array([[1.0, np.nan], [0.0, 1.0]]))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    with pytest.raises(ModelError, match="non-finite"):
        from_onnx_model(_model(nodes, inits, [1, 2], [1, 2], 13))


def test_shape_mismatch_is_reported():
    inits = [_init("W", np.ones((5, 2)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    with pytest.raises(ShapeError, match="mm"):
        from_onnx_model(_model(nodes, inits, [1, 3], [1, 2], 13))


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    with pytest.raises(ModelError, match="bad.onnx"):
        load_onnx(bad)
    with pytest.raises(ModelError, match="no such model file"):
        load_onnx(tmp_path / "missing.onnx")
