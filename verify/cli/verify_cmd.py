"""``clarke verify``: decide VNN-COMP instances (ONNX + VNNLIB), singly or a whole instances.csv."""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from verify.cli.common import CliError, fail, print_json, write_atomic

DESCRIPTION = """Verify a VNNLIB property of an ONNX network, as in VNN-COMP. The first stdout line is the
status: sat (a counterexample exists; it was re-checked with onnxruntime), unsat (the property holds),
timeout, unknown, or error (bad input; details on stderr, exit status 2).

  clarke verify net.onnx prop.vnnlib --timeout 60 --result-file out.txt
  clarke verify --instances bench/instances.csv --timeout-scale 0.5 --report report.csv --jobs 2

With --instances, paths in the csv are relative to it; when expected.csv sits beside it, a summary
(solved, correct, wrong, total and median time) is printed."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify VNN-COMP instances (ONNX + VNNLIB): sat / unsat / timeout",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="ONNX model file")
    p.add_argument("spec", nargs="?", help="VNNLIB property file")
    p.add_argument("--timeout", type=float, default=60.0, help="time limit in seconds (default 60)")
    p.add_argument("--result-file", metavar="PATH",
                   help="write the VNN-COMP result file (status, and the counterexample for sat), atomically")
    p.add_argument("--json", action="store_true",
                   help="after the status line, print one JSON object: status, seconds, stage, counterexample")
    p.add_argument("--seed", type=int, default=0, help="random seed of the attacks (default 0)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for the MIP refinement of intermediate bounds on hard ReLU networks "
                        "(default: every core; with --instances, the cores divided among the --jobs)")
    p.add_argument("--instances", metavar="CSV", help="run every row (onnx,vnnlib,timeout) of an instances.csv")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="with --instances: multiply each instance's timeout by this factor (default 1)")
    p.add_argument("--report", metavar="OUT.csv", help="with --instances: write one row per instance here")
    p.add_argument("--jobs", type=int, default=1, help="with --instances: worker processes (default 1)")
    p.add_argument("--limit", type=int, default=0, help="with --instances: only the first N rows")
    p.set_defaults(func=run)


def _result_dict(res) -> dict:
    out = {"status": res.status, "seconds": round(res.seconds, 4), "stage": res.stage}
    if res.x is not None:
        out["counterexample"] = {"x": [float(v) for v in res.x], "y": [float(v) for v in res.y],
                                 "validated": bool(res.validated)}
    if res.message:
        out["message"] = res.message
    return out


def run_single(args: argparse.Namespace) -> int:
    from verify.counterexample import format_result
    from verify.errors import ClarkeError
    from verify.pipeline import verify_instance
    try:
        if not args.model or not args.spec:
            raise CliError("give MODEL.onnx and SPEC.vnnlib, or --instances CSV")
        res = verify_instance(args.model, args.spec, timeout=args.timeout, seed=args.seed,
                              workers=args.workers or None)
        text = format_result(res.status, res.x, res.y)
        if args.result_file:
            write_atomic(args.result_file, text)
    except ClarkeError as e:
        print("error", flush=True)
        return fail(str(e))
    except Exception as e:  # an engine bug must still produce a status line, never a traceback alone
        print("error", flush=True)
        return fail(f"internal error: {type(e).__name__}: {e}")
    print(res.status)
    if args.json:
        print_json(_result_dict(res))
    return 0


def _one(job: tuple[str, str, float, int, int]) -> dict:
    onnx, vnnlib, timeout, seed, workers = job
    from verify.errors import ClarkeError
    from verify.pipeline import verify_instance
    t0 = time.perf_counter()
    try:
        res = verify_instance(onnx, vnnlib, timeout=timeout, seed=seed, workers=workers)
        d = _result_dict(res)
        d["validated"] = "" if res.x is None else "yes"
    except ClarkeError as e:
        d = {"status": "error", "seconds": round(time.perf_counter() - t0, 4), "message": str(e), "validated": ""}
    except Exception as e:  # keep the batch going; the row says what broke
        d = {"status": "error", "seconds": round(time.perf_counter() - t0, 4),
             "message": f"internal error: {type(e).__name__}: {e}", "validated": ""}
    return d


def _read_instances(path: Path, limit: int) -> list[tuple[str, str, float]]:
    if not path.is_file():
        raise CliError(f"{path}: no such instances file")
    rows = []
    with path.open() as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#") or row[0] == "onnx":
                continue
            if len(row) < 3:
                raise CliError(f"{path}:{i}: expected 'onnx,vnnlib,timeout'")
            try:
                rows.append((row[0].strip(), row[1].strip(), float(row[2])))
            except ValueError:
                raise CliError(f"{path}:{i}: bad timeout {row[2]!r}") from None
    return rows[:limit] if limit else rows


def run_instances(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    csv_path = Path(args.instances)
    base = csv_path.parent
    rows = _read_instances(csv_path, args.limit)
    from verify.pipeline import available_cores
    workers = args.workers or max(1, available_cores() // max(1, args.jobs))  # cores not taken by other jobs
    jobs = [(str(base / o), str(base / v), t * args.timeout_scale, args.seed, workers) for o, v, t in rows]
    expected = {}
    exp_path = base / "expected.csv"
    if exp_path.is_file():
        with exp_path.open() as f:
            for r in csv.DictReader(f):
                expected[(r["onnx"], r["vnnlib"])] = r
    results: list[dict | None] = [None] * len(jobs)
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("", total=len(jobs))
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                futures = {pool.submit(_one, j): i for i, j in enumerate(jobs)}
                for fut in futures:
                    i = futures[fut]
                    results[i] = fut.result()
                    bar.update(task, advance=1, description=f"{Path(rows[i][0]).name}: {results[i]['status']}")
        else:
            for i, j in enumerate(jobs):
                results[i] = _one(j)
                bar.update(task, advance=1, description=f"{Path(rows[i][0]).name}: {results[i]['status']}")
    table_rows = []
    for (o, v, _), res in zip(rows, results, strict=True):
        exp = expected.get((o, v), {}).get("result", "")
        correct = res["status"] in ("sat", "unsat") and res["status"] == exp
        wrong = res["status"] in ("sat", "unsat") and exp in ("sat", "unsat") and res["status"] != exp
        table_rows.append({"onnx": o, "vnnlib": v, "status": res["status"], "seconds": res["seconds"],
                           "counterexample_validated": res.get("validated", ""), "expected": exp,
                           "correct": int(correct), "wrong": int(wrong)})
    if args.report:
        import io
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(table_rows[0].keys()) if table_rows else ["onnx"])
        w.writeheader()
        w.writerows(table_rows)
        write_atomic(args.report, buf.getvalue())
    _summary(table_rows, bool(expected), args)
    return 0


def _summary(rows: list[dict], have_expected: bool, args) -> None:
    solved = [r for r in rows if r["status"] in ("sat", "unsat")]
    times = [r["seconds"] for r in rows]
    summary = {"instances": len(rows), "solved": len(solved), "sat": sum(r["status"] == "sat" for r in rows),
               "unsat": sum(r["status"] == "unsat" for r in rows),
               "timeout": sum(r["status"] == "timeout" for r in rows),
               "error": sum(r["status"] == "error" for r in rows),
               "total_seconds": round(sum(times), 2),
               "median_seconds": round(statistics.median(times), 3) if times else 0.0}
    if have_expected:
        summary["correct"] = sum(r["correct"] for r in rows)
        summary["wrong"] = sum(r["wrong"] for r in rows)
        summary["known"] = sum(r["expected"] in ("sat", "unsat") for r in rows)
    if args.json:
        print_json(summary)
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"clarke verify: {args.instances}")
    for k in summary:
        t.add_column(k.replace("_", " "), justify="right")
    t.add_row(*[str(v) for v in summary.values()])
    Console().print(t)


def run(args: argparse.Namespace) -> int:
    if args.instances:
        return run_instances(args)
    return run_single(args)



