"""``clarke bounds`` and ``clarke --help``: JSON output, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from verify.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "mlp_8x32x32x3.onnx")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_bounds_json_contains_sampled_outputs(capsys, method):
    code, out, _ = _run(capsys, "bounds", MODEL, "--center", str(EXAMPLES / "x0.npy"), "--eps", "0.02",
                        "--method", method, "--json")
    assert code == 0
    res = json.loads(out)
    assert res["method"] == method and res["seconds"] > 0
    lower, upper = np.array(res["lower"]), np.array(res["upper"])
    assert lower.shape == upper.shape == (3,)
    from verify import load_onnx
    graph = load_onnx(MODEL)
    x0 = np.load(EXAMPLES / "x0.npy")
    xs = x0 + np.random.default_rng(0).uniform(-0.02, 0.02, (500, 8))
    ys = graph(torch.tensor(xs, dtype=torch.float32)).reshape(500, -1).detach().numpy()
    assert (ys >= lower - 1e-5).all() and (ys <= upper + 1e-5).all()


def test_bounds_from_vnnlib_box_and_spec_matrix(capsys, tmp_path):
    C = tmp_path / "C.npy"
    np.save(C, np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))
    code, out, _ = _run(capsys, "bounds", MODEL, str(EXAMPLES / "robustness.vnnlib"), "--method", "crown",
                        "--C", str(C), "--json")
    assert code == 0
    res = json.loads(out)
    assert len(res["lower"]) == 2 and min(res["lower"]) > 0  # the example point is robust


def _one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_model_file(capsys, tmp_path):
    _one_line_error(*_run(capsys, "bounds", str(tmp_path / "nope.onnx"), "--center", str(EXAMPLES / "x0.npy"),
                          "--eps", "0.1"), "nope.onnx")


def test_malformed_onnx(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all \x00\x01")
    _one_line_error(*_run(capsys, "bounds", str(bad), "--center", str(EXAMPLES / "x0.npy"), "--eps", "0.1"),
                    "bad.onnx")


def test_unknown_operator(capsys, tmp_path):
    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="hardmax_node")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    _one_line_error(*_run(capsys, "bounds", str(path), "--center", str(EXAMPLES / "x0.npy"), "--eps", "0.1"),
                    "Hardmax", "hardmax_node")


def test_shape_mismatch_between_center_and_model(capsys, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(5))
    _one_line_error(*_run(capsys, "bounds", MODEL, "--center", str(x), "--eps", "0.1"), "5 values", "8")


def test_vnnlib_dimension_mismatch(capsys, tmp_path):
    spec = tmp_path / "s.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
                    "(assert (>= X_0 0))\n(assert (>= Y_0 0))\n")
    code, out, err = _run(capsys, "bounds", MODEL, str(spec))
    _one_line_error(code, out, err, "s.vnnlib")


def test_console_script_help_lists_every_option():
    out = subprocess.run([sys.executable, "-m", "verify.cli.main", "bounds", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for opt in ("--center", "--eps", "--box", "--method", "--C", "--iterations", "--optimize-intermediate",
                "--json", "--clip", "--precision", "--lr"):
        assert opt in out
    top = subprocess.run([sys.executable, "-m", "verify.cli.main", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "bounds" in top
    ver = subprocess.run([sys.executable, "-m", "verify.cli.main", "--version"], capture_output=True, text=True)
    assert ver.stdout.startswith("clarke ")
