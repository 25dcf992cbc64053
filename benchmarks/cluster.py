"""Ray against local processes on a VNN-COMP benchmark, and the schedule on a simulated 8-node cluster, in one run.

    python benchmarks/cluster.py [BENCH_DIR] [--timeout-scale X] [--limit N] [--nodes 8] [--replay-scale 0.5]
                                 [--json]

``BENCH_DIR`` (default ``../shared/data/vnncomp/acasxu``) holds ``instances.csv`` and ``expected.csv``. Four
measurements, all in this run:

1. ``clarke verify --instances --jobs 2`` (a subprocess; wall time from start to exit).
2. The same instances as Ray tasks on a local Ray cluster of 2 CPUs (``verify.cluster.run_jobs`` with the CLI's
   task, ``verify_task``): wall time with and without starting Ray, and the **overhead per instance** = the time from
   handing a task to Ray to its result in the driver, minus the time the instance itself reported (the task's
   start, shipping the files, writing them on the worker, returning the row).
3. The same tasks on a simulated cluster of ``--nodes`` logical nodes of 1 CPU each (``ray.cluster_utils.Cluster``),
   sharing this machine's cores: makespan against its lower bound ``max(sum of instance times / nodes, longest
   instance)``, and against ``sum / nodes`` alone. The instance times are those measured in this run (inflated by
   the nodes sharing the cores).
4. A replay of the schedule without that contention: on the same simulated nodes, one sleeping task per instance
   lasting its time from step 2 (times ``--replay-scale``), submitted in the csv's order, in the CLI's order
   (longest timeout first, then the ``verify.difficulty`` probe; on ACAS Xu every timeout is 116 s) and, for
   reference, longest measured time first (an oracle order no scheduler has before running): makespan / lower
   bound for each.

Steps 2 and 3 submit in the CLI's order too (the probe runs once, in the driver, before them).

Verdicts are counted against ``expected.csv`` (solved, wrong) for steps 1-3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_BENCH = ROOT.parent / "shared" / "data" / "vnncomp" / "acasxu"


def sleep_for(seconds: float) -> float:
    """A replayed instance: hold one CPU of a node for ``seconds``."""
    time.sleep(seconds)
    return seconds


def read_rows(bench: Path, limit: int) -> tuple[list[tuple[str, str, float]], dict[tuple[str, str], str]]:
    with (bench / "instances.csv").open(newline="") as f:
        rows = [(r[0], r[1], float(r[2])) for r in csv.reader(f) if r and not r[0].startswith("#")]
    truth = {}
    if (bench / "expected.csv").is_file():
        with (bench / "expected.csv").open(newline="") as f:
            truth = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(f)}
    return (rows[:limit] if limit else rows), truth


def score(statuses: dict[tuple[str, str], str], truth: dict[tuple[str, str], str]) -> dict[str, int]:
    solved = sum(s in ("sat", "unsat") for s in statuses.values())
    wrong = sum(s in ("sat", "unsat") and truth.get(k) in ("sat", "unsat") and s != truth[k]
                for k, s in statuses.items())
    return {"solved": solved, "wrong": wrong, "instances": len(statuses)}


def run_jobs2(bench: Path, limit: int, scale: float, truth) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.csv"
        cmd = [sys.executable, "-m", "verify.cli.main", "verify", "--instances", str(bench / "instances.csv"),
               "--jobs", "2", "--report", str(report), "--timeout-scale", str(scale), "-q", "--json"]
        if limit:
            cmd += ["--limit", str(limit)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        with report.open(newline="") as f:
            rows = list(csv.DictReader(f))
    statuses = {(r["onnx"], r["vnnlib"]): r["status"] for r in rows}
    return {"wall_s": wall, "sum_instance_s": sum(float(r["seconds"]) for r in rows), **score(statuses, truth)}


def probe_scores(bench: Path, rows) -> tuple[list[float], float]:
    """The CLI's difficulty probe (``clarke verify --cluster --order probe``) of every row, and its seconds."""
    from verify.cli.verify_cmd import _probe

    t0 = time.perf_counter()
    scores = _probe({i: (str(bench / o), str(bench / v)) for i, (o, v, _) in enumerate(rows)})
    return [scores[i] for i in range(len(rows))], time.perf_counter() - t0


def verify_jobs(ray, bench: Path, rows, scale: float, scores: list[float]):
    """The CLI's tasks: the same function, arguments, order keys and deadlines as ``clarke verify --cluster``."""
    from verify.cli.verify_cmd import hard_deadline, verify_task
    from verify.cluster import Job, ship

    paths = [(str(bench / o), str(bench / v)) for o, v, _ in rows]
    files = ship(ray, [p for pair in paths for p in pair])
    return [Job((o, v), verify_task, (po, files[po], pv, files[pv], t * scale, 0, 1), expected_seconds=t * scale,
                tiebreak=sc, deadline=hard_deadline(t * scale), name=f"{Path(o).name},{Path(v).name}")
            for (o, v, t), (po, pv), sc in zip(rows, paths, scores, strict=True)]


def run_on_ray(ray, bench: Path, rows, scale: float, truth, scores: list[float]) -> dict:
    from verify.cluster import Failure, run_jobs

    jobs = verify_jobs(ray, bench, rows, scale, scores)
    results: dict = {}
    t0 = time.monotonic()
    run_jobs(ray, jobs, lambda job, res: results.__setitem__(job.key, (job, res)))
    makespan = time.monotonic() - t0
    statuses, times, overheads = {}, {}, []
    for key, (job, res) in results.items():
        if isinstance(res, Failure):
            statuses[key], times[key] = "error", job.finished - job.submitted
            continue
        statuses[key] = res["status"]
        times[key] = job.finished - job.submitted  # what the instance held a CPU for, as the scheduler saw it
        overheads.append(times[key] - res["seconds"])
    overheads.sort()
    return {"makespan_s": makespan, "instance_s": times, "sum_instance_s": sum(times.values()),
            "longest_s": max(times.values()), "overhead_mean_s": sum(overheads) / len(overheads),
            "overhead_median_s": overheads[len(overheads) // 2], "overhead_max_s": overheads[-1],
            **score(statuses, truth)}


def replay(ray, durations: list[float], nodes: int) -> float:
    from verify.cluster import Job, run_jobs

    jobs = [Job(i, sleep_for, (d,), expected_seconds=0.0) for i, d in enumerate(durations)]
    t0 = time.monotonic()
    run_jobs(ray, jobs, lambda job, res: None, poll=0.05)
    return time.monotonic() - t0


def lower_bound(times: list[float], nodes: int) -> tuple[float, float]:
    """``(max(sum / nodes, longest), sum / nodes)``."""
    return max(sum(times) / nodes, max(times)), sum(times) / nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="?", default=str(DEFAULT_BENCH))
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--replay-scale", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bench = Path(args.bench)
    if not (bench / "instances.csv").is_file():
        sys.exit(f"{bench}: no instances.csv (VNN-COMP data is read from ../shared/data)")
    import ray
    from ray.cluster_utils import Cluster

    rows, truth = read_rows(bench, args.limit)
    out: dict = {"bench": str(bench), "instances": len(rows), "timeout_scale": args.timeout_scale,
                 "cpus": os.cpu_count()}
    print(f"{len(rows)} instances of {bench}, timeout scale {args.timeout_scale:g}, {os.cpu_count()} cores",
          file=sys.stderr)

    out["jobs2"] = run_jobs2(bench, args.limit, args.timeout_scale, truth)
    print(f"--jobs 2: {out['jobs2']['wall_s']:.1f} s", file=sys.stderr)

    scores, probe_s = probe_scores(bench, rows)
    out["probe_s"] = probe_s
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.perf_counter() - t0
    local = run_on_ray(ray, bench, rows, args.timeout_scale, truth, scores)
    ray.shutdown()
    local["ray_start_s"] = start
    local["wall_s"] = start + local["makespan_s"]
    out["ray2"] = local
    print(f"Ray, 2 CPUs: {local['wall_s']:.1f} s", file=sys.stderr)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        sim = run_on_ray(ray, bench, rows, args.timeout_scale, truth, scores)
        lb, lb_sum = lower_bound(list(sim["instance_s"].values()), args.nodes)
        sim.update(lower_bound_s=lb, sum_over_nodes_s=lb_sum, ratio=sim["makespan_s"] / lb,
                   ratio_to_sum_over_nodes=sim["makespan_s"] / lb_sum)
        print(f"{args.nodes} simulated nodes: makespan {sim['makespan_s']:.1f} s", file=sys.stderr)
        measured = [local["instance_s"][(o, v)] * args.replay_scale for o, v, _ in rows]
        lb_r, lb_sum_r = lower_bound(measured, args.nodes)
        timeouts = [t for _, _, t in rows]
        csv_order = replay(ray, measured, args.nodes)
        cli = sorted(range(len(rows)), key=lambda i: (-timeouts[i], -scores[i]))  # the CLI's order (stable)
        cli_order = replay(ray, [measured[i] for i in cli], args.nodes)
        oracle = replay(ray, sorted(measured, reverse=True), args.nodes)
        out["replay"] = {"scale": args.replay_scale, "lower_bound_s": lb_r, "sum_over_nodes_s": lb_sum_r,
                         "csv_order_makespan_s": csv_order, "csv_order_ratio": csv_order / lb_r,
                         "cli_order_makespan_s": cli_order, "cli_order_ratio": cli_order / lb_r,
                         "oracle_order_makespan_s": oracle, "oracle_order_ratio": oracle / lb_r,
                         "cli_order_ratio_to_sum_over_nodes": cli_order / lb_sum_r}
    finally:
        ray.shutdown()
        cluster.shutdown()
    sim.pop("instance_s")
    local.pop("instance_s")
    out["simulated"] = sim
    out["nodes"] = args.nodes
    if args.json:
        print(json.dumps(out))
        return
    report(out)


def report(out: dict) -> None:
    j, r, s, p = out["jobs2"], out["ray2"], out["simulated"], out["replay"]
    n = out["nodes"]
    print(f"\n{out['instances']} instances ({out['bench']}), timeout scale {out['timeout_scale']:g}, "
          f"{out['cpus']} cores\n")
    print("| run | solved | wrong | wall s | sum of instance s |")
    print("|---|---|---|---|---|")
    print(f"| clarke verify --jobs 2 | {j['solved']}/{j['instances']} | {j['wrong']} | {j['wall_s']:.1f} | "
          f"{j['sum_instance_s']:.1f} |")
    print(f"| Ray, local cluster of 2 CPUs (start {r['ray_start_s']:.1f} s included) | {r['solved']}/{r['instances']} "
          f"| {r['wrong']} | {r['wall_s']:.1f} | {r['sum_instance_s']:.1f} |")
    print(f"| Ray, {n} simulated nodes x 1 CPU | {s['solved']}/{s['instances']} | {s['wrong']} | "
          f"{s['makespan_s']:.1f} | {s['sum_instance_s']:.1f} |")
    print(f"\nRay overhead per instance (2 CPUs; task round trip minus the instance's own time): mean "
          f"{r['overhead_mean_s']:.3f} s, median {r['overhead_median_s']:.3f} s, max {r['overhead_max_s']:.3f} s")
    print(f"\n{n} simulated nodes on {out['cpus']} cores: makespan {s['makespan_s']:.1f} s; lower bound "
          f"max(sum/{n}, longest) = {s['lower_bound_s']:.1f} s -> {s['ratio']:.2f}x; sum/{n} = "
          f"{s['sum_over_nodes_s']:.1f} s -> {s['ratio_to_sum_over_nodes']:.2f}x")
    print(f"Replay (sleep tasks, the 2-CPU run's instance times x {p['scale']:g}): lower bound "
          f"{p['lower_bound_s']:.1f} s (sum/{n} = {p['sum_over_nodes_s']:.1f} s); the csv's order "
          f"{p['csv_order_makespan_s']:.1f} s -> {p['csv_order_ratio']:.2f}x; the CLI's order (timeout, then "
          f"probe) {p['cli_order_makespan_s']:.1f} s -> {p['cli_order_ratio']:.2f}x "
          f"({p['cli_order_ratio_to_sum_over_nodes']:.2f}x sum/{n}); longest measured first (oracle) "
          f"{p['oracle_order_makespan_s']:.1f} s -> {p['oracle_order_ratio']:.2f}x")
    print(f"Difficulty probe (driver, all instances): {out['probe_s']:.1f} s")


if __name__ == "__main__":
    main()
