"""Float64 models (the VNN-COMP 2021 nn4sys shape: a 1-D input around 1e5, a deep ReLU MLP, outputs around 1e3):
read and computed in float64 end to end, checked against onnxruntime, bounded soundly, and their violated
properties answered `sat` (never the wrong `unsat` a float32 reading gave)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from verify import bound, load_onnx
from verify.errors import ModelError
from verify.model_check import check_against_onnxruntime
from verify.pipeline import verify_instance

LO, HI = 135845.0, 216892.0


def nn4sys_like(seed: int = 0) -> onnx.ModelProto:
    """1 -> 32 -> 32 -> 1 ReLU MLP in float64 with knots across [LO, HI] and twin neurons whose weights differ by
    a relative 1e-8: the output (158 at LO, 1333 at HI) is a small difference of terms around 1e6, which float32
    cannot represent (a float32 reading is off by about 100)."""
    rng = np.random.default_rng(seed)
    k1, pairs = 32, 16
    knots = np.sort(rng.uniform(LO - 2e4, HI, k1))
    w1, b1 = np.ones((1, k1)), -knots
    base = rng.uniform(0.5, 1.5, (pairs, k1))
    delta = rng.uniform(1e-8, 5e-8, (pairs, 1)) * rng.choice([-1, 1], (pairs, 1))
    w2 = np.empty((2 * pairs, k1))
    w2[0::2], w2[1::2] = base, base * (1 + delta)
    amp = rng.uniform(0.5, 1.5, pairs)
    w3 = np.zeros(2 * pairs)
    w3[0::2], w3[1::2] = -amp, amp

    def f(x):
        h1 = np.maximum(x[:, None] * w1 + b1, 0)
        return np.maximum(h1 @ w2.T, 0) @ w3

    y_lo, y_hi = f(np.array([LO, HI]))
    scale = (1333.0 - 158.0) / (y_hi - y_lo)
    c = 158.0 - y_lo * scale
    inits = [numpy_helper.from_array(np.asarray(a, dtype=np.float64), n) for a, n in
             ((w1, "W1"), (b1, "b1"), (w2.T, "W2"), ((w3 * scale).reshape(-1, 1), "W3"), (np.array([c]), "b3"))]
    nodes = [helper.make_node("MatMul", ["X_0", "W1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["z1"]),
             helper.make_node("Relu", ["z1"], ["h1"]), helper.make_node("MatMul", ["h1", "W2"], ["z2"]),
             helper.make_node("Relu", ["z2"], ["h2"]), helper.make_node("MatMul", ["h2", "W3"], ["m3"]),
             helper.make_node("Add", ["m3", "b3"], ["Y_0"])]
    g = helper.make_graph(nodes, "nn4sys_like", [helper.make_tensor_value_info("X_0", TensorProto.DOUBLE, [1, 1])],
                          [helper.make_tensor_value_info("Y_0", TensorProto.DOUBLE, [1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module", params=[0, 5, 6])
def net(request, tmp_path_factory):
    """Seeds 5 and 6: a float32 reading answered `unsat` to both sat properties below (measured on the code
    before float64 models were read in float64)."""
    path = tmp_path_factory.mktemp("nn4sys") / "normal_like.onnx"
    onnx.save(nn4sys_like(request.param), str(path))
    return path


def _ort(path, xs) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.array([sess.run(None, {"X_0": np.array([[x]])})[0][0, 0] for x in xs])


def test_float64_model_is_read_in_float64_and_matches_onnxruntime(net):
    graph = load_onnx(net)
    assert graph.dtype == torch.float64
    xs = np.linspace(LO, HI, 41)
    ours = graph(torch.tensor(xs).reshape(-1, 1, 1)).reshape(-1).numpy()
    ref = _ort(net, xs)
    assert np.abs(ours - ref).max() <= 1e-7 * np.abs(ref).max()
    assert check_against_onnxruntime(graph, net, xs.reshape(-1, 1)) <= 1e-7 * np.abs(ref).max()
    # the hazard this guards against: the same network read in float32 is off by tens to hundreds
    g32 = copy.deepcopy(graph).cast(torch.float32)
    y32 = g32(torch.tensor(xs, dtype=torch.float32).reshape(-1, 1, 1)).reshape(-1).double().numpy()
    assert np.abs(y32 - ref).max() > 10
    with pytest.raises(ModelError, match="rounded"):
        load_onnx(net, dtype=torch.float32)


def test_float64_model_bounds_contain_its_values_with_zero_tolerance(net):
    graph = load_onnx(net)
    xs = np.concatenate([[LO, HI], np.linspace(LO, HI, 301)])
    ref = _ort(net, xs)
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = bound(graph, torch.tensor([[LO]]), torch.tensor([[HI]]), method=method)
        assert lower.dtype == torch.float64
        assert float(lower) <= ref.min() and ref.max() <= float(upper), method
    for x, y in zip(xs[:40], ref[:40], strict=True):  # point boxes
        lower, upper = bound(graph, torch.tensor([[x]]), torch.tensor([[x]]), method="crown")
        assert float(lower) <= y <= float(upper)


def _spec(path, atom: str) -> None:
    path.write_text(f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 {LO}))\n"
                    f"(assert (<= X_0 {HI}))\n(assert {atom})\n")


@pytest.mark.parametrize("atom,allowed", [
    ("(>= Y_0 1200.0)", {"sat"}),  # x = HI gives 1333
    ("(<= Y_0 170.0)", {"sat"}),  # x = LO gives 158
    ("(>= Y_0 1332.99)", {"sat", "timeout", "unknown"}),  # violated only near HI
    ("(>= Y_0 2000.0)", {"unsat"}),
    ("(<= Y_0 100.0)", {"unsat"}),
])
def test_float64_model_properties(net, tmp_path, atom, allowed):
    spec = tmp_path / "p.vnnlib"
    _spec(spec, atom)
    res = verify_instance(net, spec, timeout=30)
    assert res.status in allowed, (atom, res)
    if res.status == "sat":
        assert res.validated and res.x is not None
