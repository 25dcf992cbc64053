"""Tests of verify.attack.falsify on real VNN-COMP instances (test, ACAS Xu, MNIST) and on small models
written to ONNX: sat instances are falsified with witnesses that onnxruntime validates with zero tolerance,
unsat ones never are, and a point onnxruntime rejects is never returned."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.onnx_export import save_sequential
from verify import from_torch
from verify.attack import AttackResult, falsify
from verify.counterexample import format_result, parse_result, validate_counterexample
from verify.errors import ShapeError
from verify.frontends.onnx_frontend import load_onnx
from verify.vnnlib import parse_vnnlib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"


def _data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"VNN-COMP data not found at {DATA} (third-party data is read from ../shared/data)")
    return DATA


def _instance(folder: str, onnx: str, vnnlib: str):
    d = _data() / folder
    g = load_onnx(d / onnx)
    return g, parse_vnnlib(d / vnnlib, g.input_numel, g.output_numel), d / onnx


def _check_witness(res: AttackResult | None, spec, onnx_path: Path) -> None:
    """The witness validates exactly, also after a trip through the result-file format."""
    assert res is not None
    assert res.validated_by == "onnxruntime" and res.exact
    lo, hi = spec.properties[res.property_index].box.lo, spec.properties[res.property_index].box.hi
    assert np.all((res.x >= lo) & (res.x <= hi))
    status, x, y = parse_result(format_result("sat", res.x, res.y))
    assert status == "sat"
    v = validate_counterexample(onnx_path, spec, x, y)
    assert v.ok and v.exact, v.message
    assert spec.is_counterexample(x, y)


# ------------------------------------------------------------------------------------------ real instances


def test_test_sat_is_falsified():
    g, spec, path = _instance("test", "test_sat.onnx", "test_prop.vnnlib")
    res = falsify(g, spec, time_budget_s=20)
    _check_witness(res, spec, path)


def test_test_unsat_is_not_falsified():
    g, spec, _ = _instance("test", "test_unsat.onnx", "test_prop.vnnlib")
    t = time.perf_counter()
    assert falsify(g, spec, time_budget_s=1.0) is None
    assert time.perf_counter() - t < 3.0  # the budget is respected


ACAS_SAT = [
    ("1_7", "prop_3"),
    ("1_8", "prop_4"),
    ("2_1", "prop_2"),
    ("3_5", "prop_2"),
    ("1_3", "prop_2"),  # not found by screening: needs PGD from the best screened points
]


@pytest.mark.parametrize("net, prop", ACAS_SAT)
def test_acasxu_sat_instances_are_falsified(net, prop):
    g, spec, path = _instance("acasxu", f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", f"vnnlib/{prop}.vnnlib")
    res = falsify(g, spec, time_budget_s=20)
    _check_witness(res, spec, path)
    assert res.seconds < 20


@pytest.mark.parametrize("net", ["1_1", "2_3"])
def test_acasxu_property_1_is_not_falsified(net):
    g, spec, _ = _instance("acasxu", f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", "vnnlib/prop_1.vnnlib")
    assert falsify(g, spec, time_budget_s=1.0) is None


@pytest.mark.parametrize("net, prop", [("256x2", "prop_12_0.03"), ("256x4", "prop_1_0.05")])
def test_mnist_sat_instances_are_falsified(net, prop):
    g, spec, path = _instance("mnist_fc_2022", f"onnx/mnist-net_{net}.onnx", f"vnnlib/{prop}.vnnlib")
    res = falsify(g, spec, time_budget_s=20)
    _check_witness(res, spec, path)
    # MNIST specs: one disjunct per other class (Y_target - Y_other <= 0)
    assert len(spec.properties[0].disjuncts) == 9


def test_deterministic_for_a_seed():
    g, spec, _ = _instance("mnist_fc_2022", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_1_0.05.vnnlib")
    a = falsify(g, spec, time_budget_s=20, seed=3)
    b = falsify(g, spec, time_budget_s=20, seed=3)
    assert a is not None and b is not None
    assert np.array_equal(a.x, b.x) and a.phase == b.phase


def test_onnxruntime_disagreement_is_never_returned():
    """The IR of test_sat is attacked but the witness is checked against test_unsat: every candidate the
    attack finds is rejected by onnxruntime, and nothing is returned."""
    g, spec, _ = _instance("test", "test_sat.onnx", "test_prop.vnnlib")
    onnx_unsat = _data() / "test" / "test_unsat.onnx"
    assert falsify(g, spec, time_budget_s=1.0, onnx_path=onnx_unsat) is None


# ------------------------------------------------------------------------------------------ small models


def _mlp(seed: int, d_in: int, d_out: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, d_out))


def _spec_text(boxes: list[list[tuple[float, float]]], n_out: int, output: str) -> str:
    n_in = len(boxes[0])
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    terms = []
    for box in boxes:
        terms.append("(and " + " ".join(f"(>= X_{i} {lo!r}) (<= X_{i} {hi!r})" for i, (lo, hi) in enumerate(box))
                     + ")")
    return decl + f"(assert (or {' '.join(terms)}))\n(assert {output})\n"


def test_union_of_boxes_picks_the_violating_box(tmp_path):
    """y = x0 - x1 (a linear 'network'); counterexample y >= 1.5 exists only in the second box."""
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
        lin.bias.zero_()
    path = tmp_path / "diff.onnx"
    save_sequential(nn.Sequential(lin), (2,), path)
    spec = parse_vnnlib(_spec_text([[(0.0, 1.0), (0.0, 1.0)], [(1.0, 2.0), (-0.1, 0.1)]], 1, "(>= Y_0 1.5)"))
    res = falsify(load_onnx(path), spec, time_budget_s=10)
    _check_witness(res, spec, path)
    assert res.property_index == 1


def test_mixed_constraints_and_high_dimensional_input(tmp_path):
    """20 inputs (no corners), a mixed atom Y_0 >= X_0 and a threshold above every uniform random point
    (reached near the vertices, so by PGD, not by screening); the witness validates."""
    net = _mlp(0, 20, 2)
    path = tmp_path / "mlp.onnx"
    save_sequential(net, (20,), path)
    g = load_onnx(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y_uniform = net(torch.rand(20000, 20, generator=gen) * 2 - 1)[:, 0].max()
        y_vertex = net(torch.randint(0, 2, (20000, 20), generator=gen).float() * 2 - 1)[:, 0].max()
    assert y_vertex > y_uniform
    target = float(y_uniform + 0.5 * (y_vertex - y_uniform))
    spec = parse_vnnlib(_spec_text([[(-1.0, 1.0)] * 20], 2, f"(and (>= Y_0 X_0) (>= Y_0 {target!r}))"))
    assert spec.properties[0].disjuncts[0].mixed is not None
    res = falsify(g, spec, time_budget_s=10)
    _check_witness(res, spec, path)
    assert res.phase == "pgd"
    assert res.y[0] >= res.x[0] and res.y[0] >= target


def test_unreachable_output_is_not_falsified(tmp_path):
    net = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 1))
    path = tmp_path / "sig.onnx"
    save_sequential(net, (3,), path)
    with torch.no_grad():
        bound = float(net[2].weight.abs().sum() + net[2].bias.abs().sum()) + 1.0  # |y| < bound everywhere
    spec = parse_vnnlib(_spec_text([[(-5.0, 5.0)] * 3], 1, f"(>= Y_0 {bound!r})"))
    assert falsify(load_onnx(path), spec, time_budget_s=0.5) is None


def test_graph_without_onnx_file_is_checked_in_float64(tmp_path):
    net = _mlp(1, 3, 2)
    g = from_torch(net, (3,))
    spec = parse_vnnlib(_spec_text([[(-1.0, 1.0)] * 3], 2, "(<= Y_0 Y_1)"))
    with torch.no_grad():
        ys = net(torch.rand(1000, 3) * 2 - 1)
    if not bool((ys[:, 0] <= ys[:, 1]).any()):
        pytest.skip("random network without a violation")
    res = falsify(g, spec, time_budget_s=10)
    assert res is not None and res.validated_by == "float64 IR" and res.validation is None
    assert spec.is_counterexample(res.x, res.y)
    # the same point written to ONNX validates in onnxruntime too
    path = tmp_path / "mlp3.onnx"
    save_sequential(net, (3,), path)
    assert validate_counterexample(path, spec, res.x).ok


def test_shape_mismatch_raises():
    g, _, _ = _instance("test", "test_sat.onnx", "test_prop.vnnlib")
    spec = parse_vnnlib(_spec_text([[(-1.0, 1.0)] * 3], 2, "(<= Y_0 Y_1)"))
    with pytest.raises(ShapeError):
        falsify(g, spec, time_budget_s=1)


@pytest.mark.parametrize("threads", [None, 0, 1])
def test_num_threads_is_restored(threads):
    g, spec, _ = _instance("test", "test_sat.onnx", "test_prop.vnnlib")
    before = torch.get_num_threads()
    assert falsify(g, spec, time_budget_s=5, num_threads=threads) is not None
    assert torch.get_num_threads() == before
