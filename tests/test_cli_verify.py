"""``clarke verify`` end to end: status line, result file, JSON, bad input, --instances, timeouts, and the
VNN-COMP scripts ``verify/vnncomp/{prepare,run}_instance.sh``.

Most cases call the CLI's ``main`` in-process (fast); a few run the installed entry point in a subprocess
where the process boundary matters (exit status, timing including start-up, the shell scripts). The
VNN-COMP data is third-party and read from ``../shared/data/vnncomp``; tests needing it skip without it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verify.cli.main import main
from verify.counterexample import parse_result, validate_counterexample
from verify.vnnlib import parse_vnnlib

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MODEL = EXAMPLES / "mlp_8x32x32x3.onnx"  # 8 inputs, 3 outputs
ROBUSTNESS = EXAMPLES / "robustness.vnnlib"
SCRIPTS = REPO / "verify" / "vnncomp"
VNNCOMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"
BIN = Path(sys.executable).parent
CLARKE = shutil.which("clarke", path=str(BIN)) or shutil.which("clarke")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``clarke verify --instances`` sets torch to one thread (meant for its worker processes); in-process
    runs here must not leave that setting to the tests that follow."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def bench_dir(name: str) -> Path:
    """One VNN-COMP benchmark folder; skips the test when the third-party data is absent."""
    d = VNNCOMP / name
    if not (d / "instances.csv").is_file():
        pytest.skip(f"VNN-COMP benchmark '{name}' not found at {d} (third-party data, read from ../shared/data)")
    return d


def clarke_cmd() -> list[str]:
    """The installed ``clarke`` entry point, or the module form with this interpreter."""
    return [CLARKE] if CLARKE else [sys.executable, "-m", "verify.cli.main"]


def script_env() -> dict[str, str]:
    """Environment for the shell scripts: this interpreter's ``bin`` first on PATH, so ``clarke`` is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CLARKE", None)
    if not CLARKE:
        env["CLARKE"] = f"{sys.executable} -m verify.cli.main"
        env["PYTHONPATH"] = str(REPO)
    return env


def run_main(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``clarke ARGV`` in-process: ``(exit status, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def box_vnnlib(lo: list[float], hi: list[float], n_out: int, extra: str = "") -> str:
    """A VNNLIB property: the input box ``[lo, hi]`` and, unless ``extra`` replaces it, ``Y_0 <= -1e6``."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        lines += [f"(assert (>= X_{i} {a}))", f"(assert (<= X_{i} {b}))"]
    lines.append(extra or "(assert (<= Y_0 -1000000.0))")
    return "\n".join(lines) + "\n"


def no_leftovers(folder: Path, name: str) -> None:
    """No temporary file of an atomic write of ``name`` is left in ``folder``."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]


# ------------------------------------------------------------------------------------------ answers


def test_sat_status_line_result_file_and_json(capsys, tmp_path):
    d = bench_dir("test")
    onnx_path, vnnlib_path = d / "test_sat.onnx", d / "test_prop.vnnlib"
    result = tmp_path / "result.txt"
    code, out, err = run_main(capsys, "verify", onnx_path, vnnlib_path, "--timeout", "30",
                              "--result-file", result, "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "sat" and len(lines) == 2
    obj = json.loads(lines[1])
    assert obj["status"] == "sat" and obj["seconds"] > 0 and obj["stage"]
    cex = obj["counterexample"]
    assert cex["validated"] is True and len(cex["x"]) == 5 and len(cex["y"]) == 5
    status, x, y = parse_result(result.read_text())
    assert status == "sat" and x is not None and y is not None
    np.testing.assert_array_equal(x, cex["x"])
    np.testing.assert_array_equal(y, cex["y"])
    v = validate_counterexample(onnx_path, parse_vnnlib(vnnlib_path), x, y)
    assert v.ok, v.message
    no_leftovers(tmp_path, result.name)


def test_unsat_result_file(capsys, tmp_path):
    d = bench_dir("test")
    result = tmp_path / "result.txt"
    result.write_text("stale\n")  # replaced, not appended to
    code, out, _ = run_main(capsys, "verify", d / "test_unsat.onnx", d / "test_prop.vnnlib", "--timeout", "30",
                            "--result-file", result)
    assert code == 0
    assert out == "unsat\n"
    assert result.read_text() == "unsat\n"
    assert parse_result(result.read_text()) == ("unsat", None, None)
    no_leftovers(tmp_path, result.name)


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]])
def test_example_robustness_property_is_unsat(capsys, workers):
    code, out, _ = run_main(capsys, "verify", MODEL, ROBUSTNESS, "--timeout", "30", "--json", *workers)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "unsat"
    obj = json.loads(lines[1])
    assert obj["status"] == "unsat" and "counterexample" not in obj


@pytest.mark.parametrize("bench,onnx_name,vnnlib_name,expected", [
    ("acasxu", "onnx/ACASXU_run2a_2_3_batch_2000.onnx", "vnnlib/prop_2.vnnlib", "sat"),
    ("acasxu", "onnx/ACASXU_run2a_2_9_batch_2000.onnx", "vnnlib/prop_4.vnnlib", "unsat"),
    ("mnist_fc_2022", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_12_0.03.vnnlib", "sat"),
    ("mnist_fc_2022", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_0_0.03.vnnlib", "unsat"),
])
def test_real_instances_through_the_cli(capsys, tmp_path, bench, onnx_name, vnnlib_name, expected):
    d = bench_dir(bench)
    result = tmp_path / "result.txt"
    code, out, _ = run_main(capsys, "verify", d / onnx_name, d / vnnlib_name, "--timeout", "30",
                            "--result-file", result)
    assert code == 0
    assert out.splitlines()[0] == expected
    status, x, y = parse_result(result.read_text())
    assert status == expected
    if expected == "sat":
        v = validate_counterexample(d / onnx_name, parse_vnnlib(d / vnnlib_name), x, y)
        assert v.ok, v.message


# ------------------------------------------------------------------------------------------ bad input


def unsupported_op_model(path: Path) -> Path:
    """A 1x8 -> 1x8 model whose only node (Hardmax) has no sound bound rule in Clarke."""
    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="hardmax_node")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def nan_model(path: Path) -> Path:
    """A 1x2 -> 1x2 Gemm whose weight matrix holds a NaN."""
    w = np.array([[1.0, np.nan], [0.5, -1.0]], dtype=np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def bad_case(tmp_path: Path, case: str) -> tuple[Path, Path, tuple[str, ...]]:
    """``(model, spec, words the error line must contain)`` for one kind of bad input."""
    good_spec = tmp_path / "good.vnnlib"
    good_spec.write_text(box_vnnlib([0.0] * 8, [0.1] * 8, 3))
    if case == "missing-onnx":
        return tmp_path / "missing.onnx", good_spec, ("missing.onnx",)
    if case == "missing-vnnlib":
        return MODEL, tmp_path / "missing.vnnlib", ("missing.vnnlib",)
    if case == "malformed-onnx":
        bad = tmp_path / "garbage.onnx"
        bad.write_bytes(b"this is not a protobuf \x00\x01\x02\xff")
        return bad, good_spec, ("garbage.onnx",)
    if case == "unsupported-op":
        spec = tmp_path / "hardmax.vnnlib"
        spec.write_text(box_vnnlib([0.0] * 8, [0.1] * 8, 8))
        return unsupported_op_model(tmp_path / "hardmax.onnx"), spec, ("Hardmax",)
    if case == "input-dimension-mismatch":
        spec = tmp_path / "seven.vnnlib"
        spec.write_text(box_vnnlib([0.0] * 7, [0.1] * 7, 3))
        return MODEL, spec, ("seven.vnnlib",)
    if case == "output-dimension-mismatch":
        spec = tmp_path / "four_out.vnnlib"
        spec.write_text(box_vnnlib([0.0] * 8, [0.1] * 8, 4))
        return MODEL, spec, ("four_out.vnnlib",)
    if case == "empty-input-box":
        spec = tmp_path / "empty.vnnlib"
        lo, hi = [0.0] * 8, [0.1] * 8
        lo[3], hi[3] = 0.5, 0.2
        spec.write_text(box_vnnlib(lo, hi, 3))
        return MODEL, spec, ("empty.vnnlib", "X_3")
    if case == "nan-weights":
        spec = tmp_path / "nan.vnnlib"
        spec.write_text(box_vnnlib([0.0, 0.0], [1.0, 1.0], 2))
        return nan_model(tmp_path / "nan.onnx"), spec, ("nan.onnx", "W")
    if case == "malformed-vnnlib":
        spec = tmp_path / "broken.vnnlib"
        spec.write_text(box_vnnlib([0.0] * 8, [0.1] * 8, 3, extra="(assert (<= Y_0 (frobnicate 1 2)"))
        return MODEL, spec, ("broken.vnnlib",)
    raise AssertionError(case)


BAD_CASES = ["missing-onnx", "missing-vnnlib", "malformed-onnx", "unsupported-op", "input-dimension-mismatch",
             "output-dimension-mismatch", "empty-input-box", "nan-weights", "malformed-vnnlib"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_error_without_result_file(capsys, tmp_path, case):
    model, spec, needles = bad_case(tmp_path, case)
    result = tmp_path / "out" / "result.txt"
    result.parent.mkdir()
    code, out, err = run_main(capsys, "verify", model, spec, "--timeout", "10", "--result-file", result, "--json")
    assert code != 0
    assert out.splitlines() == ["error"]  # the status line, and no JSON after it
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clarke: error: ")
    for word in needles:
        assert word in lines[0], lines[0]
    assert not result.exists()
    assert list(result.parent.iterdir()) == []  # no temporary file either


# ------------------------------------------------------------------------------------------ --instances


def instances_copy(tmp_path: Path) -> Path:
    """An instances.csv (and expected.csv) in ``tmp_path`` naming the 5 ``test`` instances by relative paths."""
    d = bench_dir("test")
    work = tmp_path / "bench"
    work.mkdir()
    rel = {}
    with (d / "instances.csv").open() as f:
        rows = [r for r in csv.reader(f) if r]
    for o, v, _ in rows:
        rel[o], rel[v] = os.path.relpath(d / o, work), os.path.relpath(d / v, work)
    with (work / "instances.csv").open("w", newline="") as f:
        csv.writer(f).writerows([[rel[o], rel[v], t] for o, v, t in rows])
    with (d / "expected.csv").open() as f:
        reader = csv.DictReader(f)
        exp = [dict(r, onnx=rel[r["onnx"]], vnnlib=rel[r["vnnlib"]]) for r in reader]
        fields = reader.fieldnames
    with (work / "expected.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(exp)
    return work / "instances.csv"


def test_instances_report_and_json_summary(capsys, tmp_path):
    csv_path = instances_copy(tmp_path)
    report = tmp_path / "report.csv"
    code, out, err = run_main(capsys, "verify", "--instances", csv_path, "--report", report, "--json",
                              "--timeout-scale", "0.5")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["instances"] == 5 and summary["solved"] == 5
    assert summary["sat"] == 1 and summary["unsat"] == 4 and summary["timeout"] == summary["error"] == 0
    assert summary["known"] == 5 and summary["correct"] == 5 and summary["wrong"] == 0
    assert summary["total_seconds"] >= summary["median_seconds"] >= 0
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for r in rows:
        assert r["status"] == r["expected"], r
        assert (r["correct"], r["wrong"]) == ("1", "0")
        assert r["counterexample_validated"] == ("yes" if r["status"] == "sat" else "")
        assert float(r["seconds"]) >= 0
    assert [Path(r["onnx"]).name for r in rows] == ["test_nano.onnx", "test_tiny.onnx", "test_small.onnx",
                                                    "test_sat.onnx", "test_unsat.onnx"]


def test_instances_limit_and_table(capsys, tmp_path):
    csv_path = instances_copy(tmp_path)
    code, out, _ = run_main(capsys, "verify", "--instances", csv_path, "--limit", "2")
    assert code == 0
    assert "instances" in out and "wrong" in out  # the rich summary table


def test_instances_parallel_jobs_real_process(tmp_path):
    csv_path = instances_copy(tmp_path)
    report = tmp_path / "report.csv"
    p = subprocess.run([*clarke_cmd(), "verify", "--instances", str(csv_path), "--jobs", "2", "--json",
                        "--report", str(report)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["correct"] == 5 and summary["wrong"] == 0
    with report.open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["unsat", "unsat", "unsat", "sat", "unsat"]


def test_missing_instances_file(capsys, tmp_path):
    code, _, err = run_main(capsys, "verify", "--instances", tmp_path / "none.csv")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "none.csv" in err


# ------------------------------------------------------------------------------------------ timeout


TIMED_RUN = """
import json, sys, time
t0 = time.perf_counter()
from verify.cli.main import build_parser
args = build_parser().parse_args(sys.argv[1:])
t1 = time.perf_counter()
code = args.func(args)
t2 = time.perf_counter()
sys.stderr.write(json.dumps({"startup": t1 - t0, "run": t2 - t1}) + "\\n")
sys.exit(code)
"""


def test_timeout_answer_within_the_limit_real_process(tmp_path):
    """mnist 256x4 / prop_9 eps 0.05 is not settled in 3 s: the answer is ``timeout``; the verification (JSON
    ``seconds``, and the whole subcommand including the result file) takes at most 3 s + 5 %, and the
    process that plus its start-up (imports and argument parsing, measured in the same process)."""
    d = bench_dir("mnist_fc_2022")
    result = tmp_path / "r.txt"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", TIMED_RUN, "verify", str(d / "onnx/mnist-net_256x4.onnx"),
                        str(d / "vnnlib/prop_9_0.05.vnnlib"), "--timeout", "3", "--json", "--result-file", str(result)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "timeout"
    assert json.loads(lines[1])["seconds"] <= 3 * 1.05
    assert result.read_text() == "timeout\n"
    times = json.loads(p.stderr.strip().splitlines()[-1])
    assert times["run"] <= 3 * 1.05, times
    assert wall <= 3 * 1.05 + times["startup"] + 1.5, (wall, times)  # + interpreter start and exit


# ------------------------------------------------------------------------------------------ VNN-COMP scripts


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``bash verify/vnncomp/NAME ARGS`` with our ``clarke`` first on PATH."""
    return subprocess.run(["bash", str(SCRIPTS / name), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=120, env=script_env())


def test_prepare_instance_checks_version_and_files(tmp_path):
    d = bench_dir("test")
    ok = run_script("prepare_instance.sh", "v1", "test", d / "test_sat.onnx", d / "test_prop.vnnlib")
    assert ok.returncode == 0, ok.stderr
    bad_version = run_script("prepare_instance.sh", "v2", "test", d / "test_sat.onnx", d / "test_prop.vnnlib")
    assert bad_version.returncode != 0 and "v1" in bad_version.stderr
    missing = run_script("prepare_instance.sh", "v1", "test", tmp_path / "none.onnx", d / "test_prop.vnnlib")
    assert missing.returncode != 0 and "none.onnx" in missing.stderr
    usage = run_script("prepare_instance.sh", "v1", "test")
    assert usage.returncode != 0 and "usage" in usage.stderr


def test_run_instance_script_unsat(tmp_path):
    d = bench_dir("test")
    result = tmp_path / "result.txt"
    p = run_script("run_instance.sh", "v1", "test", d / "test_unsat.onnx", d / "test_prop.vnnlib", result, "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "unsat"  # clarke's status line comes through
    assert parse_result(result.read_text()) == ("unsat", None, None)


def test_run_instance_script_sat_gzipped_inputs(tmp_path):
    """test_sat with both files gzipped (as some VNN-COMP benchmarks ship them): read directly, solved."""
    d = bench_dir("test")
    for name in ("test_sat.onnx", "test_prop.vnnlib"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((d / name).read_bytes()))
    result = tmp_path / "result.txt"
    p = run_script("run_instance.sh", "v1", "test", tmp_path / "test_sat.onnx.gz", tmp_path / "test_prop.vnnlib.gz",
                   result, "60")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "sat"
    status, x, y = parse_result(result.read_text())
    assert status == "sat"
    v = validate_counterexample(d / "test_sat.onnx", parse_vnnlib(d / "test_prop.vnnlib"), x, y)
    assert v.ok, v.message


def test_run_instance_script_errors_leave_no_result_file(tmp_path):
    d = bench_dir("test")
    result = tmp_path / "result.txt"
    result.write_text("sat\n")  # a stale result of an earlier run must not survive a failed one
    model, spec, _ = bad_case(tmp_path, "empty-input-box")
    p = run_script("run_instance.sh", "v1", "test", model, spec, result, "10")
    assert p.returncode == 2  # clarke's exit status for bad input
    assert p.stdout.splitlines() == ["error"]
    assert "empty.vnnlib" in p.stderr
    assert not result.exists()
    p = run_script("run_instance.sh", "v1", "test", tmp_path / "none.onnx", d / "test_prop.vnnlib", result, "10")
    assert p.returncode != 0 and "none.onnx" in p.stderr
    p = run_script("run_instance.sh", "v0", "test", d / "test_sat.onnx", d / "test_prop.vnnlib", result, "10")
    assert p.returncode != 0 and "v1" in p.stderr
    p = run_script("run_instance.sh", "v1", "test", d / "test_sat.onnx", d / "test_prop.vnnlib", result, "soon")
    assert p.returncode != 0 and "TIMEOUT" in p.stderr
    assert not result.exists()


# ------------------------------------------------------------------------------------------ benchmarks/vnncomp.py


def test_vnncomp_benchmark_scoring_and_one_instance():
    """The benchmark driver: scoring rules, the published rows from expected.csv, one real Clarke run."""
    from benchmarks.vnncomp import judge, run_benchmark

    assert judge("sat", True, "sat") == (True, True, False)
    assert judge("sat", False, "unknown") == (False, False, True)  # an invalid counterexample is wrong
    assert judge("unsat", None, "sat") == (True, False, True)
    assert judge("unsat", None, "unknown") == (True, False, False)
    assert judge("timeout", None, "unsat") == (False, False, False)
    d = bench_dir("test")
    summary = run_benchmark(d, limit=1, tools=("clarke",))
    assert summary["instances"] == 1 and summary["marabou_over_clarke"] is None
    rows = {r["tool"]: r for r in summary["rows"]}
    assert rows["Clarke"]["solved"] == rows["Clarke"]["correct"] == 1 and rows["Clarke"]["wrong"] == 0
    assert rows["nnenum 2021"]["solved"] == 0  # no published nnenum answer for test_nano
    assert "alpha-beta-CROWN 2021" in rows
    json.dumps(summary)  # the --json object
