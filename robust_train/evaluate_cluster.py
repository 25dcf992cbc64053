"""The attack-and-certify pass of :func:`robust_train.evaluate.evaluate` on a Ray cluster.

The points are cut into shards of whole batches; each shard is one task running the same per-batch code as a local
run (``attack_and_certify``) with its global offset, so random starts and certificates are those of an undivided run.
Only the masks come back; a shard whose worker died on every retry fails the evaluation (no partial report).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import Any

import torch

from robust_train.evaluate import SoundnessError, attack_and_certify
from verify.cluster import ClusterSpec, Failure, Job, cluster_cpus, run_jobs, session
from verify.errors import ClarkeError


def shard_task(model: torch.nn.Module, x, y, eps, attacks, certify, batch_size, classes, seed, apgd_steps,
               alpha_iterations, precision, input_shape, offset) -> dict[str, Any]:
    """One shard on a worker (CPU, the model's dtype): the masks as bool tensors and the seconds spent."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return attack_and_certify(model, x, y, eps, attacks, certify, batch_size, classes, seed, False, apgd_steps,
                              alpha_iterations, precision, input_shape, torch.device("cpu"), dtype, offset)


def _add_seconds(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add_seconds(total.setdefault(k, {}), v)
        else:
            total[k] = total.get(k, 0.0) + float(v)


def attack_and_certify_on_cluster(cluster: ClusterSpec, model, x_all, y_all, eps, attacks, certify, batch_size,
                                  classes, seed, progress, apgd_steps, alpha_iterations, precision,
                                  input_shape) -> dict[str, Any]:
    """As ``attack_and_certify`` over all points, sharded over the cluster (about two shards per CPU). ``seconds``
    add the shards' own times (CPU-seconds across the cluster, not wall time)."""
    n = x_all.shape[0]
    param = next(model.parameters(), None)
    cpu_model = model if param is None or param.device.type == "cpu" else copy.deepcopy(model).cpu()
    t0 = time.perf_counter()
    with session(cluster) as ray:
        cpus = max(1, int(cluster_cpus(ray)))
        batches = math.ceil(n / batch_size)
        per_shard = max(1, math.ceil(batches / (2 * cpus))) * batch_size
        model_ref = ray.put(cpu_model)
        jobs = []
        for k, start in enumerate(range(0, n, per_shard)):
            stop = min(start + per_shard, n)
            jobs.append(Job(k, shard_task, (model_ref, x_all[start:stop].cpu(), y_all[start:stop].cpu(), eps,
                                            attacks, certify, batch_size, classes, seed, apgd_steps,
                                            alpha_iterations, precision, input_shape, start),
                            expected_seconds=stop - start, name=f"evaluate[{start}:{stop}]"))
        parts: dict[int, dict[str, Any]] = {}
        failures: list[str] = []

        def done(job: Job, res) -> None:
            if isinstance(res, Failure):
                if res.reason.startswith(SoundnessError.__name__):
                    raise SoundnessError(res.reason.split(": ", 1)[-1])
                failures.append(f"{job.name}: {res.reason}")
                return
            parts[job.key] = res
            if progress:
                finished = sum(int(p["correct"].shape[0]) for p in parts.values())
                print(f"evaluate: {finished}/{n} points on the cluster, {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)

        run_jobs(ray, jobs, done)
    if failures:
        raise ClarkeError(f"{len(failures)} of {len(jobs)} evaluation shards failed; first: {failures[0]}")
    ordered = [parts[k] for k in range(len(jobs))]
    seconds: dict[str, Any] = {"clean": 0.0, "attack": dict.fromkeys(attacks, 0.0),
                               "certify": dict.fromkeys(certify, 0.0), "bab": 0.0}
    for p in ordered:
        _add_seconds(seconds, p["seconds"])
    return {"seconds": seconds, "conflicts": [i for p in ordered for i in p["conflicts"]],
            "correct": torch.cat([p["correct"] for p in ordered]),
            "attacked": {a: torch.cat([p["attacked"][a] for p in ordered]) for a in attacks},
            "cert": {m: torch.cat([p["cert"][m] for p in ordered]) for m in certify}}
