"""``clarke verify --device`` / ``verify_instance(device=)``: every tensor of the attack, the bounds and the split
searches follows the requested device. Checked on the CPU by making "meta" the default device (a tensor created
without ``device=`` lands there and fails to mix with the CPU ones): the answers must equal a plain run's. The
MIP parts run on the CPU by design (their inputs are moved there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import graph_checker
from tests.test_bab import _problem, _rows
from tests.test_pipeline import EXAMPLES, instance
from verify.attack import falsify
from verify.bab.common import Deadline
from verify.bab.input_split import input_split_bab
from verify.bab.relu_split import relu_split_bab
from verify.cli.main import main
from verify.pipeline import verify_instance
from verify.vnnlib import parse_vnnlib


def _same(a, b) -> None:
    assert a.status == b.status, (a.status, a.stage, a.message, b.status, b.stage, b.message)
    if a.status == "sat":
        np.testing.assert_array_equal(a.x, b.x)


CASES = [("test", 0), ("test", 3), ("test", 4), ("acasxu", 38), ("acasxu", 103), ("mnist_fc_2022", 6)]


@pytest.mark.parametrize("bench,row", CASES, ids=[f"{b}-{r}" for b, r in CASES])
def test_verify_instance_creates_every_tensor_on_the_requested_device(bench, row):
    onnx, vnnlib, _, expected = instance(bench, row)
    want = verify_instance(onnx, vnnlib, timeout=30, seed=1)
    with torch.device("meta"):
        got = verify_instance(onnx, vnnlib, timeout=30, seed=1, device="cpu")
    assert want.status == expected
    _same(want, got)


def test_example_instance_on_the_meta_default_device():
    onnx, vnnlib = EXAMPLES / "mlp_8x32x32x3.onnx", EXAMPLES / "robustness.vnnlib"
    with torch.device("meta"):
        assert verify_instance(onnx, vnnlib, timeout=30, device="cpu").status == "unsat"


@pytest.mark.parametrize("kind", ["input", "relu"])
def test_split_searches_follow_the_box_device(kind):
    sizes = [3, 10, 10, 2] if kind == "input" else [12, 12, 12, 3]
    bab = input_split_bab if kind == "input" else relu_split_bab
    graph, lo, hi, c, vmin = _problem(1, sizes)
    gap = 0.02 * (1 + abs(vmin))
    for threshold, expected in ((vmin + gap, "sat"), (vmin - gap, "unsat")):
        rows = _rows(c, threshold, sizes[0], sizes[-1], lo, hi)
        want = bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows))
        with torch.device("meta"):
            got = bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows))
        assert want.status == got.status == expected
        if expected == "sat":
            np.testing.assert_array_equal(want.x, got.x)


def test_attack_follows_the_graph_device():
    onnx, vnnlib, _, expected = instance("test", 3)
    from verify.frontends.onnx_frontend import load_onnx
    graph, spec = load_onnx(onnx), parse_vnnlib(vnnlib)
    want = falsify(graph, spec, time_budget_s=5, seed=2)
    with torch.device("meta"):
        got = falsify(graph, spec, time_budget_s=5, seed=2)
    assert expected == "sat" and want is not None and got is not None
    np.testing.assert_array_equal(want.x, got.x)


def test_verify_cli_device_option(capsys):
    onnx, vnnlib = EXAMPLES / "mlp_8x32x32x3.onnx", EXAMPLES / "robustness.vnnlib"
    assert main(["verify", str(onnx), str(vnnlib), "--device", "cpu", "--timeout", "20"]) == 0
    assert capsys.readouterr().out.strip() == "unsat"
    assert main(["verify", str(onnx), str(vnnlib), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "tpu" in err and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        assert main(["verify", str(onnx), str(vnnlib), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_relu_bab_phase_of_the_pipeline_follows_the_box_device():
    """The pipeline's ReLU phase (alpha-CROWN root with optimised intermediate slopes, then the split search) under
    the meta default device equals the plain run, on a 20-input net the root bound does not settle."""
    from verify.pipeline import _relu_bab
    graph, lo, hi, c, vmin = _problem(2, [20, 16, 16, 3])
    gap = 0.02 * (1 + abs(vmin))
    for threshold, expected in ((vmin + gap, "sat"), (vmin - gap, "unsat")):
        rows = _rows(c, threshold, 20, 3, lo, hi)
        want = _relu_bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows))
        with torch.device("meta"):
            got = _relu_bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows))
        assert want.status == got.status == expected  # (domain counts may differ: the phases are timed)
        if expected == "unsat":
            assert want.domains > 0  # the split search ran
