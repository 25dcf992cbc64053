"""``clarke verify``: decide VNN-COMP instances (ONNX + VNNLIB), singly or a whole instances.csv."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from verify.allocator import tune_allocator
from verify.cli.common import (
    CliError,
    HelpFormatter,
    add_verbosity,
    fail,
    nonneg_int,
    number,
    positive_float,
    print_json,
    seed_int,
    write_atomic,
)
from verify.cluster import CLUSTER_HELP, DEFAULT_RETRIES, cluster_arg
from verify.device import device_arg

log = logging.getLogger("verify.cli.verify")
MAX_PROCESSES = 512  # --jobs / --workers: beyond any machine we run on; a typo must not fork thousands

DESCRIPTION = """Verify a VNNLIB property of an ONNX network, as in VNN-COMP. The first stdout line is the
status: sat (a counterexample exists; it was re-checked with onnxruntime), unsat (the property holds),
timeout, unknown, or error (bad input; details on stderr, exit status 2).

  clarke verify net.onnx prop.vnnlib --timeout 60 --result-file out.txt
  clarke verify --instances bench/instances.csv --timeout-scale 0.5 --report report.csv --jobs 2
  clarke verify --instances bench/instances.csv --report report.csv --cluster ray:auto --resume

With --instances, paths in the csv are relative to it; when expected.csv sits beside it, a summary
(solved, correct, wrong, total and median time) is printed. The --report csv is written row by row as
instances finish (a killed run keeps them; --resume skips them), then sorted in the csv's order; a row
whose status is error carries its reason, also printed on stderr and listed in the summary.

With --cluster (Ray; pip install -e ".[cluster]"), each instance is one task with --cpus-per-instance CPUs,
longest timeout first and, among equal timeouts, the hardest by a quick CROWN probe (--order); the network
and property travel through Ray's object store (nodes need Clarke, not the files). A worker or node that dies
mid-instance is retried on another (--retries), then reported as error; an instance still running at twice its
timeout + 60 s is killed and reported as timeout. The answers are those of a local run: --cluster only changes
where an instance runs.

Exit status: 0 when a status is printed (sat, unsat, timeout, unknown; with --instances, when the batch
ran, even if some rows are errors); 2 with one line on stderr for an error (bad file or option; a single
instance also prints the status line 'error')."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify VNN-COMP instances (ONNX + VNNLIB): sat / unsat / timeout",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("model", nargs="?", help="ONNX model file")
    p.add_argument("spec", nargs="?", help="VNNLIB property file")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="time limit in seconds, > 0 (default 60)")
    p.add_argument("--result-file", metavar="PATH",
                   help="write the VNN-COMP result file (status, and the counterexample for sat), atomically")
    p.add_argument("--json", action="store_true",
                   help="after the status line, print one JSON object: status, seconds, stage, counterexample")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed of the attacks (default 0)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="where the attack, the bounds and the split searches run: cpu (the default), auto (a CUDA "
                        "GPU when present), cuda or cuda:N; the model check, onnxruntime and MIP solvers use the CPU")
    p.add_argument("--workers", type=number(int, 0, MAX_PROCESSES), default=0,
                   help="processes for the MIP refinement of intermediate bounds on hard ReLU networks "
                        "(default 0: every core; with --instances, the cores divided among the --jobs)")
    p.add_argument("--instances", metavar="CSV", help="run every row (onnx,vnnlib,timeout) of an instances.csv")
    p.add_argument("--timeout-scale", type=positive_float,
                   help="with --instances: multiply each instance's timeout by this factor, > 0 (default 1)")
    p.add_argument("--report", metavar="OUT.csv",
                   help="with --instances: write one row per instance here, as each finishes")
    p.add_argument("--resume", action="store_true",
                   help="with --instances and --report: keep the rows already in the report, run the others")
    p.add_argument("--jobs", type=number(int, 1, MAX_PROCESSES),
                   help="with --instances: worker processes, >= 1 (default 1)")
    p.add_argument("--limit", type=nonneg_int, help="with --instances: only the first N rows (default 0: all)")
    p.add_argument("--cluster", type=cluster_arg, metavar="ray[:ADDRESS]",
                   help="with --instances: " + CLUSTER_HELP)
    p.add_argument("--cpus-per-instance", type=number(int, 1, MAX_PROCESSES),
                   help="with --cluster: CPUs each instance asks for (also its MIP processes; default 1)")
    p.add_argument("--retries", type=number(int, 0, 100),
                   help=f"with --cluster: re-runs of an instance whose worker died (default {DEFAULT_RETRIES})")
    p.add_argument("--order", choices=("probe", "timeout"),
                   help="with --cluster: start first the longest timeouts and, among equal ones, the instances a "
                        "cheap CROWN probe finds hardest (probe, the default), or the timeouts alone in csv order")
    add_verbosity(p)
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
                              workers=args.workers or None, device=args.device)
        text = format_result(res.status, res.x, res.y)
        if args.result_file:
            write_atomic(args.result_file, text)
    except (ClarkeError, ValueError) as e:
        print("error", flush=True)
        return fail(str(e))
    except Exception as e:  # an engine bug must still produce a status line, never a traceback alone
        print("error", flush=True)
        return fail(f"internal error: {type(e).__name__}: {e}")
    print(res.status)
    if args.json:
        print_json(_result_dict(res))
    return 0


def _one_line(text: str) -> str:
    """A reason fit for one csv cell and one stderr line."""
    return " ".join(str(text).split())


def _one(job: tuple[str, str, float, int, int, str]) -> dict:
    onnx, vnnlib, timeout, seed, workers, device = job
    from verify.errors import ClarkeError
    from verify.pipeline import verify_instance
    t0 = time.perf_counter()
    try:
        res = verify_instance(onnx, vnnlib, timeout=timeout, seed=seed, workers=workers, device=device)
        d = _result_dict(res)
        d["validated"] = "" if res.x is None else "yes"
    except (ClarkeError, ValueError) as e:
        d = {"status": "error", "seconds": round(time.perf_counter() - t0, 4), "message": str(e), "validated": ""}
    except Exception as e:  # keep the batch going; the row says what broke
        d = {"status": "error", "seconds": round(time.perf_counter() - t0, 4),
             "message": f"internal error: {type(e).__name__}: {e}", "validated": ""}
    if d["status"] == "error" and not d.get("message"):
        d["message"] = "unknown error"
    return d


def verify_task(onnx: str, onnx_data: bytes, vnnlib: str, vnnlib_data: bytes, timeout: float, seed: int,
                workers: int, device: str = "cpu") -> dict:
    """One instance on a cluster worker: the shipped files on local disk, then :func:`_one`; messages name the
    user's paths."""
    from verify.cluster import materialized, restore_paths

    tune_allocator()  # a Ray worker is not started by the clarke command
    with materialized({onnx: onnx_data, vnnlib: vnnlib_data}) as local:
        d = _one((local[onnx], local[vnnlib], timeout, seed, workers, device))
    if d.get("message"):
        d["message"] = restore_paths(d["message"], local)
    return d


def hard_deadline(timeout: float) -> float:
    """Seconds after which a cluster task that has not answered is killed (the engine answers by ``timeout``)."""
    return 2.0 * timeout + 60.0


def _run_on_cluster(ray, args: argparse.Namespace, jobs: dict[int, tuple], names: dict[int, str], finished) -> None:
    """The jobs as Ray tasks (``verify.cluster.run_jobs``), each result handed to ``finished(i, res)``."""
    from verify.cluster import Failure, Job, run_jobs, ship

    cpus = args.cpus_per_instance or 1
    retries = DEFAULT_RETRIES if args.retries is None else args.retries
    missing = [i for i, j in jobs.items() if not all(Path(p).is_file() for p in j[:2])]
    for i in missing:  # the row a local run writes (no such file), without a trip to the cluster
        finished(i, _one(jobs[i]))
    jobs = {i: j for i, j in jobs.items() if i not in missing}
    files = ship(ray, [p for j in jobs.values() for p in j[:2]])
    scores = _probe(jobs) if (args.order or "probe") == "probe" else {}
    tasks = [Job(i, verify_task, (o, files[o], v, files[v], t, seed, cpus, device), expected_seconds=t,
                 tiebreak=scores.get(i, 0.0), num_cpus=cpus, deadline=hard_deadline(t), name=names[i])
             for i, (o, v, t, seed, _, device) in jobs.items()]

    def done(job: Job, res) -> None:
        if isinstance(res, Failure):
            status = "timeout" if res.killed else "error"
            res = {"status": status, "seconds": job.deadline if res.killed else 0.0, "validated": "",
                   "message": res.reason, "killed": res.killed}
            if status == "timeout":
                log.warning("instance %s: %s", names[job.key], res["message"])
        finished(job.key, res)

    run_jobs(ray, tasks, done, retries=retries)


def _probe(jobs: dict[int, tuple]) -> dict[int, float]:
    """``verify.difficulty`` of every job (0 where the probe itself fails: the task will report why)."""
    from verify.difficulty import difficulty

    t0 = time.perf_counter()
    cache: dict = {}
    scores = {}
    for i, (o, v, *_rest) in jobs.items():
        try:
            scores[i] = difficulty(o, v, cache=cache)
        except Exception:  # a bad file is the task's to report, as in a local run
            scores[i] = 0.0
    log.info("difficulty probe of %d instances: %.1f s", len(jobs), time.perf_counter() - t0)
    return scores


def _read_instances(path: Path, limit: int) -> list[tuple[str, str, float]]:
    if path.is_dir():
        raise CliError(f"{path}: is a directory, expected an instances csv")
    if not path.is_file():
        raise CliError(f"{path}: no such instances file")
    rows = []
    try:
        with path.open(newline="") as f:
            for i, row in enumerate(csv.reader(f), 1):
                if not row or not "".join(row).strip() or row[0].startswith("#") or row[0] == "onnx":
                    continue
                if len(row) < 3:
                    raise CliError(f"{path}:{i}: expected 'onnx,vnnlib,timeout'")
                try:
                    t = float(row[2])
                except ValueError:
                    t = float("nan")
                if not t > 0 or t == float("inf"):
                    raise CliError(f"{path}:{i}: bad timeout {row[2]!r} (a number of seconds > 0)")
                rows.append((row[0].strip(), row[1].strip(), t))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{path}: not a csv file ({_one_line(e)})") from None
    if not rows:
        raise CliError(f"{path}: no instances (expected rows 'onnx,vnnlib,timeout')")
    return rows[:limit] if limit else rows


REPORT_FIELDS = ["onnx", "vnnlib", "status", "seconds", "counterexample_validated", "expected", "correct", "wrong",
                 "reason"]


def _check_instance_options(args: argparse.Namespace) -> None:
    """Options that only make sense with (or without) --instances."""
    if args.instances:
        if args.model or args.spec:
            raise CliError("--instances runs the rows of a csv: give no MODEL/SPEC beside it")
        if args.result_file:
            raise CliError("--result-file is for one instance, not --instances (use --report)")
        if args.resume and not args.report:
            raise CliError("--resume needs --report (the report to continue)")
        if args.cluster and args.jobs is not None:
            raise CliError("--jobs runs local processes; with --cluster the cluster's CPUs decide (see "
                           "--cpus-per-instance)")
        for opt, v in (("--cpus-per-instance", args.cpus_per_instance), ("--retries", args.retries),
                       ("--order", args.order)):
            if v is not None and not args.cluster:
                raise CliError(f"{opt} goes with --cluster")
        if args.cluster and args.workers:
            raise CliError("--workers: with --cluster each instance's MIP processes are its --cpus-per-instance")
        return
    given = [opt for opt, v in (("--report", args.report), ("--jobs", args.jobs), ("--limit", args.limit),
                                ("--timeout-scale", args.timeout_scale), ("--resume", args.resume or None),
                                ("--cluster", args.cluster), ("--cpus-per-instance", args.cpus_per_instance),
                                ("--retries", args.retries), ("--order", args.order))
             if v is not None]
    if given:
        raise CliError(f"{given[0]} goes with --instances CSV")


def _previous_rows(report: Path) -> list[dict]:
    """Finished rows of an earlier report (for --resume); a row cut short by a killed run is dropped."""
    if not report.exists():
        return []
    if not report.is_file():
        raise CliError(f"{report}: not a file")
    try:
        with report.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            if list(reader.fieldnames) != REPORT_FIELDS:
                raise CliError(f"{report}: not a report of this version (columns differ); cannot --resume")
            rows = [r for r in reader if None not in r.values() and None not in r and r["status"]]
    except (UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{report}: cannot --resume ({_one_line(e)})") from None
    for r in rows:
        try:
            r["seconds"] = float(r["seconds"])
            r["correct"], r["wrong"] = int(r["correct"]), int(r["wrong"])
        except ValueError:
            raise CliError(f"{report}: malformed row for {r['onnx']}, {r['vnnlib']}; cannot --resume") from None
    return rows


def _csv_text(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class _Report:
    """The report csv, appended to and flushed row by row (``None``: no report asked for)."""

    def __init__(self, path: str | None, keep: list[dict]):
        self.path = Path(path) if path else None
        self.f = None
        if self.path is None:
            return
        # Start from the finished rows only (a torn last line of a killed run must not glue to the next row).
        write_atomic(self.path, _csv_text(keep, header=True))
        try:
            self.f = self.path.open("a", newline="")
        except OSError as e:
            raise CliError(f"{self.path}: cannot write ({e.strerror})") from None

    def add(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(_csv_text([row], header=False))
            self.f.flush()

    def finish(self, rows: list[dict]) -> None:
        """Close, and rewrite atomically in the instances' order (rows were appended as they finished)."""
        if self.f is not None:
            self.f.close()
            write_atomic(self.path, _csv_text(rows, header=True))


def _row(o: str, v: str, res: dict, expected: dict) -> dict:
    exp = expected.get((o, v), {}).get("result", "")
    correct = res["status"] in ("sat", "unsat") and res["status"] == exp
    wrong = res["status"] in ("sat", "unsat") and exp in ("sat", "unsat") and res["status"] != exp
    reason = _one_line(res.get("message", "")) if res["status"] == "error" or res.get("killed") else ""
    return {"onnx": o, "vnnlib": v, "status": res["status"], "seconds": res["seconds"],
            "counterexample_validated": res.get("validated", ""), "expected": exp,
            "correct": int(correct), "wrong": int(wrong), "reason": reason}


def _read_expected(base: Path) -> dict:
    expected = {}
    exp_path = base / "expected.csv"
    if exp_path.is_file():
        try:
            with exp_path.open(newline="") as f:
                for r in csv.DictReader(f):
                    if r.get("onnx") is not None and r.get("vnnlib") is not None:
                        expected[(r["onnx"], r["vnnlib"])] = r
        except (UnicodeDecodeError, csv.Error) as e:
            raise CliError(f"{exp_path}: cannot read ({_one_line(e)})") from None
    return expected


def run_instances(args: argparse.Namespace) -> int:
    from verify.cluster import session

    csv_path = Path(args.instances)
    base = csv_path.parent
    rows = _read_instances(csv_path, args.limit or 0)
    n_jobs = args.jobs or 1
    scale = args.timeout_scale if args.timeout_scale is not None else 1.0
    expected = _read_expected(base)
    keys = {(o, v) for o, v, _ in rows}
    previous = _previous_rows(Path(args.report)) if args.resume else []
    # finished rows, judged again against today's expected.csv
    done = {(r["onnx"], r["vnnlib"]): _row(r["onnx"], r["vnnlib"], {
        "status": r["status"], "seconds": r["seconds"], "validated": r["counterexample_validated"],
        "message": r["reason"]}, expected) for r in previous if (r["onnx"], r["vnnlib"]) in keys}
    from verify.pipeline import available_cores
    workers = args.workers or max(1, available_cores() // n_jobs)  # cores not taken by other jobs
    todo = [i for i, (o, v, _) in enumerate(rows) if (o, v) not in done]
    if done:
        log.info("resuming: %d of %d instances already in %s", len(done), len(rows), args.report)
    jobs = {i: (str(base / rows[i][0]), str(base / rows[i][1]), rows[i][2] * scale, args.seed, workers, args.device)
            for i in todo}
    with contextlib.ExitStack() as stack:
        # connected before anything is written: a missing Ray or an unreachable cluster leaves the report as it was
        ray = stack.enter_context(session(args.cluster)) if args.cluster and jobs else None
        table_rows = _execute(args, rows, jobs, done, expected, ray)
    _summary(table_rows, bool(expected), args)
    return 0


def _execute(args, rows, jobs, done, expected, ray) -> list[dict]:
    """Run the jobs (one process, a local pool, or the cluster), streaming rows into the report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n_jobs = args.jobs or 1
    results: dict[int, dict] = {}
    console = Console(stderr=True)

    def finished(i: int, res: dict, bar: Progress, task) -> None:
        o, v, _ = rows[i]
        results[i] = _row(o, v, res, expected)
        report.add(results[i])
        if res["status"] == "error" and not args.quiet:
            sys.stderr.write(f"clarke: instance {i + 1} ({o}, {v}): error: {results[i]['reason']}\n")
        log.info("instance %d of %d (%s, %s): %s in %.1f s", i + 1, len(rows), o, v, res["status"], res["seconds"])
        bar.update(task, advance=1, description=f"{Path(o).name}: {res['status']}")

    report = _Report(args.report, list(done.values()))  # last of the checks: nothing is written before it
    show_bar = console.is_terminal and not args.quiet and not args.verbose
    with Progress(TextColumn("[bold]verify"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, disable=not show_bar) as bar:
        task = bar.add_task("", total=len(jobs))
        if args.cluster and jobs:
            names = {i: f"{Path(rows[i][0]).name},{Path(rows[i][1]).name}" for i in jobs}
            _run_on_cluster(ray, args, jobs, names, lambda i, res: finished(i, res, bar, task))
        elif n_jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(n_jobs, len(jobs)), initializer=tune_allocator) as pool:
                futures = {pool.submit(_one, j): i for i, j in jobs.items()}
                for fut in as_completed(futures):  # write each row as soon as it is finished
                    try:
                        res = fut.result()
                    except Exception as e:  # e.g. a worker killed by the OS: that row is an error, not the batch
                        res = {"status": "error", "seconds": 0.0, "validated": "",
                               "message": f"worker process failed: {type(e).__name__}: {e}"}
                    finished(futures[fut], res, bar, task)
        else:
            for i, j in jobs.items():
                finished(i, _one(j), bar, task)
    table_rows = [results[i] if i in results else done[(o, v)] for i, (o, v, _) in enumerate(rows)]
    report.finish(table_rows)
    return table_rows


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
    errors = [{"onnx": r["onnx"], "vnnlib": r["vnnlib"], "reason": r["reason"]} for r in rows
              if r["status"] == "error"]
    if args.json:
        print_json({**summary, "errors": errors})
        return
    from rich.console import Console
    from rich.table import Table
    # Vertical (one row per figure): whole names at any width; a wide row of 11 columns was cut at 80.
    t = Table(title=f"clarke verify: {args.instances}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        t.add_row(k.replace("_", " "), str(v))
    console = Console()
    console.print(t)
    if errors:
        e = Table(title="errors")
        e.add_column("instance", overflow="fold")
        e.add_column("reason", overflow="fold")
        for r in errors:
            e.add_row(f"{r['onnx']}, {r['vnnlib']}", r["reason"])
        console.print(e)


def run(args: argparse.Namespace) -> int:
    _check_instance_options(args)
    if not getattr(args, "cluster", None):  # on a cluster each worker resolves it
        from verify.device import resolve_device
        resolve_device(args.device)  # a missing GPU is one line, before any instance runs
    if args.instances:
        return run_instances(args)
    return run_single(args)
