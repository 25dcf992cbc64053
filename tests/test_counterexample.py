"""Tests of verify.counterexample: the organizers' witness validation through onnxruntime (tolerances of
doc §6.5), the result-file format (§6.4) and snapping witnesses onto float32 numbers inside the box."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.onnx_export import save_sequential
from verify.counterexample import (
    Validation,
    _load,
    format_result,
    onnx_io,
    parse_result,
    run_onnxruntime,
    snap_into_box,
    validate_counterexample,
)
from verify.errors import ClarkeError, ModelError
from verify.vnnlib import parse_vnnlib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"

# y0 = x0 + x1, y1 = x0 - x1 on the box [0, 1]^2; counterexample: y0 >= 1.5
SPEC = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 0.0))
(assert (<= X_0 1.0))
(assert (>= X_1 0.0))
(assert (<= X_1 1.0))
(assert (>= Y_0 1.5))
"""


def _sum_diff_model(path: Path) -> Path:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        lin.bias.zero_()
    save_sequential(nn.Sequential(lin), (2,), path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _sum_diff_model(tmp_path / "sumdiff.onnx")


@pytest.fixture
def spec():
    return parse_vnnlib(SPEC, 2, 2)


def _data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"VNN-COMP data not found at {DATA} (third-party data is read from ../shared/data)")
    return DATA


# ------------------------------------------------------------------------------------------ validation


def test_true_witness_passes_exactly(model, spec):
    v = validate_counterexample(model, spec, np.array([1.0, 1.0]))
    assert isinstance(v, Validation)
    assert v.ok and v.exact, v.message
    np.testing.assert_array_equal(v.y, [2.0, 0.0])
    assert v.property_index == 0 and v.disjunct_index == 0
    # with its own onnxruntime output as the claimed Y
    v2 = validate_counterexample(model, spec, np.array([1.0, 1.0]), v.y)
    assert v2.ok and v2.exact and v2.rel_error == 0.0


def test_point_outside_the_box_fails(model, spec):
    v = validate_counterexample(model, spec, np.array([1.5, 1.0]))
    assert not v.ok and not v.exact
    assert "outside" in v.message


def test_point_that_does_not_violate_fails(model, spec):
    v = validate_counterexample(model, spec, np.array([0.5, 0.5]))
    assert not v.ok
    assert "no disjunct" in v.message


def test_wrong_claimed_y_fails(model, spec):
    v = validate_counterexample(model, spec, np.array([1.0, 1.0]), np.array([2.5, 0.0]))
    assert not v.ok and v.rel_error == pytest.approx(0.2)
    assert "differs from onnxruntime" in v.message


def test_claimed_y_must_also_violate(model, spec):
    # within the 1e-3 relative error, but the claimed Y0 = 1.499 is not a violation even up to tolerance
    x = np.array([0.75, 0.75])
    v = validate_counterexample(model, spec, x, np.array([1.499, 0.0]))
    assert not v.ok


def test_claimed_y_within_relative_tolerance_is_not_exact(model, spec):
    v = validate_counterexample(model, spec, np.array([1.0, 1.0]), np.array([2.0001, 0.0]))
    assert v.ok and not v.exact
    assert v.rel_error == pytest.approx(0.0001 / 2.0001)


@pytest.mark.parametrize("delta, ok", [(5e-5, True), (5e-4, False)])
def test_box_tolerance(model, spec, delta, ok):
    v = validate_counterexample(model, spec, np.array([1.0 + delta, 1.0]))
    assert v.ok is ok and not v.exact, v.message


@pytest.mark.parametrize("delta, ok", [(5e-5, True), (5e-4, False)])
def test_spec_tolerance(model, spec, delta, ok):
    # y0 = 1.5 - delta misses the threshold 1.5 by delta
    x = np.array([0.75 - delta / 2, 0.75 - delta / 2])
    v = validate_counterexample(model, spec, x)
    assert v.ok is ok and not v.exact, v.message


def test_float32_rounding_below_a_bound_passes_only_with_tolerance(tmp_path):
    # the doc's example: X = 0.44999998807907104 (float32(0.45)) against the bound X >= 0.45
    path = tmp_path / "id.onnx"
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    save_sequential(nn.Sequential(lin), (1,), path)
    spec = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0.45))"
                        "(assert (<= X_0 0.5))(assert (<= Y_0 0.47))", 1, 1)
    x32 = float(np.float32(0.45))
    assert x32 == 0.44999998807907104
    v = validate_counterexample(path, spec, np.array([x32]))
    assert v.ok and not v.exact
    snapped = snap_into_box(np.array([x32]), spec.properties[0].box.lo, spec.properties[0].box.hi)
    assert snapped[0] == 0.45000001788139343
    assert validate_counterexample(path, spec, snapped).exact


def test_mixed_constraints(model):
    # counterexample: Y_1 >= X_0, i.e. x0 - x1 >= x0, i.e. x1 <= 0
    spec = parse_vnnlib("(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
                        "(declare-const Y_1 Real)(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))"
                        "(assert (<= X_1 1))(assert (>= Y_1 X_0))", 2, 2)
    assert validate_counterexample(model, spec, np.array([0.3, 0.0])).exact
    assert not validate_counterexample(model, spec, np.array([0.3, 0.2])).ok


def test_bad_shapes_and_values_fail_cleanly(model, spec):
    assert not validate_counterexample(model, spec, np.array([1.0, 1.0, 1.0])).ok
    assert not validate_counterexample(model, spec, np.array([np.nan, 1.0])).ok
    assert not validate_counterexample(model, spec, np.array([1.0, 1.0]), np.array([2.0])).ok
    with pytest.raises(ModelError):
        validate_counterexample(model.parent / "missing.onnx", spec, np.array([1.0, 1.0]))


def test_gzipped_model(model, spec, tmp_path):
    gz = tmp_path / "sumdiff.onnx.gz"
    gz.write_bytes(gzip.compress(model.read_bytes()))
    assert validate_counterexample(gz, spec, np.array([1.0, 1.0])).exact


def test_sessions_are_cached(model, spec):
    validate_counterexample(model, spec, np.array([1.0, 1.0]))
    hits = _load.cache_info().hits
    validate_counterexample(model, spec, np.array([0.0, 1.0]))
    assert _load.cache_info().hits == hits + 1


def test_real_input_is_the_one_without_initializer():
    d = _data()
    name, shape, dtype = onnx_io(d / "acasxu" / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    assert name == "input" and shape == (1, 1, 1, 5) and dtype is np.float32
    name, shape, _ = onnx_io(d / "mnist_fc_2022" / "onnx" / "mnist-net_256x2.onnx")
    assert shape == (1, 784, 1)
    y = run_onnxruntime(d / "mnist_fc_2022" / "onnx" / "mnist-net_256x2.onnx", np.zeros(784))
    assert y.shape == (10,) and y.dtype == np.float64


def test_real_test_sat_witness():
    """A witness of the toy ACAS Xu property 3 on test_sat, found by random search with onnxruntime alone
    (independent of the IR and the attack): exact on test_sat, rejected on test_unsat."""
    d = _data() / "test"
    spec = parse_vnnlib(d / "test_prop.vnnlib", 5, 5)
    lo, hi = spec.properties[0].box.lo, spec.properties[0].box.hi
    rng = np.random.default_rng(0)
    xs = lo + rng.random((4000, 5)) * (hi - lo)
    found = None
    for x in xs:
        x = snap_into_box(x, lo, hi)
        y = run_onnxruntime(d / "test_sat.onnx", x)
        if spec.is_counterexample(x, y):
            found = x
            break
    assert found is not None
    v = validate_counterexample(d / "test_sat.onnx", spec, found)
    assert v.ok and v.exact
    assert not validate_counterexample(d / "test_unsat.onnx", spec, found).ok


# ------------------------------------------------------------------------------------------ result file


def test_format_result_layout():
    text = format_result("sat", np.array([0.6000000238418579, -0.5]), np.array([-0.017218980938196182]))
    assert text == "sat\n((X_0 0.6000000238418579)\n (X_1 -0.5)\n (Y_0 -0.017218980938196182))\n"
    assert format_result("unsat") == "unsat\n"
    assert format_result("holds") == "unsat\n"
    assert format_result("timeout") == "timeout\n"


def test_format_parse_round_trip_is_bit_exact():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=20) * 10.0 ** rng.integers(-12, 12, 20), [0.0, -0.0, 1e-300, 5.81e-05]])
    y = rng.normal(size=7)
    status, x2, y2 = parse_result(format_result("sat", x, y))
    assert status == "sat"
    assert x2.tobytes() == x.tobytes() and y2.tobytes() == y.tobytes()
    assert parse_result("unsat\n") == ("unsat", None, None)
    assert parse_result("violated\n")[0] == "sat"
    # organizers' whitespace variants
    s, x3, y3 = parse_result("sat\n((X_0  1.5)(X_1 2e-3)\n\t(Y_0 -4))")
    assert s == "sat" and x3.tolist() == [1.5, 0.002] and y3.tolist() == [-4.0]


@pytest.mark.parametrize("text", ["", "maybe\n", "sat\n((X_0 1.0) (X_2 2.0) (Y_0 1))", "sat\n((X_0 abc) (Y_0 1))",
                                  "sat\n((X_0 1.0) (X_0 2.0) (Y_0 1))", "sat\n(X_0 1.0) (Y_0 1)",
                                  "sat\n((X_0 1.0) junk (Y_0 1))"])
def test_parse_result_rejects_malformed(text):
    with pytest.raises(ClarkeError):
        parse_result(text)


def test_format_result_rejects_bad_input():
    with pytest.raises(ValueError):
        format_result("sat")
    with pytest.raises(ValueError):
        format_result("proved")
    with pytest.raises(ValueError):
        format_result("sat", np.array([np.inf]), np.array([0.0]))


# ------------------------------------------------------------------------------------------ snapping


def test_snap_into_box_keeps_float32_inside():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = 50
        centre = rng.normal(size=n) * 10.0 ** rng.integers(-3, 3)
        width = np.abs(rng.normal(size=n)) * 10.0 ** rng.integers(-9, 0)
        lo, hi = centre - width, centre + width
        x = centre + rng.normal(size=n) * width * 3  # many points outside
        s = snap_into_box(x, lo, hi)
        assert np.all((s >= lo) & (s <= hi))
        representable = s.astype(np.float32).astype(np.float64) == s
        # a float32 number exists in [lo, hi] wherever the width exceeds one float32 ulp of the centre
        wide = 2 * width > 2 * np.spacing(np.abs(centre).astype(np.float32)).astype(np.float64)
        assert np.all(representable[wide])
        assert np.all((s[representable].astype(np.float32) >= lo[representable])
                      & (s[representable].astype(np.float32) <= hi[representable]))


def test_snap_into_box_corner_cases():
    # lo == hi not representable in float32: the float64 value is kept (the only point of the box)
    lo = hi = np.array([0.1])
    assert snap_into_box(np.array([0.3]), lo, hi)[0] == 0.1
    # a representable pinned value stays
    assert snap_into_box(np.array([0.3]), np.array([0.5]), np.array([0.5]))[0] == 0.5
    # the real ACAS Xu bound 0.49999999998567607: float32 rounds to 0.5 (outside), snapped below
    hi = np.array([0.49999999998567607])
    s = snap_into_box(np.array([0.7]), np.array([0.4933803235848431]), hi)
    assert s[0] < hi[0] and np.float32(s[0]) == s[0] and s[0] == np.nextafter(np.float32(0.5), np.float32(0))
