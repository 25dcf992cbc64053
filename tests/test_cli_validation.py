"""Every ``clarke`` subcommand refuses invalid options on one line (``clarke: error: ...``, exit status 2, nothing
written); results that come out NaN are errors; ``verify --instances`` reports error reasons, writes its report
row by row and resumes; ``-v`` logs progress on stderr; tables fit 80 columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from verify.cli import verify_cmd
from verify.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MODEL = str(EXAMPLES / "mlp_8x32x32x3.onnx")
X0 = str(EXAMPLES / "x0.npy")
SPEC = str(EXAMPLES / "robustness.vnnlib")
REGION = ["--center", X0, "--eps", "0.02"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``verify`` sets torch's thread count while it runs; restore it for the tests that follow."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clarke: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


BAD_OPTIONS = [
    (["bounds", MODEL, "--center", X0, "--eps", "nan"], "--eps"),
    (["bounds", MODEL, "--center", X0, "--eps", "inf"], "--eps"),
    (["bounds", MODEL, "--center", X0, "--eps", "-0.1"], "--eps"),
    (["bounds", MODEL, *REGION, "--clip", "1", "0"], "--clip"),
    (["bounds", MODEL, *REGION, "--clip", "nan", "1"], "--clip"),
    (["bounds", MODEL, *REGION, "--lr", "nan", "--method", "alpha-crown"], "--lr"),
    (["bounds", MODEL, *REGION, "--lr", "0"], "--lr"),
    (["bounds", MODEL, *REGION, "--iterations", "-1"], "--iterations"),
    (["bounds", MODEL, *REGION, "--iterations", "2.5"], "--iterations"),
    (["bounds", MODEL, *REGION, "-v", "-q"], "--quiet"),
    (["lipschitz", MODEL, *REGION, "--timeout", "0"], "--timeout"),
    (["lipschitz", MODEL, *REGION, "--timeout", "inf"], "--timeout"),
    (["lipschitz", MODEL, *REGION, "--output", "-1"], "--output"),
    (["lipschitz", MODEL, "--center", X0, "--eps", "-inf"], "--eps"),
    (["monotonicity", MODEL, *REGION, "--feature", "-2"], "--feature"),
    (["monotonicity", MODEL, *REGION, "--feature", "1", "--timeout", "nan"], "--timeout"),
    (["verify", MODEL, SPEC, "--timeout", "nan"], "--timeout"),
    (["verify", MODEL, SPEC, "--timeout", "-5"], "--timeout"),
    (["verify", MODEL, SPEC, "--workers", "-1"], "--workers"),
    (["verify", MODEL, SPEC, "--seed", "-1"], "--seed"),
    (["verify", "--instances", "x.csv", "--jobs", "0"], "--jobs"),
    (["verify", "--instances", "x.csv", "--timeout-scale", "0"], "--timeout-scale"),
    (["verify", "--instances", "x.csv", "--timeout-scale", "nan"], "--timeout-scale"),
    (["verify", "--instances", "x.csv", "--limit", "-3"], "--limit"),
    (["verify", MODEL, SPEC, "--report", "r.csv"], "--report"),
    (["verify", MODEL, SPEC, "--jobs", "2"], "--jobs"),
    (["verify", MODEL, SPEC, "--timeout-scale", "2"], "--timeout-scale"),
    (["verify", MODEL, SPEC, "--limit", "2"], "--limit"),
    (["verify", MODEL, SPEC, "--resume"], "--resume"),
    (["verify", "--instances", "x.csv", MODEL], "--instances"),
    (["pde", "train", "--lr", "nan", "--out", "run"], "--lr"),
    (["pde", "train", "--steps", "0", "--out", "run"], "--steps"),
    (["pde", "train", "--points", "-4", "--out", "run"], "--points"),
    (["pde", "train", "--experts", "0", "--out", "run"], "--experts"),
    (["pde", "train", "--experts", "1,0,2", "--out", "run"], "--experts"),
    (["pde", "train", "--train-time-fraction", "1.5", "--out", "run"], "--train-time-fraction"),
    (["pde", "train", "--interface-weight", "inf", "--out", "run"], "--interface-weight"),
    (["pde", "train", "--nt", "2", "--out", "run"], "--nt"),
    (["pde", "eval", "run", "--n-test", "-1"], "--n-test"),
]


@pytest.mark.parametrize(("argv", "option"), BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_invalid_option_is_one_line_naming_it(capsys, tmp_path, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    one_line_error(code, err, option)
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_nan_bounds_are_an_error_not_a_result(capsys, monkeypatch):
    """Whatever the engine returns, NaN is never printed as a bound (the engine is replaced by one returning NaN)."""
    import torch

    from verify.cli import bounds_cmd
    from verify.lipschitz import api

    def nan_bound(graph, lo, hi, C=None, **kw):
        k = graph.output_numel if C is None else len(C)
        return torch.full((1, k), float("nan")), torch.zeros(1, k)

    monkeypatch.setattr(bounds_cmd, "bound", nan_bound)
    for fmt in ([], ["--json"]):
        code, out, err = run(capsys, "bounds", MODEL, *REGION, *fmt)
        one_line_error(code, err, "NaN")
        assert out == ""
    real = api.lipschitz
    monkeypatch.setattr(api, "lipschitz", lambda *a, **kw: _with_nan_upper(real(*a, **kw)))
    code, out, err = run(capsys, "lipschitz", MODEL, *REGION, "--json")
    one_line_error(code, err, "NaN")
    assert out == ""


def _with_nan_upper(res):
    res.upper = float("nan")
    return res


def test_non_finite_input_files_are_refused(capsys, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.full(8, np.nan))
    one_line_error(*run(capsys, "bounds", MODEL, "--center", x, "--eps", "0.1")[::2], "NaN")
    C = tmp_path / "C.npy"
    np.save(C, np.array([[1.0, np.inf, 0.0]]))
    one_line_error(*run(capsys, "bounds", MODEL, *REGION, "--C", C)[::2], "C.npy")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(*run(capsys, "lipschitz", MODEL, "--center", empty, "--eps", "0.1")[::2], "empty")
    one_line_error(*run(capsys, "monotonicity", MODEL, "--box", tmp_path, X0, "--feature", "0")[::2], "directory")


def test_lipschitz_and_monotonicity_exit_status(capsys):
    code, out, _ = run(capsys, "lipschitz", MODEL, *REGION, "--no-attack", "--json")
    assert code == 0 and json.loads(out)["lower"] == 0.0  # no attack: the trivial lower bound, not -inf
    code, out, _ = run(capsys, "monotonicity", MODEL, *REGION, "--feature", "2", "--json")
    assert code == 0 and json.loads(out)["status"] in ("increasing", "decreasing", "not_monotone", "unknown")
    for cmd in ("lipschitz", "monotonicity"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0 and "Exit status" in out


def test_help_shows_defaults(capsys):
    for cmd in (["bounds"], ["verify"], ["lipschitz"], ["monotonicity"], ["pde", "train"], ["pde", "eval"]):
        code, out, _ = run(capsys, *cmd, "--help")
        assert code == 0
        assert "default" in out, cmd
    _, out, _ = run(capsys, "pde", "train", "--help")
    for text in ("(default: 300)", "(default: 0.001)", "(default: moe)", "(default: diffusion-sorption)"):
        assert text in " ".join(out.split()), text


# ------------------------------------------------------------------------------------------ --instances


def write_instances(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / "instances.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def sat_spec(folder: Path) -> str:
    """A property violated everywhere (Y_0 <= 1e6 fails nowhere... so the negation holds: sat at once)."""
    text = Path(SPEC).read_text().rsplit("(assert (or", 1)[0] + "(assert (<= Y_0 1000000.0))\n"
    (folder / "sat.vnnlib").write_text(text)
    return "sat.vnnlib"


@pytest.fixture
def bench(tmp_path) -> Path:
    """Three instances beside their csv: unsat, sat, and one whose model file is missing (an error)."""
    d = tmp_path / "bench"
    d.mkdir()
    (d / "net.onnx").write_bytes(Path(MODEL).read_bytes())
    (d / "prop.vnnlib").write_text(Path(SPEC).read_text())
    write_instances(d, [("net.onnx", "prop.vnnlib", "10"), ("net.onnx", sat_spec(d), "10"),
                        ("gone.onnx", "prop.vnnlib", "10")])
    return d


def read_report(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_instances_error_reason_in_report_stderr_and_summary(capsys, bench, tmp_path):
    report = tmp_path / "report.csv"
    code, out, err = run(capsys, "verify", "--instances", bench / "instances.csv", "--report", report, "--json")
    assert code == 0, err
    rows = read_report(report)
    assert [r["status"] for r in rows] == ["unsat", "sat", "error"]
    assert "gone.onnx" in rows[2]["reason"] and rows[0]["reason"] == rows[1]["reason"] == ""
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("clarke: ") and "gone.onnx" in err_lines[0]
    summary = json.loads(out)
    assert summary["error"] == 1 and summary["errors"][0]["onnx"] == "gone.onnx"
    assert "gone.onnx" in summary["errors"][0]["reason"]
    code, out, _ = run(capsys, "verify", "--instances", bench / "instances.csv", "--quiet")
    assert code == 0 and "errors" in out and "gone.onnx" in out  # the table's list of errors


def test_instances_csv_must_hold_rows(capsys, tmp_path):
    empty = write_instances(tmp_path, [])
    one_line_error(*run(capsys, "verify", "--instances", empty)[::2], "no instances")
    only_comments = tmp_path / "c.csv"
    only_comments.write_text("# nothing here\n\n")
    one_line_error(*run(capsys, "verify", "--instances", only_comments)[::2], "no instances")
    one_line_error(*run(capsys, "verify", "--instances", tmp_path)[::2], "directory")
    bad = write_instances(tmp_path, [("a.onnx", "b.vnnlib", "nan")])
    one_line_error(*run(capsys, "verify", "--instances", bad)[::2], "timeout")


def test_instances_report_is_written_row_by_row(capsys, bench, tmp_path, monkeypatch):
    """A run killed after the first instance keeps that row in the report."""
    report = tmp_path / "report.csv"
    real = verify_cmd._one
    calls = []

    def killed_after_one(job):
        if calls:
            raise KeyboardInterrupt
        calls.append(job)
        return real(job)

    monkeypatch.setattr(verify_cmd, "_one", killed_after_one)
    code, _, err = run(capsys, "verify", "--instances", bench / "instances.csv", "--report", report)
    assert code == 130 and "interrupted" in err
    rows = read_report(report)
    assert [(r["onnx"], r["status"]) for r in rows] == [("net.onnx", "unsat")]


def test_instances_resume_skips_finished_rows(capsys, bench, tmp_path):
    report = tmp_path / "report.csv"
    fields = verify_cmd.REPORT_FIELDS
    with report.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerow({"onnx": "net.onnx", "vnnlib": "prop.vnnlib", "status": "unsat", "seconds": 123.0,
                    "counterexample_validated": "", "expected": "", "correct": 0, "wrong": 0, "reason": ""})
        f.write("net.onnx,sat.vnnlib,sa")  # a row torn by a killed run: dropped, run again
    code, out, err = run(capsys, "verify", "--instances", bench / "instances.csv", "--report", report, "--resume",
                         "--json")
    assert code == 0, err
    rows = read_report(report)
    assert [r["vnnlib"] for r in rows] == ["prop.vnnlib", "sat.vnnlib", "prop.vnnlib"]
    assert float(rows[0]["seconds"]) == 123.0  # kept, not run again
    assert [r["status"] for r in rows] == ["unsat", "sat", "error"]
    assert json.loads(out)["instances"] == 3
    # everything finished: a second --resume runs nothing and reports the same rows
    code, out, _ = run(capsys, "verify", "--instances", bench / "instances.csv", "--report", report, "--resume",
                       "--json")
    assert code == 0 and read_report(report) == rows


def test_instances_resume_refuses_a_foreign_report(capsys, bench, tmp_path):
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    one_line_error(*run(capsys, "verify", "--instances", bench / "instances.csv", "--report", report,
                        "--resume")[::2], "report.csv")
    assert report.read_text() == "a,b\n1,2\n"


# ------------------------------------------------------------------------------------------ -v, tables


def test_verbose_logs_progress_on_stderr_quiet_logs_nothing(capsys):
    code, out, err = run(capsys, "verify", MODEL, SPEC, "--timeout", "5", "-v")
    assert code == 0 and out == "unsat\n"
    assert "phase crown" in err and err.startswith("clarke [")
    code, out, err = run(capsys, "lipschitz", MODEL, *REGION, "--method", "bab", "--timeout", "0.5", "-v", "--json")
    assert code == 0 and "phase bab" in err and "bab: domains" in err
    json.loads(out)
    code, out, err = run(capsys, "bounds", MODEL, *REGION, "-v", "--json")
    assert code == 0 and "crown on input box 1 of 1" in err
    code, out, err = run(capsys, "verify", MODEL, SPEC, "--timeout", "5", "--quiet")
    assert code == 0 and out == "unsat\n" and err == ""


@pytest.mark.parametrize("width", [80, 60])
def test_tables_keep_whole_column_names(capsys, monkeypatch, bench, width):
    monkeypatch.setenv("COLUMNS", str(width))
    outputs = [
        run(capsys, "bounds", MODEL, *REGION, "--method", "crown"),
        run(capsys, "bounds", MODEL, SPEC, "--C", str(write_c(bench))),
        run(capsys, "lipschitz", MODEL, *REGION),
        run(capsys, "verify", "--instances", bench / "instances.csv", "-q"),
    ]
    for code, out, _ in outputs:
        assert code == 0
        assert "…" not in out, out
        assert max(len(line) for line in out.splitlines()) <= width, out
    summary = outputs[-1][1]
    for name in ("instances", "solved", "timeout", "error", "total seconds", "median seconds"):
        assert name in summary


def write_c(folder: Path) -> Path:
    path = folder / "C.npy"
    np.save(path, np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))
    return path
