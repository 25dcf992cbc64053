"""``--cluster``: VNN-COMP instances on a real local Ray cluster (2 CPUs) give the verdicts of a local run; a worker
killed mid-instance is retried and the report stays complete; a driver killed after k rows and resumed gives the
report of an uninterrupted run with no row twice; bad values and a missing Ray give one line, exit 2."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_cli_verify import VNNCOMP, clarke_cmd, run_main
from verify.cluster import Failure, Job, parse_cluster, run_jobs

ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra (in [dev]): pip install -e '.[cluster]'")

TEST_SET = VNNCOMP / "test"
ACAS = VNNCOMP / "acasxu"
# fast ACAS Xu instances (milliseconds to 0.1 s here), sat and unsat
QUICK = [("2_9", 3), ("3_7", 3), ("2_2", 2), ("1_7", 4), ("1_9", 3), ("2_9", 4), ("3_4", 2)]
# instances of 1.5-4 s each on this machine (long enough to be caught running)
SLOW = [("1_1", 1), ("1_1", 4), ("3_1", 1), ("3_3", 1), ("1_2", 3), ("2_1", 3)]


def _exit_now(code: int) -> None:
    os._exit(code)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _acas(net: str, prop: int) -> tuple[str, str]:
    return str(ACAS / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx"), str(ACAS / "vnnlib" / f"prop_{prop}.vnnlib")


def _instances(tmp_path: Path, pairs: list[tuple[str, str]], timeout: float = 60.0) -> Path:
    """An instances.csv (absolute paths) with the ground truth beside it, from the benchmarks' expected.csv."""
    for d in (TEST_SET, ACAS):
        if not (d / "instances.csv").is_file():
            pytest.skip(f"VNN-COMP data not found at {d} (third-party, read from ../shared/data)")
    truth = {}
    for d in (TEST_SET, ACAS):
        with (d / "expected.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                truth[(str(d / r["onnx"]), str(d / r["vnnlib"]))] = r["result"]
    folder = tmp_path / "bench"
    folder.mkdir(exist_ok=True)
    (folder / "instances.csv").write_text("".join(f"{o},{v},{timeout:g}\n" for o, v in pairs))
    (folder / "expected.csv").write_text("onnx,vnnlib,result\n" + "".join(f"{o},{v},{truth[(o, v)]}\n"
                                                                          for o, v in pairs))
    return folder / "instances.csv"


def _test_set_pairs() -> list[tuple[str, str]]:
    if not (TEST_SET / "instances.csv").is_file():
        pytest.skip(f"VNN-COMP data not found at {TEST_SET}")
    with (TEST_SET / "instances.csv").open(newline="") as f:
        return [(str(TEST_SET / r[0]), str(TEST_SET / r[1])) for r in csv.reader(f) if r]


def _report(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _verdicts(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["onnx"], r["vnnlib"], r["status"]) for r in rows]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module; the CLI uses a Ray already initialised as it is."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # the workers get this module's task functions by value (they need not import the tests)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cluster_verdicts_equal_a_local_run_on_a_dozen_instances(cluster, capsys, tmp_path):
    pairs = _test_set_pairs() + [_acas(*q) for q in QUICK]
    csv_path = _instances(tmp_path, pairs)
    code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / "local.csv", "-q")
    assert code == 0, err
    code, out, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / "ray.csv",
                              "--cluster", "ray", "--json")
    assert code == 0, err
    local, remote = _report(tmp_path / "local.csv"), _report(tmp_path / "ray.csv")
    assert len(remote) == 12 and _verdicts(remote) == _verdicts(local)
    assert all(r["correct"] == "1" and r["wrong"] == "0" for r in remote), remote
    assert {r["status"] for r in remote} == {"sat", "unsat"}
    assert all(r["counterexample_validated"] == ("yes" if r["status"] == "sat" else "") for r in remote)
    import json

    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["instances"] == summary["correct"] == 12 and summary["wrong"] == summary["error"] == 0


def test_missing_file_row_is_the_local_runs(cluster, capsys, tmp_path):
    """A row whose network is missing is an error row with the local run's reason; the others still run."""
    pairs = _test_set_pairs()[:2]
    csv_path = _instances(tmp_path, pairs)
    with csv_path.open("a") as f:
        f.write(f"{tmp_path / 'gone.onnx'},{pairs[0][1]},10\n")
    reports = {}
    for name, extra in (("local", []), ("ray", ["--cluster", "ray"])):
        code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / f"{name}.csv",
                                "-q", *extra)
        assert code == 0, err
        reports[name] = _report(tmp_path / f"{name}.csv")
    assert _verdicts(reports["ray"]) == _verdicts(reports["local"])
    assert reports["ray"][-1]["status"] == "error" and "gone.onnx" in reports["ray"][-1]["reason"]
    assert reports["ray"][-1]["reason"] == reports["local"][-1]["reason"]


@contextmanager
def fault_when_running(n: int, action, name_part: str = "ACASXU", timeout: float = 120.0):
    """While the block runs: once ``n`` Ray workers run a task named ``*name_part*`` and still do 0.3 s later (well
    inside the 1.5 s and longer instances), call ``action(pids)`` once, from a thread."""
    stop = threading.Event()

    def watch() -> None:
        end = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < end:
            if len(_ray_task_pids(name_part)) >= n:
                time.sleep(0.3)
                pids = _ray_task_pids(name_part)
                if len(pids) >= n:
                    action(pids)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _ray_task_pids(name_part: str) -> list[int]:
    """Ray worker processes now running a task whose name contains ``name_part`` (their title is
    ``ray::NAME``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and name_part in title:
            pids.append(int(entry.name))
    return pids


def test_worker_killed_mid_instance_is_retried_and_the_report_is_complete(cluster, capsys, tmp_path):
    pairs = [_acas(*s) for s in SLOW[:4]]
    csv_path = _instances(tmp_path, pairs)
    killed: list[int] = []

    def kill_one(pids: list[int]) -> None:
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    with fault_when_running(1, kill_one):
        code, out, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / "r.csv",
                                  "--cluster", "ray", "--json")
    assert code == 0, err
    assert len(killed) == 1  # the fault was injected while an instance ran
    rows = _report(tmp_path / "r.csv")
    assert [(r["onnx"], r["vnnlib"]) for r in rows] == pairs  # each instance once, in the csv's order
    assert all(r["status"] == "unsat" and r["correct"] == "1" for r in rows), rows


def test_task_that_dies_on_every_try_is_an_error_with_its_reason(cluster):
    results = []
    run_jobs(cluster, [Job("boom", _exit_now, (3,), name="dies")], lambda j, r: results.append((j.key, r)),
             retries=1)
    assert len(results) == 1 and results[0][0] == "boom"
    failure = results[0][1]
    assert isinstance(failure, Failure) and not failure.killed and "failed 2 times" in failure.reason


def test_task_past_its_hard_deadline_is_killed(cluster):
    results = []
    t0 = time.monotonic()
    run_jobs(cluster, [Job("slow", _sleep, (60,), deadline=1.0, name="sleeps"),
                       Job("fast", _sleep, (0,), name="quick")], lambda j, r: results.append((j.key, r)))
    assert time.monotonic() - t0 < 30
    got = dict(results)
    assert got["fast"] == 0
    assert isinstance(got["slow"], Failure) and got["slow"].killed and "1 s" in got["slow"].reason


def test_longest_expected_job_is_submitted_first(cluster):
    jobs = [Job(k, _sleep, (0.2,), expected_seconds=t) for k, t in (("a", 1), ("b", 30), ("c", 5), ("d", 30))]
    done = []
    run_jobs(cluster, jobs, lambda j, r: done.append(j.key))
    assert sorted(done) == ["a", "b", "c", "d"]
    # longest first, ties in the caller's order; on 2 CPUs c and a wait for b and d to finish
    by_submission = [j.key for j in sorted(jobs, key=lambda j: j.submitted)]
    assert by_submission == ["b", "d", "c", "a"]
    first_done = min(j.finished for j in jobs if j.key in ("b", "d"))
    assert all(j.submitted >= first_done for j in jobs if j.key in ("a", "c"))


def test_driver_killed_after_k_rows_then_resumed_equals_an_uninterrupted_run(cluster, capsys, tmp_path):
    pairs = [_acas(*s) for s in SLOW]
    csv_path = _instances(tmp_path, pairs)
    report = tmp_path / "cut.csv"
    driver = subprocess.Popen([*clarke_cmd(), "verify", "--instances", str(csv_path), "--report", str(report),
                               "--cluster", "ray", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    k = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        k = len(_report(report)) if report.exists() else 0
        if k >= 2:
            break
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)  # the driver only: its local Ray cluster notices and stops by itself
    driver.wait()
    assert 2 <= k < len(pairs), (k, driver.stderr.read())
    kept = _report(report)
    assert 2 <= len(kept) < len(pairs)
    code, out, err = run_main(capsys, "verify", "--instances", csv_path, "--report", report, "--resume",
                              "--cluster", "ray", "-q")
    assert code == 0, err
    resumed = _report(report)
    for r in kept:  # rows of the first run are kept as they were, not run again
        assert r in resumed
    code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / "whole.csv",
                            "--cluster", "ray", "-q")
    assert code == 0, err
    whole = _report(tmp_path / "whole.csv")
    assert _verdicts(resumed) == _verdicts(whole) == [(o, v, "unsat") for o, v in pairs]
    assert len({(r["onnx"], r["vnnlib"]) for r in resumed}) == len(resumed) == len(pairs)


@pytest.mark.parametrize("value", ["", "rayy", "ray:", "ray://", "spark://x", "ray:/x"])
def test_bad_cluster_value_is_one_line(capsys, tmp_path, value):
    code, _, err = run_main(capsys, "verify", "--instances", tmp_path / "x.csv", "--cluster", value)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--cluster" in err


def test_cluster_forms():
    assert parse_cluster("ray").address == "local"
    assert parse_cluster("ray:auto").address == "auto"
    assert parse_cluster("ray:10.0.0.1:6379").address == "10.0.0.1:6379"
    assert parse_cluster("ray://head:10001").address == "ray://head:10001"


@pytest.mark.parametrize("argv, option", [
    (["--cluster", "ray", "--jobs", "2"], "--jobs"),
    (["--retries", "1"], "--retries"),
    (["--cpus-per-instance", "2"], "--cpus-per-instance"),
    (["--cluster", "ray", "--workers", "2"], "--workers"),
])
def test_cluster_option_conflicts_are_one_line(capsys, tmp_path, argv, option):
    csv_path = tmp_path / "i.csv"
    csv_path.write_text("a.onnx,b.vnnlib,1\n")
    code, _, err = run_main(capsys, "verify", "--instances", csv_path, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err


def test_without_ray_cluster_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    pairs = _test_set_pairs()[:1]
    csv_path = _instances(tmp_path, pairs)
    code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--cluster", "ray", "--report",
                            tmp_path / "r.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".[cluster]" in err
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("address", ["ray:127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_cluster_is_one_line_and_writes_nothing(capsys, tmp_path, address):
    """Refused within seconds (Ray alone retries for minutes); the report is not touched."""
    csv_path = _instances(tmp_path, _test_set_pairs()[:1])
    report = tmp_path / "r.csv"
    report.write_text("kept\n")
    t0 = time.monotonic()
    code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--cluster", address, "--report", report)
    assert time.monotonic() - t0 < 20
    assert code == 2 and len(err.strip().splitlines()) == 1 and address in err and "cannot reach" in err
    assert report.read_text() == "kept\n"


# ------------------------------------------------------------------------------------------ certification over data


def test_lipschitz_centres_on_the_cluster_equal_a_local_call(cluster, capsys, tmp_path):
    import json

    import numpy as np

    model = Path(__file__).resolve().parents[1] / "examples" / "mlp_8x32x32x3.onnx"
    centres = tmp_path / "c.npy"
    np.save(centres, np.random.default_rng(0).uniform(-1, 1, (23, 8)))
    code, out, err = run_main(capsys, "lipschitz", model, "--centers", centres, "--eps", "0.05", "--json")
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run_main(capsys, "lipschitz", model, "--centers", centres, "--eps", "0.05", "--json",
                              "--cluster", "ray")
    assert code == 0, err
    remote = json.loads(out)
    assert remote["outputs"] == local["outputs"] and len(remote["upper"]) == 23
    a, b = np.array(local["per_output"]), np.array(remote["per_output"])
    # the same bound per box, up to float64 summation order in batched products
    assert np.abs(a - b).max() <= 1e-12 * np.abs(a).max()
    code, _, err = run_main(capsys, "lipschitz", model, "--center", centres, "--eps", "0.05", "--cluster", "ray")
    assert code == 2 and "--cluster goes with --centers" in err


def test_evaluate_on_the_cluster_gives_the_local_answers(cluster):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from robust_train.attacks import pgd
    from robust_train.evaluate import evaluate

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for it in range(150):
        b = torch.randint(0, 1400, (256,), generator=g)
        xa = pgd(model, x[b], y[b], 0.03, steps=3, generator=g) if it >= 50 else x[b]
        opt.zero_grad()
        F.cross_entropy(model(xa), y[b]).backward()
        opt.step()
    data = (x[1400:1500], y[1400:1500])
    kw = dict(attacks=("pgd20", "apgd-ce"), certify=("ibp", "crown"), batch_size=16, per_point=True, seed=3)
    torch.set_num_threads(1)  # as Ray's workers run (OMP_NUM_THREADS=1): the same float summation order
    local = evaluate(model.eval(), data, 0.03, **kw)
    remote = evaluate(model, data, 0.03, cluster=parse_cluster("ray"), **kw)
    assert remote["points"] == local["points"]
    for key in ("clean_accuracy", "robust_accuracy", "certified_accuracy", "attack_accuracy", "certified_by_method",
                "per_class", "rounding_conflicts"):
        assert remote[key] == local[key], key
    # a mix of outcomes, so the comparison means something
    assert 0 < local["certified_accuracy"] < local["robust_accuracy"] < local["clean_accuracy"]
