"""Fuzz of the ``clarke`` command line: option values drawn from NaN, inf, negative, zero, huge, garbage and sane
numbers, and files that are empty, directories or missing. Every case must end with exit status 0 and a result
on stdout, or exit status 2 and exactly one stderr line ``clarke: ...``; never a traceback, never a partial
output file.

Most cases run in-process (``verify.cli.main.main``); two run the installed entry point in a subprocess. Options
that start long work (iterations, timeouts, training sizes) draw their valid values from tiny ranges only: huge
values of them are only drawn where they are invalid."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from verify.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MODEL = str(EXAMPLES / "mlp_8x32x32x3.onnx")
X0 = str(EXAMPLES / "x0.npy")
SPEC = str(EXAMPLES / "robustness.vnnlib")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SPECIAL = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e308", "-1e308", "0", "-0", "-1",
           "1e-320", "", " ", "abc", "0x10", "1,2", "--", "1e30", "-1e30", "3.4e38", "99999999999999999999999"]
ANY_FLOAT = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True).map(repr))
ANY_INT = st.one_of(st.sampled_from(SPECIAL), st.integers(max_value=-1).map(str), st.integers(min_value=2**31).map(str),
                    st.floats(0.5, 3.5).map(repr))
BAD_FILES = ["empty.npy", "empty.onnx", "empty.vnnlib", "empty.csv", "junk.txt", "folder", "missing.npy", "nan.npy"]


def real(low: float, high: float, cap: float | None = None) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(valid, any) texts of a float option whose valid values are drawn from ``[low, high]`` only; with ``cap``
    (options that set how long the work runs, e.g. timeouts), "any" leaves out the numbers above it."""
    if cap is None:
        return st.floats(low, high).map(repr), ANY_FLOAT
    return st.floats(low, high).map(repr), ANY_FLOAT.filter(lambda text: not _above(text, cap))


def _above(text: str, cap: float) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > cap
    except ValueError:
        return False


def integer(low: int, high: int) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(valid, any) texts of an integer option whose valid values are drawn from ``[low, high]`` only."""
    return st.integers(low, high).map(str), st.one_of(ANY_INT, st.integers(max_value=low - 1).map(str))


def path(good: str) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(valid, bad) file arguments: the good file, or an empty / junk / NaN file, a folder, a missing path."""
    return st.just(good), st.sampled_from(BAD_FILES)


@st.composite
def options(draw, specs: dict) -> dict[str, str]:
    """One value per option: all valid, except (in most examples) one drawn from anything (NaN, inf, negative,
    huge, garbage, bad files). Corrupting one option at a time keeps most runs past the parser."""
    bad = draw(st.one_of(st.none(), st.sampled_from(list(specs))))  # about half the runs: all valid
    return {k: draw(anything if k == bad else valid) for k, (valid, anything) in specs.items()}


class Workdir:
    """A fresh folder per example, with a few bad files; checks that a failed run left nothing behind."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="clarke-fuzz-"))
        for name in ("empty.npy", "empty.onnx", "empty.vnnlib", "empty.csv"):
            (self.path / name).write_bytes(b"")
        (self.path / "junk.txt").write_text("not, numbers\n\x00\x01")
        (self.path / "folder").mkdir()
        np.save(self.path / "nan.npy", np.full(8, np.nan))
        self.before = self.listing()

    def listing(self) -> set[Path]:
        return set(self.path.rglob("*"))

    def file(self, name: str) -> str:
        """A good example file by role, else a (bad) file of this folder."""
        return {"model": MODEL, "center": X0, "spec": SPEC}.get(name, str(self.path / name))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check(capsys, argv: list[str], work: Workdir, writes: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run ``clarke ARGV`` in-process and check the contract; returns ``(status, stdout)``."""
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "Traceback" not in cap.out, (argv, cap.err)
    assert code in (0, 2), (argv, code, cap.err)
    event(f"exit status {code}")  # pytest --hypothesis-show-statistics: how many runs got past the checks
    if code == 2:
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("clarke:"), (argv, cap.err)
        assert cap.out in ("", "error\n"), (argv, cap.out)  # verify's status line, nothing else
        new = work.listing() - work.before
        assert not new, (argv, new)  # no partial (or any) output file
    else:
        assert cap.out.strip(), (argv, cap.err)
        for name in writes:
            assert (work.path / name).is_file(), (argv, name)
    return code, cap.out


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


BOUNDS = {"--center": path("center"), "--eps": real(0.0, 0.3), "--iterations": integer(0, 3),
          "--lr": real(1e-3, 10.0), "--clip": (st.just("0 1"), st.tuples(ANY_FLOAT, ANY_FLOAT).map(" ".join))}


@FUZZ
@given(opts=options(BOUNDS), method=st.sampled_from(["ibp", "crown", "alpha-crown"]), clip=st.booleans(),
       as_json=st.booleans())
def test_fuzz_bounds(capsys, opts, method, clip, as_json):
    w = Workdir()
    try:
        argv = ["bounds", MODEL, "--center", w.file(opts["--center"]), "--eps", opts["--eps"], "--method", method,
                "--iterations", opts["--iterations"], "--lr", opts["--lr"]]
        if clip:
            argv += ["--clip", *opts["--clip"].split(" ", 1)]
        code, out = check(capsys, [*argv, *(["--json"] if as_json else [])], w)
        if code == 0 and as_json:
            res = json.loads(out)
            assert all(np.isfinite(res["lower"])) and all(np.isfinite(res["upper"]))
    finally:
        w.close()


VERIFY = {"model": path("model"), "spec": path("spec"), "--timeout": real(0.01, 1.0, cap=5.0), "--seed": integer(0, 3),
          "--workers": integer(0, 1)}


@FUZZ
@given(opts=options(VERIFY), result=st.booleans(), as_json=st.booleans())
def test_fuzz_verify(capsys, opts, result, as_json):
    w = Workdir()
    try:
        argv = ["verify", w.file(opts["model"]), w.file(opts["spec"]), "--timeout", opts["--timeout"],
                "--seed", opts["--seed"], "--workers", opts["--workers"]]
        if result:
            argv += ["--result-file", str(w.path / "out.txt")]
        code, out = check(capsys, [*argv, *(["--json"] if as_json else [])], w, ("out.txt",) if result else ())
        if code == 0:
            assert out.splitlines()[0] in ("sat", "unsat", "timeout", "unknown")
    finally:
        w.close()


INSTANCES = {"--instances": path("instances.csv"), "--timeout-scale": real(0.01, 0.1, cap=1.0),
             "--jobs": integer(1, 1), "--limit": integer(0, 2),
             "--report": (st.sampled_from(["", "report.csv"]),
                          st.sampled_from(["folder", "missing/r.csv", "junk.txt"]))}


@FUZZ
@given(opts=options(INSTANCES), resume=st.booleans())
def test_fuzz_verify_instances(capsys, opts, resume):
    w = Workdir()
    try:
        (w.path / "instances.csv").write_text(f"{MODEL},{SPEC},5\n")
        w.before = w.listing()
        argv = ["verify", "--instances", w.file(opts["--instances"]), "--timeout-scale", opts["--timeout-scale"],
                "--jobs", opts["--jobs"], "--limit", opts["--limit"], "--json", "-q"]
        if opts["--report"]:
            argv += ["--report", str(w.path / opts["--report"])]
        if resume:
            argv.append("--resume")
        code, out = check(capsys, argv, w, ("report.csv",) if opts["--report"] == "report.csv" else ())
        if code == 0:
            assert json.loads(out)["instances"] >= 1
    finally:
        w.close()


LIPSCHITZ = {"region": path("center"), "--eps": real(0.0, 0.3), "--timeout": real(0.05, 0.3, cap=1.0),
             "--output": integer(0, 2)}


@FUZZ
@given(opts=options(LIPSCHITZ), method=st.sampled_from(["naive", "ibp", "crown", "bab"]), output=st.booleans(),
       no_attack=st.booleans(), box=st.booleans())
def test_fuzz_lipschitz(capsys, opts, method, output, no_attack, box):
    w = Workdir()
    try:
        region = ["--box", w.file(opts["region"]), X0] if box else ["--center", w.file(opts["region"]),
                                                                     "--eps", opts["--eps"]]
        argv = ["lipschitz", MODEL, *region, "--method", method, "--timeout", opts["--timeout"], "--json"]
        if output:
            argv += ["--output", opts["--output"]]
        if no_attack:
            argv.append("--no-attack")
        code, out = check(capsys, argv, w)
        if code == 0:
            res = json.loads(out)
            assert np.isfinite(res["upper"]) and res["lower"] <= res["upper"] * (1 + 1e-6) + 1e-9
    finally:
        w.close()


MONOTONICITY = {"--eps": real(0.0, 0.3), "--feature": integer(0, 7), "--output": integer(0, 2),
                "--timeout": real(0.05, 0.3, cap=1.0)}


@FUZZ
@given(opts=options(MONOTONICITY), direction=st.sampled_from([None, "increasing", "decreasing"]),
       as_json=st.booleans())
def test_fuzz_monotonicity(capsys, opts, direction, as_json):
    w = Workdir()
    try:
        argv = ["monotonicity", MODEL, "--center", X0, *[a for k, v in opts.items() for a in (k, v)]]
        if direction:
            argv += ["--direction", direction]
        check(capsys, [*argv, *(["--json"] if as_json else [])], w)
    finally:
        w.close()


TINY_PDE = ["--problem", "heat", "--backbone", "mlp", "--width", "4", "--layers", "1", "--basis", "2", "--nt", "5",
            "--nx", "8", "--n-test", "1", "--batch", "1", "--max-iter", "3", "--device", "cpu"]
PDE_TRAIN = {"--lr": real(1e-4, 1e-2), "--steps": integer(1, 2), "--points": integer(1, 20),
             "--train-time-fraction": real(0.5, 1.0), "--interface-weight": real(0.0, 1.0),
             "--experts": (st.sampled_from(["1", "2", "1,2"]),
                           st.sampled_from(["0", "-1", "1,0", "x", "99", "nan", ""])),
             "--out": (st.sampled_from(["run", "folder", "new/deeper/run"]),
                       st.sampled_from(["junk.txt", "junk.txt/run", "empty.csv"]))}


@settings(FUZZ, max_examples=20)
@given(opts=options(PDE_TRAIN), constraint=st.sampled_from(["hard", "moe", "soft"]))
def test_fuzz_pde_train(capsys, opts, constraint):
    w = Workdir()
    try:
        opts["--out"] = str(w.path / opts["--out"])
        argv = ["pde", "train", *TINY_PDE, "--constraint", constraint, *[a for k, v in opts.items() for a in (k, v)]]
        code, _ = check(capsys, argv, w)
        if code == 0:
            assert (Path(opts["--out"]) / "metrics.json").is_file()
    finally:
        w.close()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pde") / "run"
    assert main(["pde", "train", *TINY_PDE, "--constraint", "hard", "--steps", "1", "--points", "10",
                 "--out", str(out)]) == 0
    return out


@settings(FUZZ, max_examples=12)
@given(n_test=st.one_of(st.integers(0, 2).map(str), ANY_INT),
       config=st.sampled_from(["keep", "keep", "{", "[]", '{"steps": "x"}', '{"lr": NaN}', '{"frobnicate": 1}', "",
                               "folder", "no-weights"]), plots=st.booleans())
def test_fuzz_pde_eval(capsys, trained_run, n_test, config, plots):
    w = Workdir()
    try:
        run = w.path / "run"
        shutil.copytree(trained_run, run)
        cfg = run / "config.json"
        if config == "folder":
            cfg.unlink()
            cfg.mkdir()
        elif config == "no-weights":
            (run / "backbone.pt").write_bytes(b"truncated")
        elif config != "keep":
            cfg.write_text(config)
        w.before = w.listing() | {run / "metrics.json", run / "fields.png"}  # eval rewrites these two
        check(capsys, ["pde", "eval", str(run), "--n-test", n_test, "--device", "cpu",
                       *([] if plots else ["--no-plots"])], w)
    finally:
        w.close()


# ------------------------------------------------------------------------------------------ the real entry point


def clarke(*argv: str) -> subprocess.CompletedProcess:
    exe = shutil.which("clarke", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "verify.cli.main"]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_entry_point_error_is_one_line():
    p = clarke("pde", "train", "--lr", "inf", "--out", "runs/never")
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clarke: error: "), p.stderr
    assert not (REPO / "runs" / "never").exists()


def test_entry_point_answers():
    p = clarke("bounds", MODEL, "--center", X0, "--eps", "0.01", "--json", "-q")
    assert p.returncode == 0 and p.stderr == ""
    res = json.loads(p.stdout)
    assert len(res["lower"]) == 3
