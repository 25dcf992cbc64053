""":func:`lipschitz_batch` over many centres on a Ray cluster: the boxes cut into contiguous shards, one task each.

Every box is bounded as in one local call (the batched methods bound each box independently); the values agree with
a local run up to float64 summation order in batched products (measured: 2e-16 relative), and each is a certified
bound either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from verify.cluster import ClusterSpec, Failure, Job, cluster_cpus, run_jobs, session, ship
from verify.errors import ClarkeError
from verify.lipschitz.batch import BATCHED, BatchLipschitzResult


def lipschitz_shard(model_name: str, model_data: bytes, lo: np.ndarray, hi: np.ndarray, outputs, method: str,
                    timeout: float) -> tuple[np.ndarray, list[int]]:
    """One shard on a worker: ``(per_output [b, K], outputs)`` of :func:`lipschitz_batch` on the shipped model."""
    from verify.cluster import materialized
    from verify.frontends.onnx_frontend import load_onnx
    from verify.lipschitz.batch import lipschitz_batch

    with materialized({model_name: model_data}) as local:
        graph = load_onnx(local[model_name])
    res = lipschitz_batch(graph, lo, hi, outputs=outputs, method=method, timeout=timeout)
    return res.per_output.numpy(), res.outputs


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges covering ``0..n`` with sizes differing by at most one."""
    edges = np.linspace(0, n, min(n, shards) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def lipschitz_batch_cluster(model_path: str | Path, x_lo: np.ndarray, x_hi: np.ndarray, cluster: ClusterSpec, *,
                            outputs=None, method: str = "crown", timeout: float = 10.0,
                            retries: int = 2) -> BatchLipschitzResult:
    """As :func:`verify.lipschitz.lipschitz_batch` on an ONNX file, the ``[B, n]`` boxes spread over the cluster
    (about two shards per CPU). A shard whose worker died on every retry raises ClarkeError: no partial result."""
    t0 = time.perf_counter()
    path = Path(model_path)
    lo, hi = np.asarray(x_lo, dtype=np.float64), np.asarray(x_hi, dtype=np.float64)
    per_box = 0.0 if method in BATCHED else timeout  # the per-box methods spend up to their timeout on each box
    with session(cluster) as ray:
        cpus = max(1, int(cluster_cpus(ray)))
        model = ship(ray, [path])[str(path)]
        ranges = shard_bounds(lo.shape[0], 2 * cpus)
        jobs = [Job(k, lipschitz_shard, (path.name, model, lo[a:b], hi[a:b], outputs, method, timeout),
                    expected_seconds=(b - a) * per_box,
                    deadline=None if not per_box else 2 * (b - a) * per_box + 60, name=f"lipschitz[{a}:{b}]")
                for k, (a, b) in enumerate(ranges)]
        parts: dict[int, tuple[np.ndarray, list[int]]] = {}
        failures: list[str] = []

        def done(job: Job, res) -> None:
            if isinstance(res, Failure):
                failures.append(f"shard {job.name}: {res.reason}")
            else:
                parts[job.key] = res

        run_jobs(ray, jobs, done, retries=retries)
    if failures:
        raise ClarkeError(f"{len(failures)} of {len(jobs)} shards failed; first: {failures[0]}")
    per = torch.from_numpy(np.concatenate([parts[k][0] for k in range(len(ranges))]))
    outs = parts[0][1]
    return BatchLipschitzResult(per.max(1).values, per, list(outs), method, time.perf_counter() - t0)

