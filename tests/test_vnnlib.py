"""Tests of verify.vnnlib: all real VNN-COMP specs parse, exact semantics on hand-written specs, error lines,
fuzzing (mutated real files never raise anything but VnnlibError) and a render/parse round trip."""

from __future__ import annotations

import functools
import gzip
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.errors import ShapeError, VnnlibError
from verify.vnnlib import (
    MAX_DNF_TERMS,
    Disjunct,
    InputBox,
    Property,
    VnnlibSpec,
    parse_vnnlib,
    parse_vnnlib_text,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"

# (folder, n_inputs, n_outputs) of the real benchmark folders.
DIMS = {
    "acasxu": (5, 5),
    "mnist_fc_2022": (784, 10),
    "eran_2021": (784, 10),
    "verivital_2021": (784, 10),
    "oval21_2022": (3072, 10),
}


def _data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"VNN-COMP benchmark files not found at {DATA} (shared data checkout absent)")
    return DATA


def _real_files() -> list[Path]:
    files = sorted(p for p in _data().rglob("*") if p.name.endswith((".vnnlib", ".vnnlib.gz")))
    if not files:
        pytest.skip(f"no .vnnlib files under {DATA}")
    return files


def _check_well_formed(spec: VnnlibSpec) -> None:
    assert isinstance(spec, VnnlibSpec)
    assert spec.n_inputs >= 1 and spec.n_outputs >= 1
    for prop in spec.properties:
        assert isinstance(prop, Property) and isinstance(prop.box, InputBox)
        lo, hi = prop.box.lo, prop.box.hi
        assert lo.dtype == np.float64 and hi.dtype == np.float64
        assert lo.shape == hi.shape == (spec.n_inputs,)
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)
        assert prop.disjuncts
        for d in prop.disjuncts:
            assert isinstance(d, Disjunct)
            assert d.A.dtype == np.float64 and d.b.dtype == np.float64
            assert d.A.ndim == 2 and d.A.shape[1] == spec.n_outputs and d.b.shape == (d.A.shape[0],)
            if d.mixed is not None:
                ax, ay, bm = d.mixed
                k = bm.shape[0]
                assert ax.shape == (k, spec.n_inputs) and ay.shape == (k, spec.n_outputs) and k >= 1


def _err(text: str, **kw) -> VnnlibError:
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib_text(text, **kw)
    return info.value


# ------------------------------------------------------------------------------------------ real files


def test_every_real_file_parses_with_expected_dims():
    files = _real_files()
    times = []
    for f in files:
        folder = f.relative_to(DATA).parts[0]
        nx, ny = DIMS.get(folder, (None, None))
        t0 = time.perf_counter()
        spec = parse_vnnlib(f, n_inputs=nx, n_outputs=ny)  # the model's counts are accepted
        times.append(time.perf_counter() - t0)
        _check_well_formed(spec)
        assert spec.properties, f
        assert spec.path == str(f)
        if nx is not None:
            assert (spec.n_inputs, spec.n_outputs) == (nx, ny), f
    print(f"parsed {len(files)} VNNLIB files, slowest {max(times) * 1e3:.1f} ms")


def test_real_instances_agree_with_onnx_models():
    onnx = pytest.importorskip("onnx")
    csvs = sorted(_data().glob("*/instances.csv"))
    if not csvs:
        pytest.skip("no instances.csv")
    numel: dict[Path, tuple[int, int]] = {}
    seen: set[tuple[Path, int, int]] = set()
    checked = 0
    for csv in csvs:
        for row in csv.read_text().splitlines():
            if not row.strip():
                continue
            onnx_rel, vnn_rel = (s.strip() for s in row.split(",")[:2])
            onnx_path, vnn_path = csv.parent / onnx_rel, csv.parent / vnn_rel
            if not onnx_path.is_file() or not vnn_path.is_file():
                continue
            if onnx_path not in numel:
                g = onnx.load(str(onnx_path), load_external_data=False).graph
                inits = {i.name for i in g.initializer}
                (inp,) = [i for i in g.input if i.name not in inits]
                sizes = [
                    int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))
                    for v in (inp, g.output[0])
                ]
                numel[onnx_path] = (sizes[0], sizes[1])
            key = (vnn_path, *numel[onnx_path])
            if key not in seen:  # instances share specs: parse each (spec, model size) pair once
                seen.add(key)
                spec = parse_vnnlib(vnn_path, n_inputs=key[1], n_outputs=key[2])
                assert (spec.n_inputs, spec.n_outputs) == key[1:]
            checked += 1
    assert checked > 0


def test_acasxu_property_1_and_2_exact():
    d = _data() / "acasxu" / "vnnlib"
    s1 = parse_vnnlib(d / "prop_1.vnnlib", n_inputs=5, n_outputs=5)
    (p,) = s1.properties
    np.testing.assert_array_equal(p.box.lo, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(p.box.hi, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (dj,) = p.disjuncts
    np.testing.assert_array_equal(dj.A, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(dj.b, [-3.991125645861615])
    assert dj.mixed is None
    # property 2: unsafe if COC (Y_0) is maximal: (<= Y_k Y_0) -> Y_k - Y_0 <= 0, all in one disjunct
    (p2,) = parse_vnnlib(d / "prop_2.vnnlib").properties
    (dj2,) = p2.disjuncts
    expected = np.zeros((4, 5))
    expected[:, 0] = -1
    expected[np.arange(4), np.arange(1, 5)] = 1
    np.testing.assert_array_equal(dj2.A, expected)
    np.testing.assert_array_equal(dj2.b, np.zeros(4))


def test_mnist_output_or_gives_nine_disjuncts():
    f = _data() / "mnist_fc_2022" / "vnnlib" / "prop_0_0.03.vnnlib"  # label 4: (or (and (>= Y_k Y_4)) ...)
    if not f.is_file():
        pytest.skip(f"{f} absent")
    spec = parse_vnnlib(f, n_inputs=784, n_outputs=10)
    (p,) = spec.properties
    assert len(p.disjuncts) == 9
    others = [k for k in range(10) if k != 4]
    for k, dj in zip(others, p.disjuncts, strict=True):
        row = np.zeros(10)
        row[4], row[k] = 1, -1  # (>= Y_k Y_4): Y_4 - Y_k <= 0
        np.testing.assert_array_equal(dj.A, [row])
        np.testing.assert_array_equal(dj.b, [0.0])
    assert p.box.lo[0] == 0.0 and p.box.hi[0] == 0.029999999329447746
    # parsing is fast (well under 50 ms on a normal machine; loose bound against slow CI)
    best = min(_timed(parse_vnnlib, f) for _ in range(3))
    assert best < 0.25


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_gzipped_file_and_path_forms(tmp_path):
    src = _data() / "acasxu" / "vnnlib" / "prop_1.vnnlib"
    gz = tmp_path / "prop_1.vnnlib.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    a, b, c = parse_vnnlib(src), parse_vnnlib(str(gz)), parse_vnnlib(src.read_text())
    for other in (b, c):
        np.testing.assert_array_equal(a.properties[0].box.lo, other.properties[0].box.lo)
        np.testing.assert_array_equal(a.properties[0].disjuncts[0].A, other.properties[0].disjuncts[0].A)
    assert b.path == str(gz) and c.path == "<string>"
    bad = tmp_path / "bad.vnnlib.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(VnnlibError, match="cannot read"):
        parse_vnnlib(bad)


# ------------------------------------------------------------------------------------------ semantics

HDR2 = (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
)
BOX2 = "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 2))\n(assert (>= X_1 -2))\n"


def test_acas_prop1_like_text():
    hdr = "".join(f"(declare-const X_{i} Real)\n" for i in range(5))
    hdr += "".join(f"(declare-const Y_{i} Real)\n" for i in range(5))
    box = "".join(f"(assert (<= X_{i} 1))\n(assert (>= X_{i} -1))\n" for i in range(5))
    spec = parse_vnnlib_text(hdr + box + "(assert (>= Y_0 3.99))", n_inputs=5, n_outputs=5)
    (dj,) = spec.properties[0].disjuncts
    np.testing.assert_array_equal(dj.A, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(dj.b, [-3.99])
    np.testing.assert_array_equal(spec.properties[0].box.lo, -np.ones(5))
    np.testing.assert_array_equal(spec.properties[0].box.hi, np.ones(5))


@pytest.mark.parametrize(
    ("atom", "row", "b"),
    [
        ("(<= Y_0 Y_1)", [1, -1], 0.0),
        ("(>= Y_0 Y_1)", [-1, 1], 0.0),
        ("(<= Y_1 0.5)", [0, 1], 0.5),
        ("(>= Y_1 0.5)", [0, -1], -0.5),
        ("(<= 0.5 Y_1)", [0, -1], -0.5),
        ("(>= 0.5 Y_1)", [0, 1], 0.5),
        ("(<= Y_0 5.81e-05)", [1, 0], 5.81e-05),
        ("(<= Y_0 1E-3)", [1, 0], 1e-3),
        ("(<= Y_0 +2)", [1, 0], 2.0),
        ("(<= Y_0 4)", [1, 0], 4.0),
        ("(>= Y_0 -0.0)", [-1, 0], 0.0),
    ],
)
def test_output_atom_rows(atom, row, b):
    (dj,) = parse_vnnlib_text(HDR2 + BOX2 + f"(assert {atom})").properties[0].disjuncts
    np.testing.assert_array_equal(dj.A, [row])
    np.testing.assert_array_equal(dj.b, [b])


def test_tightest_bounds_no_spaces_and_comments_in_multiline_assert():
    text = (
        "(declare-const X_0 Real)(declare-const Y_0 Real)\n"
        "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_0 0.75))(assert(>= X_0 -3))\n"
        "(assert (and ; comment inside\n"
        "   (<= Y_0 1) ; another ) with a paren\n"
        "   (>= Y_0 -1)))"
    )
    spec = parse_vnnlib_text(text)
    (p,) = spec.properties
    assert p.box.lo.tolist() == [0.0] and p.box.hi.tolist() == [0.75]
    (dj,) = p.disjuncts
    np.testing.assert_array_equal(dj.A, [[1], [-1]])
    np.testing.assert_array_equal(dj.b, [1, 1])


def test_output_or_of_ands_gives_disjuncts_in_order():
    text = HDR2 + BOX2 + "(assert (or (and (>= Y_0 1) (<= Y_1 2)) (and (<= Y_0 Y_1)) (>= Y_1 7)))"
    (p,) = parse_vnnlib_text(text).properties
    assert [d.A.tolist() for d in p.disjuncts] == [[[-1, 0], [0, 1]], [[1, -1]], [[0, -1]]]
    assert [d.b.tolist() for d in p.disjuncts] == [[-1, 2], [0], [-7]]


def test_top_level_input_or_gives_two_properties():
    # ACAS Xu property 6 style: union of two input boxes, same output constraint
    text = (
        HDR2
        + "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))\n"
        + "            (and (<= X_0 1) (>= X_0 0) (<= X_1 -1) (>= X_1 -2))))\n"
        + "(assert (<= Y_0 Y_1))"
    )
    spec = parse_vnnlib_text(text)
    assert len(spec.properties) == 2
    p0, p1 = spec.properties
    assert p0.box.lo.tolist() == [0, 0] and p0.box.hi.tolist() == [1, 1]
    assert p1.box.lo.tolist() == [0, -2] and p1.box.hi.tolist() == [1, -1]
    for p in spec.properties:
        (dj,) = p.disjuncts
        assert dj.A.tolist() == [[1, -1]] and dj.b.tolist() == [0]


def test_nested_and_or_dnf_expansion():
    # (A or B) and (C or (D and E)) -> AC, ADE, BC, BDE ; all with the same box -> one property
    text = (
        HDR2 + BOX2 + "(assert (and (or (<= Y_0 1) (<= Y_0 2)) (or (<= Y_1 3) (and (<= Y_1 4) (>= Y_0 5)))))"
    )
    (p,) = parse_vnnlib_text(text).properties
    got = [(d.A.tolist(), d.b.tolist()) for d in p.disjuncts]
    assert got == [
        ([[1, 0], [0, 1]], [1, 3]),
        ([[1, 0], [0, 1], [-1, 0]], [1, 4, -5]),
        ([[1, 0], [0, 1]], [2, 3]),
        ([[1, 0], [0, 1], [-1, 0]], [2, 4, -5]),
    ]


def test_box_in_nested_or_splits_properties_and_groups_equal_boxes():
    text = HDR2 + (
        "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (or (<= Y_0 1) (<= Y_1 1)))\n"
        " (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (<= Y_0 Y_1))\n"
        " (and (<= X_0 3) (>= X_0 2) (<= X_1 1) (>= X_1 0) (>= Y_1 0))))"
    )
    spec = parse_vnnlib_text(text)
    assert len(spec.properties) == 2
    assert [d.A.tolist() for d in spec.properties[0].disjuncts] == [[[1, 0]], [[0, 1]], [[1, -1]]]
    assert [d.A.tolist() for d in spec.properties[1].disjuncts] == [[[0, -1]]]


def test_constant_atoms_and_self_comparisons():
    # true constant atoms are dropped, false ones remove their DNF term
    text = HDR2 + BOX2 + "(assert (or (and (<= 1 2) (<= Y_0 1)) (and (>= 1 2) (<= Y_1 1)) (<= Y_0 Y_0)))"
    (p,) = parse_vnnlib_text(text).properties
    assert [d.A.shape for d in p.disjuncts] == [(1, 2), (0, 2)]
    assert p.disjuncts[0].A.tolist() == [[1, 0]]
    # an always-false spec has an empty counterexample set
    spec = parse_vnnlib_text(HDR2 + BOX2 + "(assert (<= 2 1))")
    assert spec.properties == []
    assert not spec.is_counterexample(np.zeros(2), np.zeros(2))


def test_mixed_input_output_atoms():
    text = "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 -1))" + (
        "(assert (or (<= Y_0 X_0) (and (>= Y_0 5) (>= X_0 Y_0))))"
    )
    (p,) = parse_vnnlib_text(text).properties
    d0, d1 = p.disjuncts
    assert d0.A.shape == (0, 1)
    ax, ay, bm = d0.mixed
    assert ax.tolist() == [[-1]] and ay.tolist() == [[1]] and bm.tolist() == [0]  # y - x <= 0
    assert d1.A.tolist() == [[-1]] and d1.b.tolist() == [-5]
    ax, ay, bm = d1.mixed
    assert ax.tolist() == [[-1]] and ay.tolist() == [[1]] and bm.tolist() == [0]  # x >= y
    spec = parse_vnnlib_text(text)
    assert spec.is_counterexample([0.5], [0.2])
    assert not spec.is_counterexample([0.5], [0.7])
    assert not spec.is_counterexample([0.5], [5.0])  # d1 needs y >= 5 and x >= y


def test_is_counterexample_on_hand_made_points():
    text = (
        HDR2
        + "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))\n"
        + "            (and (<= X_0 5) (>= X_0 4) (<= X_1 1) (>= X_1 0))))\n"
        + "(assert (or (and (>= Y_0 3) (<= Y_1 0)) (and (<= Y_0 Y_1) (<= Y_1 -10))))"
    )
    spec = parse_vnnlib_text(text)
    assert spec.is_counterexample(np.array([0.5, 0.5]), np.array([3.0, -1.0]))
    assert spec.is_counterexample(np.array([[4.5, 1.0]]), np.array([[-20.0, -11.0]]))  # any shape, flattened
    assert not spec.is_counterexample(np.array([0.5, 0.5]), np.array([2.9, -1.0]))
    assert not spec.is_counterexample(np.array([2.0, 0.5]), np.array([3.0, -1.0]))  # between the boxes
    assert not spec.is_counterexample(np.array([1.0 + 1e-9, 0.5]), np.array([3.0, -1.0]))
    assert spec.is_counterexample(np.array([1.0 + 1e-9, 0.5]), np.array([3.0, -1.0]), atol=1e-6)
    assert spec.is_counterexample(np.array([0.5, 0.5]), np.array([3.0 - 1e-9, 0.0]), atol=1e-6)
    assert not spec.is_counterexample(np.array([np.nan, 0.5]), np.array([3.0, -1.0]))
    with pytest.raises(ShapeError):
        spec.is_counterexample(np.zeros(3), np.zeros(2))


def test_real_test_files_toy_semantics():
    d = _data() / "test"
    spec = parse_vnnlib(d / "test_small.vnnlib", n_inputs=1, n_outputs=1)
    (p,) = spec.properties
    assert p.box.lo.tolist() == [-1] and p.box.hi.tolist() == [1]
    assert p.disjuncts[0].A.tolist() == [[-1]] and p.disjuncts[0].b.tolist() == [-100]
    assert spec.is_counterexample([0.0], [100.0]) and not spec.is_counterexample([0.0], [99.0])
    nano = parse_vnnlib(d / "test_nano.vnnlib")
    assert nano.properties[0].disjuncts[0].A.tolist() == [[1]] and nano.properties[0].disjuncts[
        0
    ].b.tolist() == [-1]


# ------------------------------------------------------------------------------------------ errors


def test_error_undeclared_variable_line():
    e = _err(HDR2 + BOX2 + "\n(assert (<= Y_2 1))")
    assert e.line == 10 and "undeclared variable Y_2" in str(e) and e.token == "Y_2"


def test_error_use_before_declaration():
    e = _err("(assert (<= X_0 1))\n(declare-const X_0 Real)")
    assert e.line == 1 and "undeclared" in str(e)


@pytest.mark.parametrize("op", ["<", ">", "=", "not", "=>", "foo"])
def test_error_bad_operator_line(op):
    e = _err(HDR2 + BOX2 + f"(assert (or\n  (<= Y_0 1)\n  ({op} Y_1 1)))")
    assert e.line == 11 and e.token == op


def test_error_unbalanced_parentheses_lines():
    e = _err(HDR2 + BOX2 + "(assert (or\n  (<= Y_0 1)\n  (<= Y_1 1))\n")  # never closed
    assert e.line == 9 and "unbalanced" in str(e)
    e = _err(HDR2 + BOX2 + "(assert (<= Y_0 1)))\n")  # one ')' too many
    assert e.line == 9 and "unbalanced" in str(e) and e.token == ")"
    e = _err(HDR2 + "(assert (<= X_0 1)\n(assert (>= X_0 0))")  # missing ')' mid-file
    assert e.line == 6 and "line 5" in str(e)


def test_error_missing_bound_names_variable_at_its_declaration():
    e = _err(HDR2 + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 2))\n(assert (<= Y_0 0))")
    assert e.line == 2 and "X_1" in str(e) and "lower" in str(e)


def test_error_empty_box_line():
    e = _err(HDR2 + BOX2 + "; tighter\n(assert (>= X_1 2.5))\n(assert (<= Y_0 1))")
    assert e.line == 10 and "empty input box for X_1" in str(e)


def test_error_count_mismatch_with_model():
    text = HDR2 + BOX2 + "(assert (<= Y_0 1))"
    e = _err(text, n_inputs=5)
    assert "spec declares 2 inputs X_0..X_1 but the model has 5 inputs" in str(e) and e.line == 2
    e = _err(text, n_inputs=1)
    assert e.line == 2 and e.token == "X_1"
    e = _err(text, n_inputs=2, n_outputs=3)
    assert "2 outputs" in str(e) and e.line == 4
    gappy = (
        "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n(assert (<= Y_0 1))"
    )
    e = _err(gappy)
    assert e.line == 2 and "X_1" in str(e)


def test_error_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.vnnlib"
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(missing)
    assert str(missing) in str(info.value) and "not found" in str(info.value)
    with pytest.raises(VnnlibError, match="not found"):
        parse_vnnlib(str(tmp_path / "nope.vnnlib.gz"))


@pytest.mark.parametrize(
    ("text", "line", "pattern"),
    [
        ("", 1, "empty file"),
        ("; only a comment\n\n", 1, "empty file"),
        (HDR2, 4, "no assert"),
        (HDR2 + "(assert (<= X_0 X_1))", 5, "not a box bound"),
        (HDR2 + "\n(assert (<= X_0 (- 1)))", 6, "nested terms"),
        (HDR2 + "(assert (<= X_0 1 2))", 5, "two arguments"),
        (HDR2 + "(assert (and))", 5, "at least one argument"),
        (HDR2 + "(check-sat)", 5, "unknown command"),
        (HDR2 + "(declare-const Z_0 Real)", 5, "variable names"),
        (HDR2 + "(declare-const X_2 Int)", 5, "sort"),
        (HDR2 + "(declare-const X_0 Real)", 5, "declared twice"),
        (HDR2 + "(assert (<= X_0 1e999))", 5, "overflows"),
        (HDR2 + "(assert (<= X_0 nan))", 5, "unknown symbol"),
        (HDR2 + "(assert (<= X_0 0x1F))", 5, "unknown symbol"),
        (HDR2 + "X_0", 5, r"expected '\('"),
        ("(declare-const Y_0 Real)\n(assert (<= Y_0 1))", 2, "no input variable"),
        (HDR2 + "(assert (<= X_\u0663 1))", 5, "unknown symbol"),  # unicode digit is not an index
    ],
)
def test_error_cases_with_lines(text, line, pattern):
    e = _err(text)
    assert e.line == line, str(e)
    assert re.search(pattern, str(e)), str(e)


def test_dnf_blowup_is_capped():
    n = 20  # 2**20 > MAX_DNF_TERMS
    assert 2**n > MAX_DNF_TERMS
    ors = " ".join(f"(or (<= Y_0 {k}) (<= Y_1 {k}))" for k in range(n))
    e = _err(HDR2 + BOX2 + f"(assert (and {ors}))")
    assert e.line == 9 and "DNF" in str(e)
    # same blow-up spread over top-level asserts
    e = _err(HDR2 + BOX2 + "\n".join(f"(assert (or (<= Y_0 {k}) (<= Y_1 {k})))" for k in range(n)))
    assert "DNF expansion too large" in str(e) and e.line == 9 + 16  # the 17th assert passes 2**16 < limit


def test_deep_nesting_needs_no_recursion():
    depth = 50_000
    text = HDR2 + BOX2 + "(assert " + "(and " * depth + "(<= Y_0 1)" + ")" * depth + ")"
    (dj,) = parse_vnnlib_text(text).properties[0].disjuncts
    assert dj.A.tolist() == [[1, 0]]
    e = _err(HDR2 + BOX2 + "(assert " + "(or " * depth + "(<= Y_0 1)")
    assert e.line == 9


# ------------------------------------------------------------------------------------------ fuzzing


@functools.cache
def _fuzz_sources() -> tuple[str, ...]:
    d = _data()
    paths = sorted((d / "test").glob("*.vnnlib"))
    paths += [d / "acasxu" / "vnnlib" / f"prop_{k}.vnnlib" for k in range(1, 5)]
    paths += [d / "mnist_fc_2022" / "vnnlib" / "prop_0_0.03.vnnlib"]
    return tuple(p.read_text() for p in paths if p.is_file())


_TOKENS = [
    "(",
    ")",
    "<=",
    ">=",
    "<",
    "=",
    "and",
    "or",
    "not",
    "assert",
    "declare-const",
    "Real",
    "X_0",
    "Y_0",
    "X_4",
    "Y_9",
    "X_99999",
    "1e400",
    "-0.0",
    "+2",
    "5.8e-05",
    "nan",
    "inf",
    ";",
    "",
    "\n",
    "((",
    "))",
]
_CHARS = st.one_of(st.sampled_from(list("()<=>;-+.eE_XY0123456789 \n\t\r")), st.characters())
_TOK_RE = re.compile(r"[()]|[^\s()]+")


@st.composite
def _mutation(draw, text: str) -> str:
    kind = draw(
        st.sampled_from(["delete", "insert", "replace_tok", "dup_line", "del_line", "swap_paren", "unicode"])
    )
    n = len(text)
    pos = draw(st.integers(0, max(n - 1, 0)))
    if kind == "delete":
        return text[:pos] + text[pos + draw(st.integers(1, 8)) :]
    if kind == "insert":
        return text[:pos] + draw(st.text(_CHARS, min_size=1, max_size=6)) + text[pos:]
    if kind == "unicode":
        junk = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=4))
        return text[:pos] + junk + text[pos:]
    if kind in ("replace_tok", "swap_paren"):
        spans = [m.span() for m in _TOK_RE.finditer(text)]
        if kind == "swap_paren":
            spans = [s for s in spans if text[s[0]] in "()"]
        if not spans:
            return text
        a, b = spans[draw(st.integers(0, len(spans) - 1))]
        new = draw(st.sampled_from(_TOKENS)) if kind == "replace_tok" else {"(": ")", ")": "("}[text[a]]
        return text[:a] + new + text[b:]
    lines = text.split("\n")
    k = draw(st.integers(0, len(lines) - 1))
    if kind == "dup_line":
        lines.insert(k, lines[k])
    else:
        del lines[k]
    return "\n".join(lines)


def _parse_or_vnnlib_error(text: str) -> None:
    try:
        spec = parse_vnnlib_text(text, path="fuzz.vnnlib")
    except VnnlibError as e:
        assert e.line is not None and 1 <= e.line <= len(text.splitlines()) + 1, str(e)
        assert e.path == "fuzz.vnnlib"
        return
    _check_well_formed(spec)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
def test_fuzz_mutated_real_files_raise_only_vnnlib_error(data):
    text = data.draw(st.sampled_from(_fuzz_sources()), label="source")
    for _ in range(data.draw(st.integers(1, 4), label="n_mutations")):
        text = data.draw(_mutation(text))
    _parse_or_vnnlib_error(text)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(), st.text(_CHARS, max_size=200)))
def test_fuzz_arbitrary_text(text):
    _parse_or_vnnlib_error(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_file(tmp_path, data):
    f = tmp_path / "random.vnnlib"
    f.write_bytes(data)
    try:
        spec = parse_vnnlib(f)
    except VnnlibError as e:
        assert e.line is not None
        return
    _check_well_formed(spec)


# ------------------------------------------------------------------------------------------ round trip

_FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def _spec_case(draw):
    nx, ny = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    props = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = [sorted(draw(st.tuples(_FLOATS, _FLOATS))) for _ in range(nx)]
        lo, hi = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        disjuncts = []
        for _ in range(draw(st.integers(1, 3))):
            atoms = []
            for _ in range(draw(st.integers(1, 3))):
                op = draw(st.sampled_from(["<=", ">="]))
                j = draw(st.integers(0, ny - 1))
                if ny > 1 and draw(st.booleans()):
                    k = (j + draw(st.integers(1, ny - 1))) % ny  # another output
                    atoms.append((op, f"Y_{j}", f"Y_{k}"))
                else:
                    c = repr(draw(_FLOATS))
                    atoms.append((op, f"Y_{j}", c) if draw(st.booleans()) else (op, c, f"Y_{j}"))
            disjuncts.append(atoms)
        box_forms = [(draw(st.booleans()), draw(st.booleans())) for _ in range(nx)]
        props.append((lo, hi, box_forms, disjuncts))
    sep = draw(st.sampled_from([" ", "\n", "\n  ; comment (with parens\n  "]))
    flat = len(props) == 1 and draw(st.booleans())
    return nx, ny, props, sep, flat


def _expected_row(atom: tuple[str, str, str], ny: int) -> tuple[np.ndarray, float]:
    """Hand-derived semantics: (<= L R) means L - R <= 0, (>= L R) means R - L <= 0."""
    op, left, right = atom
    row, b = np.zeros(ny), 0.0
    for term, sign in ((left, 1.0), (right, -1.0)):
        s = sign if op == "<=" else -sign
        if term.startswith("Y_"):
            row[int(term[2:])] += s
        else:
            b -= s * float(term)
    return row, b


def _render(nx: int, ny: int, props, sep: str, flat: bool) -> str:
    decl = [f"(declare-const X_{i} Real)" for i in range(nx)] + [
        f"(declare-const Y_{j} Real)" for j in range(ny)
    ]

    def box_atoms(lo, hi, forms):
        out = []
        for i, (up_first, lo_first) in enumerate(forms):
            up = f"(<= X_{i} {float(hi[i])!r})" if up_first else f"(>= {float(hi[i])!r} X_{i})"
            low = f"(>= X_{i} {float(lo[i])!r})" if lo_first else f"(<= {float(lo[i])!r} X_{i})"
            out += [up, low]
        return out

    def out_formula(disjuncts):
        ands = ["(and " + " ".join(f"({op} {a} {b})" for op, a, b in atoms) + ")" for atoms in disjuncts]
        return "(or" + sep + sep.join(ands) + ")"

    if flat:
        lo, hi, forms, disjuncts = props[0]
        body = [f"(assert {a})" for a in box_atoms(lo, hi, forms)] + [f"(assert {out_formula(disjuncts)})"]
    else:
        parts = [
            "(and " + " ".join(box_atoms(lo, hi, forms)) + sep + out_formula(dj) + ")"
            for lo, hi, forms, dj in props
        ]
        body = ["(assert (or" + sep + sep.join(parts) + "))"]
    return "\n".join(decl) + "\n" + sep.join(body) + "\n"


@settings(max_examples=150, deadline=None)
@given(_spec_case())
def test_round_trip_render_parse(case):
    nx, ny, props, sep, flat = case
    spec = parse_vnnlib_text(_render(nx, ny, props, sep, flat), n_inputs=nx, n_outputs=ny)
    # expected: properties grouped by identical box, disjuncts in order of appearance
    expected: dict[tuple, list] = {}
    for lo, hi, _, disjuncts in props:
        key = (tuple(lo + 0.0), tuple(hi + 0.0))
        for atoms in disjuncts:
            rows = [_expected_row(a, ny) for a in atoms]
            expected.setdefault(key, []).append(
                (np.array([r for r, _ in rows]), np.array([b for _, b in rows]))
            )
    assert len(spec.properties) == len(expected)
    for prop, (key, djs) in zip(spec.properties, expected.items(), strict=True):
        np.testing.assert_array_equal(prop.box.lo, key[0])
        np.testing.assert_array_equal(prop.box.hi, key[1])
        assert len(prop.disjuncts) == len(djs)
        for d, (A, b) in zip(prop.disjuncts, djs, strict=True):
            np.testing.assert_array_equal(d.A, A)
            np.testing.assert_array_equal(d.b, b)
            assert d.mixed is None
        assert prop.box.contains(prop.box.lo) and prop.box.contains(prop.box.hi)


# ------------------------------------------------------------------------------------------ DNF oracle

_ORACLE_TERMS = ["X_0", "Y_0", "Y_1", "0", "1", "1.5", "-1"]
_ORACLE_ATOM = st.tuples(
    st.just("atom"), st.sampled_from(["<=", ">="]), *[st.sampled_from(_ORACLE_TERMS)] * 2
)
_ORACLE_FORMULA = st.recursive(
    _ORACLE_ATOM,
    lambda sub: st.tuples(st.sampled_from(["and", "or"]), st.lists(sub, min_size=1, max_size=3)),
    max_leaves=12,
)


def _render_formula(f) -> str:
    if f[0] == "atom":
        return f"({f[1]} {f[2]} {f[3]})"
    return f"({f[0]} " + " ".join(_render_formula(c) for c in f[1]) + ")"


def _evaluate(f, env: dict[str, float]) -> bool:
    if f[0] == "atom":
        a, b = (env[t] if t in env else float(t) for t in f[2:])
        return a <= b if f[1] == "<=" else a >= b
    results = [_evaluate(c, env) for c in f[1]]
    return all(results) if f[0] == "and" else any(results)


_X_VALUES = [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
_Y_VALUES = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_ORACLE_FORMULA, min_size=1, max_size=3),
    st.lists(
        st.tuples(st.sampled_from(_X_VALUES), st.sampled_from(_Y_VALUES), st.sampled_from(_Y_VALUES)),
        min_size=24,
        max_size=24,
    ),
)
def test_dnf_matches_direct_evaluation(formulas, points):
    """is_counterexample of the parsed DNF agrees with evaluating the and/or formulas directly."""
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    text += "(assert (>= X_0 0))\n(assert (<= X_0 2))\n" + "\n".join(
        f"(assert {_render_formula(f)})" for f in formulas
    )
    try:
        spec = parse_vnnlib_text(text)
    except VnnlibError as e:  # a DNF term whose X_0 bounds cross is an error by design
        assert "empty input box for X_0" in str(e)
        return
    _check_well_formed(spec)
    for x0, y0, y1 in points:
        env = {"X_0": x0, "Y_0": y0, "Y_1": y1}
        expected = 0.0 <= x0 <= 2.0 and all(_evaluate(f, env) for f in formulas)
        assert spec.is_counterexample(np.array([x0]), np.array([y0, y1])) == expected, (text, env)
