"""ONNX ops written with Clarke's ops (Where, Tile, HardSigmoid / HardSwish, Selu, Sum / Mean, global pools,
ReduceL1 / L2 / SumSquare, InstanceNormalization), the new IR ops (Softplus, Floor / Ceil) and constant folding by
onnx's reference evaluator (Equal, Range, OneHot, Where on constants): each between two layers of a synthetic network
matches onnxruntime at several opsets, and its IBP / CROWN / alpha-CROWN bounds hold at sampled, corner and attacked
points (float64 models, so the check is exact up to the float64 evaluation); Lipschitz bounds hold at sampled
gradients where the op has a Jacobian rule."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.test_ops_breadth import (
    _init_any,
    _model,
    assert_bounds_hold,
    assert_lipschitz_holds,
    assert_matches_onnxruntime,
)
from verify.errors import UnsupportedOperator
from verify.frontends.onnx_frontend import from_onnx_model

# op -> (first opset that has every node used, size of the op's output)
OPS = {"Where": (9, 24), "Tile": (9, 48), "HardSigmoid": (9, 24), "HardSwish": (14, 24), "Selu": (9, 24),
       "SumMean": (9, 24), "GlobalPool": (9, 2), "ReduceNorms": (11, 6), "InstanceNorm": (9, 24),
       "Softplus": (9, 24), "FloorCeil": (9, 24), "FoldedConstants": (11, 24), "ScatterND": (11, 24),
       "LogSoftmax": (13, 24), "ResizeLinear": (11, 72), "ResizeCubicSizes": (11, 60),
       "ResizeNearestFraction": (11, 36),
       "ResizeAlignCorners": (11, 72), "ResizeAntialiasDown": (18, 4)}


def _net(op: str, opset: int, seed: int = 0, dtype=np.float64) -> onnx.ModelProto:
    """x [1, 6] -> Gemm (24) -> Reshape [1, 2, 3, 4] -> OP -> Flatten -> ReLU -> Gemm (3)."""
    rng = np.random.default_rng(seed)

    def init(name, a):
        return _init_any(name, a, dtype)

    inits = [init("W1", rng.normal(size=(6, 24))), init("b1", rng.normal(size=24)), init("shape", [1, 2, 3, 4])]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"])]
    node = helper.make_node
    if op == "Where":  # two variable branches, and a variable against a broadcast constant
        inits += [onnx.numpy_helper.from_array(rng.random((1, 1, 3, 4)) < 0.5, "cnd"),
                  onnx.numpy_helper.from_array(rng.random((1, 2, 1, 4)) < 0.5, "cnd2"),
                  init("c", rng.normal(size=(1, 1, 1, 4)))]
        nodes += [node("Neg", ["r"], ["n"]), node("Where", ["cnd", "r", "n"], ["w1"]),
                  node("Where", ["cnd2", "c", "r"], ["w2"]), node("Add", ["w1", "w2"], ["o"])]
    elif op == "Tile":
        inits.append(init("reps", [1, 1, 2, 1]))
        nodes.append(node("Tile", ["r", "reps"], ["o"]))
    elif op == "HardSigmoid":
        nodes.append(node("HardSigmoid", ["r"], ["o"], alpha=0.3, beta=0.4))
    elif op == "HardSwish":
        nodes += [node("HardSwish", ["r"], ["s"]), node("HardSigmoid", ["r"], ["g"]), node("Add", ["s", "g"], ["o"])]
    elif op == "Selu":
        nodes.append(node("Selu", ["r"], ["o"]))
    elif op == "SumMean":  # Sum of two variables and a broadcast constant; Mean of two variables
        inits.append(init("c", rng.normal(size=(1, 1, 1, 4))))
        nodes += [node("Relu", ["r"], ["p"]), node("Sum", ["r", "p", "c"], ["s"]), node("Mean", ["r", "p"], ["m"]),
                  node("Add", ["s", "m"], ["o"])]
    elif op == "GlobalPool":
        nodes += [node("GlobalAveragePool", ["r"], ["a"]), node("GlobalMaxPool", ["r"], ["m"]),
                  node("Add", ["a", "m"], ["o"])]
    elif op == "ReduceNorms":  # axes an input from opset 18
        names = []
        if opset >= 18:
            inits.append(init("ax", [3]))
            names = ["ax"]
        kw = {} if names else {"axes": [3]}
        nodes += [node("ReduceL1", ["r", *names], ["l1"], **kw), node("ReduceL2", ["r", *names], ["l2"], **kw),
                  node("ReduceSumSquare", ["r", *names], ["sq"], **kw), node("Add", ["l1", "l2"], ["a"]),
                  node("Add", ["a", "sq"], ["o"])]
    elif op == "InstanceNorm":
        inits += [init("sc", rng.normal(size=2)), init("bi", rng.normal(size=2))]
        nodes.append(node("InstanceNormalization", ["r", "sc", "bi"], ["o"], epsilon=1e-3))
    elif op == "Softplus":
        nodes.append(node("Softplus", ["r"], ["o"]))
    elif op == "FloorCeil":
        inits.append(init("half", np.array(0.5)))
        nodes += [node("Floor", ["r"], ["fl"]), node("Mul", ["r", "half"], ["rh"]), node("Ceil", ["rh"], ["ce"]),
                  node("Add", ["fl", "ce"], ["o"])]
    elif op == "FoldedConstants":  # Range -> Equal -> Where and OneHot, all on constants, scaling the layer
        inits += [onnx.numpy_helper.from_array(np.array(0, np.int64), "s0"),
                  onnx.numpy_helper.from_array(np.array(4, np.int64), "s1"),
                  onnx.numpy_helper.from_array(np.array(1, np.int64), "s2"),
                  onnx.numpy_helper.from_array(np.array([1, 0, 3, 0], np.int64), "k"),
                  init("two", np.array(2.0)), init("minus", np.array(-0.5)),
                  onnx.numpy_helper.from_array(np.array([3], np.int64), "ind"),
                  onnx.numpy_helper.from_array(np.array(4, np.int64), "depth"), init("vals", [0.0, 1.0])]
        nodes += [node("Range", ["s0", "s1", "s2"], ["rg"]), node("Equal", ["rg", "k"], ["eq"]),
                  node("Where", ["eq", "two", "minus"], ["wc"]), node("Mul", ["r", "wc"], ["m"]),
                  node("OneHot", ["ind", "depth", "vals"], ["oh"], axis=-1), node("Add", ["m", "oh"], ["o"])]
    elif op == "ScatterND":  # rows of the layer written into a constant tensor (data and indices constant)
        inits += [init("data", rng.normal(size=(1, 2, 3, 4))), _init_any("idx", [[0, 1, 2], [0, 0, 1]]),
                  _init_any("st", [0]), _init_any("en", [1]), _init_any("ax", [2]), _init_any("ushape", [2, 4])]
        nodes += [node("Slice", ["r", "st", "en", "ax"], ["rows"]),  # [1, 2, 1, 4]
                  node("Reshape", ["rows", "ushape"], ["upd"]), node("ScatterND", ["data", "idx", "upd"], ["o"])]
    elif op == "LogSoftmax":
        inits.append(init("three", np.array(3.0)))
        nodes += [node("Mul", ["r", "three"], ["r3"]), node("LogSoftmax", ["r3"], ["o"], axis=-1)]
    elif op.startswith("Resize"):  # every mode but nearest with integer scales: linear maps per resized axis
        roi = [init("roi", np.zeros(0))] if opset == 11 else []
        mode, extra, scales, sizes = "linear", {}, [1.0, 1.0, 2.0, 1.5], None
        if op == "ResizeCubicSizes":
            mode, scales, sizes = "cubic", None, [1, 2, 5, 6]
        elif op == "ResizeNearestFraction":
            mode, scales = "nearest", [1.0, 1.0, 1.0, 1.5]
        elif op == "ResizeAlignCorners":
            extra = {"coordinate_transformation_mode": "align_corners"}
        elif op == "ResizeAntialiasDown":
            scales, extra = [1.0, 1.0, 0.5, 0.5], {"antialias": 1}
        inits += roi + ([init("sc", scales)] if scales else [init("sc", np.zeros(0)), _init_any("sz", sizes)])
        names = ["r", "roi" if roi else "", "sc"] + ([] if scales else ["sz"])
        nodes.append(node("Resize", names, ["o"], mode=mode, **extra))
    else:
        raise ValueError(op)
    nodes.append(node("Flatten", ["o"], ["f"], axis=1))
    width = OPS[op][1]
    inits += [init("W2", rng.normal(size=(width, 3))), init("b2", rng.normal(size=3))]
    nodes += [node("Relu", ["f"], ["fr"]), node("Gemm", ["fr", "W2", "b2"], ["y"])]
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    return _model(nodes, inits, [1, 6], [1, 3], opset, elem)


@pytest.mark.parametrize("opset", [11, 13, 14, 18])
@pytest.mark.parametrize("op", list(OPS))
def test_op_matches_onnxruntime(op, opset):
    if opset < OPS[op][0]:
        pytest.skip(f"{op} needs opset {OPS[op][0]}")
    assert_matches_onnxruntime(_net(op, opset, dtype=np.float32))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("op", list(OPS))
def test_op_bounds_hold_at_sampled_and_attacked_points(op, seed):
    assert_bounds_hold(from_onnx_model(_net(op, max(OPS[op][0], 14), seed)), seed, op)


@pytest.mark.parametrize("op", ["Where", "Tile", "HardSigmoid", "HardSwish", "Selu", "SumMean", "GlobalPool",
                                "InstanceNorm", "Softplus", "FoldedConstants", "ScatterND", "ResizeCubicSizes"])
def test_op_lipschitz_bound_holds_at_sampled_gradients(op):
    assert_lipschitz_holds(from_onnx_model(_net(op, max(OPS[op][0], 14), 3)))


def test_steps_have_no_jacobian_rule():
    from verify.lipschitz import lipschitz

    graph = from_onnx_model(_net("FloorCeil", 13))
    with pytest.raises(UnsupportedOperator, match="Floor"):
        lipschitz(graph, np.zeros(6) - 0.1, np.zeros(6) + 0.1, method="crown", attack=False)


def test_where_with_a_variable_condition_and_steps_of_rounded_constants_are_refused():
    rng = np.random.default_rng(0)
    inits = [_init_any("W", rng.normal(size=(6, 6))), _init_any("zero", np.array(0.0))]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"]), helper.make_node("Greater", ["h", "zero"], ["g"]),
             helper.make_node("Neg", ["h"], ["n"]), helper.make_node("Where", ["g", "h", "n"], ["y"])]
    with pytest.raises(UnsupportedOperator, match="Greater"):  # the comparison of a variable itself
        from_onnx_model(_model(nodes, inits, [1, 6], [1, 6], 13))
    # floor(1 / 3) folded from a rounded float64 quotient: refused rather than trusted
    inits = [_init_any("one", np.array(1.0)), _init_any("three", np.array(3.0))]
    nodes = [helper.make_node("Div", ["one", "three"], ["q"]), helper.make_node("Floor", ["q"], ["f"]),
             helper.make_node("Add", ["x", "f"], ["y"])]
    with pytest.raises(UnsupportedOperator, match="computed"):
        from_onnx_model(_model(nodes, inits, [1, 6], [1, 6], 13))


def test_softplus_torch_threshold_gap_is_covered():
    """torch's softplus returns x above its threshold, below log(1 + e^x) by up to e^-threshold: the bounds of a
    float64 op with threshold 20 contain torch's value where the exact function would sit above it."""
    from verify.ops import Softplus

    op = Softplus(threshold=20.0)
    op.bind([(5,)])
    x = torch.tensor([[19.0, 20.0, 20.5, 25.0, -30.0]], dtype=torch.float64)
    lo, hi = op.interval((x, x))
    y = torch.nn.functional.softplus(x)  # threshold 20: returns x for x > 20
    exact = torch.logaddexp(x, torch.zeros_like(x))
    assert (lo <= y).all() and (y <= hi).all() and (lo <= exact).all() and (exact <= hi).all()
    dl, du = op.derivative_interval(x, x + 1)
    assert (du[0, 1:4] >= 1).all() and (dl <= torch.sigmoid(x)).all()
