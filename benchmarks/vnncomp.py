"""VNN-COMP benchmark: Clarke beside Marabou (when ``maraboupy`` is installed) on the same instances, in the
same run, and the published alpha-beta-CROWN / nnenum results.

    python benchmarks/vnncomp.py BENCH_DIR [--timeout-scale X] [--limit N] [--every K] [--jobs N] [--json]
                                 [--tools clarke,marabou] [--report per_instance.csv]

``BENCH_DIR`` holds a VNN-COMP ``instances.csv`` (``onnx,vnnlib,timeout``, no header, paths relative to it)
and optionally ``expected.csv`` (ground truth ``result`` and published ``result_<tool>_<year>`` /
``runtime_<tool>_<year>`` columns), e.g. ``../shared/data/vnncomp/acasxu``.

Each tool runs every instance in its own subprocess with the instance's timeout times ``--timeout-scale``,
and is killed hard at that timeout + 60 s; that, and an answer reported after the timeout + 5 %, count as
``timeout``:

- Clarke: ``python -m verify.cli.main verify ONNX VNNLIB --timeout T --json --result-file F --workers W`` (W: the
  cores divided among the jobs); its time is
  the ``seconds`` Clarke reports (model loading included, interpreter start-up excluded).
- Marabou: ``Marabou.read_onnx(ONNX).solve(propertyFilename=VNNLIB, options=createOptions(
  timeoutInSeconds=T))`` in a worker process (this file with ``_marabou_worker``); its time covers reading
  the model and solving, interpreter start-up and imports excluded.

Every ``sat`` answer's counterexample is validated here with ``validate_counterexample`` (onnxruntime, the
organizers' rules). A tool's row counts: solved (``unsat``, or ``sat`` with a valid counterexample),
correct (a valid ``sat``, or ``unsat`` where the ground truth is ``unsat``), wrong (``unsat`` where the
truth is ``sat``, or ``sat`` whose counterexample fails validation), and the total / median time on the
instances it solved. The published rows use the latest year in ``expected.csv`` with results for the
selected instances; they were measured on the competition's hardware with the full timeouts (marked
"published, other hardware"). The last line compares Marabou's and Clarke's times on the instances both
solved. ``--json`` prints the same numbers as one JSON object on the last line.

Measured (2 shared CPU cores, 2026-11-29, ``acasxu --timeout-scale 0.25 --jobs 2``, commit d344e07, Marabou
from ``pip install -e ".[bench]"``): Clarke 107/108 solved (the one timeout, 3_3 prop_2, needs 50 s), 0 wrong,
100 s in total; Marabou 2.0.0 87/108, 0 wrong, 278 s; on the 87 instances both solved Marabou / Clarke =
278 s / 35 s = 8.0x (median per-instance ratio 4.0x; commit 47e5031: 5.9x on the 82 instances Marabou solved
then). At the full timeouts Clarke solves all 108 (``clarke verify --instances``: 194 s wall, one process).

mnist_fc_2022 at the full timeouts (``clarke verify --instances .../mnist_fc_2022/instances.csv``, commit d344e07,
two processes per instance): 40/45 solved (7 sat, 33 unsat), 0 wrong, 34 min wall; 40 of the 44 instances with a
known answer (91 %); alpha-beta-CROWN published 42/45 (2022, GPU). MIP-refined intermediate bounds settle 256x4
prop_5/6/7/13 and 256x6 prop_3 (50-67 s each); 256x4 prop_9 (234 s) needs the race after them: the split search
refutes five of its nine disjuncts, exact MIPs over the refined bounds (181 binaries) the other four. Open: 256x6
prop_5/9/11/13 (margins -650 to -3300 after refining three layers; the whole-network MIP exceeds the Gurobi
licence), 256x6 prop_7 (no known answer). With ``--jobs 2`` (one refinement process each; commit e87e0db, before
the race) 39/45 in 20.5 min.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OVERTIME_FACTOR = 1.05
"""An answer that comes after the instance's limit times this is scored ``timeout`` (as in VNN-COMP)."""
HARD_KILL_EXTRA_S = 60.0
"""A tool still running this long after an instance's timeout is killed (and scored ``timeout``)."""
MARKER = "@@vnncomp-bench@@ "
"""Prefix of the worker's result line (Marabou's C++ core prints to the same stdout)."""
PUBLISHED_TOOLS = {"abcrown": "alpha-beta-CROWN", "nnenum": "nnenum"}
MARABOU_STATUS = {"sat": "sat", "unsat": "unsat", "TIMEOUT": "timeout", "QUIT_REQUESTED": "timeout",
                  "UNKNOWN": "unknown", "ERROR": "error"}


@dataclass
class Instance:
    """One row of ``instances.csv``; ``onnx`` / ``vnnlib`` as written there (relative to the benchmark)."""

    index: int
    onnx: str
    vnnlib: str
    timeout: float
    expected: str = ""


@dataclass
class Outcome:
    """One tool's answer on one instance. ``validated``: for ``sat``, whether the counterexample passed."""

    tool: str
    index: int
    status: str
    seconds: float
    validated: bool | None = None
    message: str = ""
    limit: float = 0.0
    x: list[float] | None = field(default=None, repr=False)
    y: list[float] | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------- inputs


def read_instances(bench: Path, limit: int = 0, every: int = 1) -> list[Instance]:
    """The rows of ``bench/instances.csv`` with ``expected.csv``'s truth: every ``every``-th row (a sample
    across the benchmark), then the first ``limit`` of those when positive."""
    path = bench / "instances.csv"
    if not path.is_file():
        raise SystemExit(f"vnncomp.py: {path}: no such instances file")
    rows: list[Instance] = []
    with path.open() as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#") or row[0].strip() == "onnx":
                continue
            if len(row) < 3:
                raise SystemExit(f"vnncomp.py: {path}:{i + 1}: expected 'onnx,vnnlib,timeout'")
            rows.append(Instance(len(rows), row[0].strip(), row[1].strip(), float(row[2])))
    rows = rows[::max(1, every)]
    rows = rows[:limit] if limit > 0 else rows
    for k, inst in enumerate(rows):
        inst.index = k
    expected = read_expected(bench)
    for inst in rows:
        inst.expected = expected.get((inst.onnx, inst.vnnlib), {}).get("result", "")
    return rows


def read_expected(bench: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``expected.csv`` rows keyed by ``(onnx, vnnlib)``; empty when the file is absent."""
    path = bench / "expected.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        return {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(f)}


def plain_file(path: Path, tmp: Path) -> Path:
    """``path`` itself, or an uncompressed copy in ``tmp`` when it ends in ``.gz``."""
    if path.suffix != ".gz":
        return path
    out = tmp / f"{abs(hash(str(path)))}_{path.name[:-3]}"
    if not out.exists():
        with gzip.open(path, "rb") as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


# ----------------------------------------------------------------------------------------------- tools


def marabou_version() -> str | None:
    """The installed maraboupy version, or ``None`` when it cannot be imported."""
    try:
        import maraboupy  # noqa: F401
    except Exception:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("maraboupy")
    except PackageNotFoundError:
        return "unknown version"


def _env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONWARNINGS"] = "ignore"
    if jobs > 1:  # one core per worker, or parallel runs fight over the same cores
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _run(cmd: list[str], timeout: float, jobs: int) -> tuple[subprocess.CompletedProcess | None, float]:
    """Run ``cmd`` with a hard kill at ``timeout`` + :data:`HARD_KILL_EXTRA_S`; ``(process or None, wall)``."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + HARD_KILL_EXTRA_S,
                           env=_env(jobs), cwd=REPO, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    return p, time.perf_counter() - t0


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_clarke(onnx: Path, vnnlib: Path, timeout: float, index: int, tmp: Path, jobs: int) -> Outcome:
    """``clarke verify`` on one instance, in a subprocess; the counterexample is read from the result file."""
    from verify.counterexample import parse_result

    result = tmp / f"clarke_{index}.txt"
    workers = max(1, (os.cpu_count() or 1) // max(1, jobs))  # MIP refinement processes: the job's share of cores
    cmd = [sys.executable, "-m", "verify.cli.main", "verify", str(onnx), str(vnnlib), "--timeout", f"{timeout:g}",
           "--json", "--result-file", str(result), "--workers", str(workers)]
    p, wall = _run(cmd, timeout, jobs)
    if p is None:
        return Outcome("clarke", index, "timeout", wall, message="killed at the hard limit")
    lines = p.stdout.splitlines()
    if p.returncode != 0 or not lines:
        return Outcome("clarke", index, "error", wall, message=_last_line(p.stderr) or f"exit {p.returncode}")
    try:
        info = json.loads(lines[1])
    except (IndexError, json.JSONDecodeError):
        info = {"status": lines[0], "seconds": wall}
    out = Outcome("clarke", index, info["status"], float(info["seconds"]), message=info.get("message", ""))
    if out.status == "sat":
        try:
            _, x, y = parse_result(result.read_text())
        except Exception as e:  # missing or malformed result file: the witness cannot be checked
            out.message = f"result file: {e}"
        else:
            out.x = None if x is None else x.tolist()
            out.y = None if y is None else y.tolist()
    return out


def run_marabou(onnx: Path, vnnlib: Path, timeout: float, index: int, jobs: int) -> Outcome:
    """Marabou on one instance, in a worker subprocess (see :func:`marabou_worker`)."""
    limit = max(1, int(timeout))  # Marabou takes whole seconds; round down to stay within the limit
    cmd = [sys.executable, str(Path(__file__).resolve()), "_marabou_worker", str(onnx), str(vnnlib), str(limit)]
    p, wall = _run(cmd, timeout, jobs)
    if p is None:
        return Outcome("marabou", index, "timeout", wall, message="killed at the hard limit")
    found = [ln[len(MARKER):] for ln in p.stdout.splitlines() if ln.startswith(MARKER)]
    if not found:
        msg = _last_line(p.stderr) or _last_line(p.stdout) or f"exit {p.returncode}"
        return Outcome("marabou", index, "error", wall, message=msg)
    info = json.loads(found[-1])
    return Outcome("marabou", index, info["status"], float(info["seconds"]), message=info.get("message", ""),
                   x=info.get("x"), y=info.get("y"))


def marabou_worker(onnx: str, vnnlib: str, timeout_s: int) -> int:
    """Solve one instance with Marabou; print ``MARKER`` + JSON (status, seconds, x, y, message)."""
    import warnings

    warnings.filterwarnings("ignore")
    out: dict = {"status": "error", "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        from maraboupy import Marabou  # imported before the clock starts, as Clarke's imports are

        t0 = time.perf_counter()
        net = Marabou.read_onnx(onnx)
        options = Marabou.createOptions(timeoutInSeconds=int(timeout_s), verbosity=0)
        code, vals, stats = net.solve(propertyFilename=vnnlib, options=options, verbose=False)
        status = MARABOU_STATUS.get(str(code), "unknown")
        if status != "timeout" and stats is not None and stats.hasTimedOut():
            status = "timeout"
        out["status"] = status
        if status == "sat":
            out["x"] = [float(vals[int(v)]) for v in net.inputVars[0].flatten()]
            out["y"] = [float(vals[int(v)]) for v in net.outputVars[0].flatten()]
        elif status in ("error", "unknown"):
            out["message"] = f"Marabou exit code {code}"
    except Exception as e:  # unsupported operator, parser error: the instance is an error for Marabou
        out["message"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    out["seconds"] = time.perf_counter() - t0
    sys.stdout.flush()
    sys.stdout.write("\n" + MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def validate(out: Outcome, onnx: Path, vnnlib: Path) -> None:
    """Set ``out.validated`` for a ``sat`` answer: the organizers' check with the claimed Y, else (as the
    newer scoring does) with onnxruntime's own output for X."""
    if out.status != "sat":
        return
    if out.x is None:
        out.validated = False
        out.message = out.message or "sat without a counterexample"
        return
    from verify.counterexample import validate_counterexample
    from verify.errors import ClarkeError
    from verify.vnnlib import parse_vnnlib

    try:
        spec = parse_vnnlib(vnnlib)
        v = validate_counterexample(onnx, spec, out.x, out.y)
        if not v.ok and out.y is not None:
            v2 = validate_counterexample(onnx, spec, out.x)
            if v2.ok:
                v2.message = f"{v2.message}; claimed Y rejected: {v.message}"
                v = v2
    except ClarkeError as e:
        out.validated, out.message = False, f"cannot validate: {e}"
        return
    out.validated = v.ok
    if not v.ok or not v.exact:
        out.message = v.message


# ----------------------------------------------------------------------------------------------- scoring


def judge(status: str, validated: bool | None, expected: str) -> tuple[bool, bool, bool]:
    """``(solved, correct, wrong)`` of one answer against the ground truth ``expected``."""
    if status == "sat":
        ok = validated is not False
        return ok, ok and expected != "unsat", (not ok) or expected == "unsat"
    if status == "unsat":
        return True, expected == "unsat", expected == "sat"
    return False, False, False


def summarize(name: str, answers: list[tuple[str, bool | None, float | None]], expected: list[str],
              note: str = "") -> dict:
    """One table row from ``(status, validated, seconds)`` per instance."""
    solved_t: list[float] = []
    row = {"tool": name, "instances": len(answers), "solved": 0, "sat": 0, "unsat": 0, "correct": 0, "wrong": 0,
           "timeout": 0, "other": 0}
    for (status, validated, seconds), exp in zip(answers, expected, strict=True):
        solved, correct, wrong = judge(status, validated, exp)
        row["solved"] += solved
        row["correct"] += correct
        row["wrong"] += wrong
        if solved:
            row[status] += 1
            solved_t.append(float(seconds or 0.0))
        elif status == "timeout":
            row["timeout"] += 1
        elif status != "sat":
            row["other"] += 1
    row["total_s"] = round(sum(solved_t), 3)
    row["median_s"] = round(statistics.median(solved_t), 3) if solved_t else None
    row["note"] = note
    return row


def published_rows(bench: Path, instances: list[Instance]) -> list[dict]:
    """alpha-beta-CROWN and nnenum from ``expected.csv``: the latest year with results on these instances."""
    expected = read_expected(bench)
    if not expected:
        return []
    header = list(next(iter(expected.values())).keys())
    rows = []
    recs = [expected.get((i.onnx, i.vnnlib), {}) for i in instances]
    for key, label in PUBLISHED_TOOLS.items():
        years = sorted((c.rsplit("_", 1)[1] for c in header if c.startswith(f"result_{key}_")), reverse=True)
        if not years:
            continue
        # The latest year with an answer on these instances (else the latest year: nothing solved).
        year = next((y for y in years if any(r.get(f"result_{key}_{y}") for r in recs)), years[0])
        answers: list[tuple[str, bool | None, float | None]] = []
        for r in recs:
            t = r.get(f"runtime_{key}_{year}", "")
            answers.append((r.get(f"result_{key}_{year}", "") or "", None, float(t) if t else 0.0))
        rows.append(summarize(f"{label} {year}", answers, [i.expected for i in instances],
                              note="published, other hardware"))
    return rows


def time_ratio(instances: list[Instance], a: dict[int, Outcome], b: dict[int, Outcome]) -> dict | None:
    """Times of ``a`` over ``b`` on the instances both solved: total ratio and median per-instance ratio."""
    both = [i.index for i in instances
            if judge(a[i.index].status, a[i.index].validated, i.expected)[0]
            and judge(b[i.index].status, b[i.index].validated, i.expected)[0]]
    if not both:
        return {"instances": 0, "total_ratio": None, "median_ratio": None}
    ta = sum(a[k].seconds for k in both)
    tb = sum(b[k].seconds for k in both)
    ratios = [a[k].seconds / max(b[k].seconds, 1e-3) for k in both]
    return {"instances": len(both), "total_a_s": round(ta, 3), "total_b_s": round(tb, 3),
            "total_ratio": round(ta / max(tb, 1e-3), 3), "median_ratio": round(statistics.median(ratios), 3)}


# ----------------------------------------------------------------------------------------------- driver


def run_benchmark(bench: Path, timeout_scale: float = 1.0, limit: int = 0, jobs: int = 1,
                  tools: tuple[str, ...] = ("clarke", "marabou"), report: Path | None = None,
                  log: Callable[[str], None] | None = None, every: int = 1) -> dict:
    """Run the tools on the benchmark; return the summary (what ``--json`` prints)."""
    log = log or (lambda msg: None)
    instances = read_instances(bench, limit, every)
    mver = marabou_version()
    active = [t for t in tools if t != "marabou" or mver is not None]
    if "marabou" in tools and mver is None:
        log("maraboupy is not importable: Marabou is skipped (pip install maraboupy)")
    outcomes: dict[str, dict[int, Outcome]] = {t: {} for t in active}
    with tempfile.TemporaryDirectory(prefix="vnncomp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths = {i.index: (plain_file(bench / i.onnx, tmp), plain_file(bench / i.vnnlib, tmp)) for i in instances}

        def task(tool: str, inst: Instance) -> Outcome:
            onnx, vnnlib = paths[inst.index]
            t = inst.timeout * timeout_scale
            if tool == "clarke":
                out = run_clarke(onnx, vnnlib, t, inst.index, tmp, jobs)
            else:
                out = run_marabou(onnx, vnnlib, t, inst.index, jobs)
            if out.status in ("sat", "unsat") and out.seconds > t * OVERTIME_FACTOR:
                out.message = f"answered {out.status} after {out.seconds:.2f} s, limit {t:g} s"
                out.status, out.x, out.y = "timeout", None, None
            validate(out, onnx, vnnlib)
            out.limit = t
            return out

        jobs_list = [(tool, inst) for inst in instances for tool in active]
        done = 0

        def record(out: Outcome) -> None:
            nonlocal done
            done += 1
            inst = instances[out.index]
            extra = "" if out.validated is None else (" (cex valid)" if out.validated else " (cex INVALID)")
            log(f"[{done}/{len(jobs_list)}] {out.tool:8s} {Path(inst.onnx).name} {Path(inst.vnnlib).name}: "
                f"{out.status}{extra} {out.seconds:.2f} s (limit {out.limit:g} s), expected {inst.expected or '?'}"
                + (f" - {out.message}" if out.message and out.status != "sat" else ""))
            outcomes[out.tool][out.index] = out

        if jobs > 1:
            with ThreadPoolExecutor(jobs) as pool:
                for fut in [pool.submit(task, tool, inst) for tool, inst in jobs_list]:
                    record(fut.result())
        else:
            for tool, inst in jobs_list:
                record(task(tool, inst))

    expected = [i.expected for i in instances]
    rows = []
    for tool in active:
        outs = [outcomes[tool][i.index] for i in instances]
        label = "Clarke" if tool == "clarke" else f"Marabou {mver}"
        rows.append(summarize(label, [(o.status, o.validated, o.seconds) for o in outs], expected,
                              note="this machine, same run"))
    rows += published_rows(bench, instances)
    ratio = None
    if "clarke" in active and "marabou" in active:
        ratio = time_ratio(instances, outcomes["marabou"], outcomes["clarke"])
    if report is not None:
        _write_report(report, instances, outcomes, timeout_scale)
    return {"benchmark": str(bench), "instances": len(instances), "timeout_scale": timeout_scale, "jobs": jobs,
            "every": every, "limit": limit,
            "known": sum(e in ("sat", "unsat") for e in expected), "marabou_version": mver, "rows": rows,
            "marabou_over_clarke": ratio}


def _write_report(path: Path, instances: list[Instance], outcomes: dict[str, dict[int, Outcome]],
                  scale: float) -> None:
    fields = ["onnx", "vnnlib", "timeout", "expected"]
    for tool in outcomes:
        fields += [f"{tool}_status", f"{tool}_seconds", f"{tool}_validated", f"{tool}_message"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for inst in instances:
            row = {"onnx": inst.onnx, "vnnlib": inst.vnnlib, "timeout": inst.timeout * scale, "expected": inst.expected}
            for tool, outs in outcomes.items():
                o = outs[inst.index]
                row.update({f"{tool}_status": o.status, f"{tool}_seconds": round(o.seconds, 4),
                            f"{tool}_validated": "" if o.validated is None else str(o.validated).lower(),
                            f"{tool}_message": o.message})
            w.writerow(row)


def print_table(summary: dict) -> None:
    """The rich table of :func:`run_benchmark`'s summary, and the Marabou / Clarke time ratio."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"VNN-COMP {Path(summary['benchmark']).name}: {summary['instances']} instances "
              f"({summary['known']} with known answer), timeout scale {summary['timeout_scale']:g}")
    cols = [("tool", "left"), ("solved", "right"), ("sat", "right"), ("unsat", "right"), ("correct", "right"),
            ("wrong", "right"), ("timeout", "right"), ("other", "right"), ("total s (solved)", "right"),
            ("median s (solved)", "right"), ("note", "left")]
    t.caption = ("solved = unsat, or sat with a counterexample that validates in onnxruntime; times on solved "
                 "instances. Published rows: competition hardware, full timeouts, start-up subtracted.")
    for name, justify in cols:
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in summary["rows"]:
        t.add_row(r["tool"], str(r["solved"]), str(r["sat"]), str(r["unsat"]), str(r["correct"]),
                  f"[red]{r['wrong']}[/red]" if r["wrong"] else "0", str(r["timeout"]), str(r["other"]),
                  f"{r['total_s']:.2f}", "-" if r["median_s"] is None else f"{r['median_s']:.3f}", r["note"])
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(t)
    ratio = summary["marabou_over_clarke"]
    if ratio is None:
        console.print("Marabou / Clarke time: Marabou not run")
    elif not ratio["instances"]:
        console.print("Marabou / Clarke time: no instance solved by both")
    else:
        console.print(f"Marabou / Clarke time on the {ratio['instances']} instances both solved: "
                      f"{ratio['total_a_s']:.2f} s / {ratio['total_b_s']:.2f} s = {ratio['total_ratio']:.2f}x "
                      f"(median per-instance ratio {ratio['median_ratio']:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_marabou_worker"]:
        return marabou_worker(argv[1], argv[2], int(argv[3]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path, help="benchmark folder with instances.csv (and expected.csv)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout by this (default 1)")
    p.add_argument("--limit", type=int, default=0, help="only the first N instances (after --every)")
    p.add_argument("--every", type=int, default=1, help="only every K-th instance: a sample across the benchmark")
    p.add_argument("--jobs", type=int, default=1, help="instances run in parallel (default 1; timings get noisier)")
    p.add_argument("--tools", default="clarke,marabou", help="comma-separated: clarke, marabou (default both)")
    p.add_argument("--report", type=Path, help="write one row per instance (every tool's answer) to this csv")
    p.add_argument("--json", action="store_true", help="also print the table as one JSON object on the last line")
    args = p.parse_args(argv)
    tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    if bad := [t for t in tools if t not in ("clarke", "marabou")]:
        p.error(f"unknown tool(s) {bad}")
    if not math.isfinite(args.timeout_scale) or args.timeout_scale <= 0:
        p.error("--timeout-scale must be positive")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    summary = run_benchmark(args.bench, args.timeout_scale, args.limit, max(1, args.jobs), tools, args.report, log,
                            args.every)
    print_table(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
