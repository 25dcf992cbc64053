"""Independent jobs on a Ray cluster (``--cluster ray[:ADDRESS]``): fan-out without losing or repeating work.

Each job is one Ray task with the CPUs it asks for. The driver keeps at most as many tasks in flight as the
cluster has CPUs for, submitting the longest expected job first (a longest-processing-time list schedule, within
4/3 of the optimal makespan on identical nodes, Graham 1969), so a hard instance never starts last. A worker
process or node that dies mid-task is retried by Ray (``max_retries``), then reported as a failure with its reason;
a task running past its hard deadline is killed and reported as such. Inputs travel through Ray's object store, so
worker nodes need Clarke installed but no shared file system.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verify.errors import ClarkeError, InputError

log = logging.getLogger("verify.cluster")

INSTALL_HINT = "pip install -e \".[cluster]\" (or pip install ray)"
CLUSTER_HELP = ("run on a Ray cluster: 'ray' starts a local one on this machine, 'ray:ADDRESS' joins a running "
                "cluster (e.g. ray:auto, ray:10.0.0.1:6379), 'ray://HOST:PORT' connects through Ray Client; "
                "worker nodes need Clarke installed, not the input files")
DEFAULT_RETRIES = 2


class ClusterError(ClarkeError):
    """Ray missing, an address that cannot be reached, or a malformed ``--cluster`` value."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: ``address`` ``"local"`` starts a new local Ray instance; anything else is passed to
    ``ray.init(address=...)`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""

    address: str
    text: str


def parse_cluster(text: str) -> ClusterSpec:
    """``ray`` | ``ray:ADDRESS`` | ``ray://HOST:PORT`` (argparse type: raises ValueError naming the form)."""
    value = text.strip()
    if value == "ray":
        return ClusterSpec("local", value)
    if value.startswith("ray://") and len(value) > len("ray://"):
        return ClusterSpec(value, value)
    if value.startswith("ray:") and not value.startswith("ray:/") and len(value) > len("ray:"):
        return ClusterSpec(value[len("ray:"):], value)
    raise InputError(f"bad cluster {text!r}: expected ray, ray:ADDRESS (e.g. ray:auto) or ray://HOST:PORT")


def cluster_arg(text: str) -> ClusterSpec:
    """argparse ``type=`` for ``--cluster``."""
    import argparse

    try:
        return parse_cluster(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_reachable(spec: ClusterSpec, seconds: float = 5.0) -> None:
    """A ``HOST:PORT`` address answers a TCP connection within ``seconds`` (Ray itself retries for minutes)."""
    target = spec.address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "local", "auto", or a form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            pass
    except OSError as e:
        raise ClusterError(f"--cluster {spec.text}: cannot reach {target} ({e.strerror or e})") from None


@contextmanager
def session(spec: ClusterSpec, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray connected for the duration of the block. A Ray already initialised in this process (a caller's own
    cluster) is used as it is and left running; one started here is shut down at the end. ``num_cpus`` caps a
    local instance (default: every core)."""
    ray = import_ray()
    check_reachable(spec)
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": False}
    if spec.address == "local" and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=spec.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"--cluster {spec.text}: cannot connect ({' '.join(str(e).split())[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass
class Job:
    """One task: ``fn(*args)`` with ``num_cpus`` CPUs. ``expected_seconds`` orders the queue (longest first);
    ``deadline``: seconds after submission when a still-running task is killed (None: never)."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple
    expected_seconds: float = 0.0
    tiebreak: float = 0.0  # among equal expected_seconds, larger first (e.g. a difficulty probe)
    num_cpus: float = 1.0
    deadline: float | None = None
    name: str = ""
    submitted: float | None = None  # time.monotonic() when handed to Ray, and when its result came back
    finished: float | None = None


@dataclass
class Failure:
    """A task that produced no result: its worker died more often than the retries allow, or it was killed at
    its deadline (``killed``)."""

    reason: str
    killed: bool = False


@dataclass
class _InFlight:
    job: Job
    cancelled: bool = field(default=False)


def cluster_cpus(ray: Any) -> float:
    """The CPUs the cluster has now (nodes may join or leave); 1 when Ray cannot tell."""
    try:
        return float(ray.cluster_resources().get("CPU", 1.0))
    except Exception:  # a transient GCS hiccup must not stop the run: keep one task going
        return 1.0


def _window(ray: Any, cpus_per_task: float) -> int:
    """Tasks kept in flight: as many as the cluster's CPUs hold (re-read each time)."""
    return max(1, int(cluster_cpus(ray) // max(cpus_per_task, 1e-9)))


def run_jobs(ray: Any, jobs: list[Job], on_done: Callable[[Job, Any], None], *, retries: int = DEFAULT_RETRIES,
             poll: float = 0.5) -> None:
    """Run every job once on the cluster, longest expected first, and call ``on_done(job, result)`` as each one
    finishes (in the driver, in completion order); ``result`` is the task's return value or a :class:`Failure`.
    Each job reaches ``on_done`` exactly once."""
    from ray.exceptions import RayError, RayTaskError, TaskCancelledError

    queue = sorted(jobs, key=lambda j: (-j.expected_seconds, -j.tiebreak))  # stable: ties keep the caller's order
    remote_fns: dict[int, Any] = {}
    flying: dict[Any, _InFlight] = {}
    while queue or flying:
        while queue and len(flying) < _window(ray, queue[0].num_cpus):
            job = queue.pop(0)
            if id(job.fn) not in remote_fns:
                remote_fns[id(job.fn)] = ray.remote(job.fn)
            ref = remote_fns[id(job.fn)].options(num_cpus=job.num_cpus, max_retries=retries,
                                                 name=job.name or job.fn.__name__).remote(*job.args)
            job.submitted = time.monotonic()
            flying[ref] = _InFlight(job)
        ready, rest = ray.wait(list(flying), num_returns=1, timeout=poll)
        if ready and rest:  # everything else already done, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            entry = flying.pop(ref)
            entry.job.finished = time.monotonic()
            try:
                result = ray.get(ref)
            except TaskCancelledError:
                result = Failure(f"killed after {entry.job.deadline:g} s (hard deadline)", killed=True)
            except RayTaskError as e:  # the task itself raised (not retried: it would raise again)
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                text = (str(cause).strip().splitlines() or [""])[0][:300]
                result = Failure(f"{type(cause).__name__}: {text}")
            except RayError as e:  # the worker or its node died on every try
                first = " ".join(str(e).split())[:300]
                result = Failure(f"worker failed {retries + 1} times ({type(e).__name__}: {first})")
            on_done(entry.job, result)
        now = time.monotonic()
        for ref, entry in flying.items():
            job = entry.job
            if job.deadline is not None and not entry.cancelled and now - job.submitted > job.deadline:
                log.warning("%s: past its hard deadline of %g s, killing it", job.name, job.deadline)
                ray.cancel(ref, force=True)
                entry.cancelled = True


def ship(ray: Any, paths: list[str | Path]) -> dict[str, Any]:
    """Each distinct file's bytes in the object store once: ``{path: ObjectRef}``."""
    refs: dict[str, Any] = {}
    for p in paths:
        key = str(p)
        if key not in refs:
            try:
                refs[key] = ray.put(Path(key).read_bytes())
            except OSError as e:
                raise ClusterError(f"{key}: cannot read ({e.strerror})") from None
    return refs


@contextmanager
def materialized(files: Mapping[str, bytes]) -> Iterator[dict[str, str]]:
    """On a worker: the shipped files written under a private temporary directory, with their base names (so
    messages and formats keyed on the suffix still work): ``{original path: local path}``."""
    with tempfile.TemporaryDirectory(prefix="clarke-task-") as tmp:
        local = {}
        for i, (orig, data) in enumerate(files.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            path = folder / Path(orig).name
            path.write_bytes(data)
            local[orig] = str(path)
        yield local


def restore_paths(text: str, local: Mapping[str, str]) -> str:
    """A worker's message with its temporary paths replaced by the user's paths."""
    for orig, path in local.items():
        text = text.replace(path, orig)
    return text

