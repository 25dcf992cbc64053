"""Local Lipschitz bounds for a batch of boxes in one call (per-point certificates over a data set).

``naive`` / ``ibp`` / ``crown`` bound the Clarke Jacobian of every box in one batched pass (the same forward and
Jacobian bounds as :func:`verify.lipschitz.api.lipschitz`, so the values equal one call per box); the other methods
(alpha-crown, bab, mip, lipsdp) run one call per box. Each result is ``max_j sup_{x in box} ||J_j(x)||_1`` over the
selected outputs, rigorous for the exact network (Shi et al., NeurIPS 2022).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from verify.device import device_or_cpu, exact_float32
from verify.errors import ShapeError
from verify.lipschitz.api import (
    METHODS,
    _check_options,
    _host,
    _outputs,
    _prepare,
    box_bounds,
    lipschitz,
    naive_bound,
    torch_threads,
)
from verify.rounding import F64, cast_box

BATCHED = ("naive", "ibp", "crown")


@dataclass
class BatchLipschitzResult:
    """``upper[b]``: certified bound for box b; ``per_output[b, k]``: for output ``outputs[k]``."""

    upper: Tensor
    per_output: Tensor
    outputs: list[int]
    method: str
    seconds: float

    def to_json(self) -> dict:
        return {"upper": self.upper.tolist(), "per_output": self.per_output.tolist(), "outputs": self.outputs,
                "method": self.method, "seconds": self.seconds}


def _as64(x) -> Tensor:
    return _host(x).to(F64)


def lipschitz_batch(model: Any, x_lo, x_hi, outputs: int | Sequence[int] | None = None, method: str = "crown", *,
                    input_shape: Sequence[int] | None = None, precision: str = "auto", timeout: float = 10.0,
                    threads: int | None = 1, device: str | torch.device | None = None) -> BatchLipschitzResult:
    """Upper bounds on the local l_inf Lipschitz constant over each box ``[x_lo[b], x_hi[b]]`` (``[B, *shape]`` or
    ``[B, n]``). ``model``, ``outputs``, ``precision``: as :func:`verify.lipschitz.api.lipschitz`; ``timeout``:
    per box, for the methods that take one; ``device``: as :func:`verify.lipschitz.api.lipschitz`."""
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    _check_options(timeout=timeout)
    lo64, hi64 = _as64(x_lo), _as64(x_hi)
    if lo64.shape != hi64.shape or lo64.dim() < 2 or lo64.shape[0] == 0:
        raise ShapeError(f"boxes must be [B, ...] with B >= 1 and equal shapes, got {tuple(lo64.shape)} and "
                         f"{tuple(hi64.shape)}")
    t0 = time.perf_counter()
    target = device_or_cpu(device)
    with torch_threads(threads), exact_float32(target):
        # the first box fixes the graph and its precision (and checks shape and finiteness like a single call)
        graph, _, _ = _prepare(model, lo64[0], hi64[0], input_shape, precision, target)
        outs = _outputs(graph, outputs)
        b = lo64.shape[0]
        if method not in BATCHED:
            ups = [lipschitz(graph, lo64[i], hi64[i], outputs=outs, method=method, timeout=timeout, attack=False,
                             threads=None, device=target) for i in range(b)]
            per = torch.tensor([[p["upper"] for p in r.per_output] for r in ups], dtype=F64, device="cpu")
        else:
            lo = lo64.reshape(b, *graph.input_shape).to(target)
            hi = hi64.reshape(b, *graph.input_shape).to(target)
            if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise ShapeError("box bounds must be finite")
            if bool((lo > hi).any()):
                raise ShapeError("empty input box: lower > upper")
            lo, hi = cast_box(lo, hi, graph.dtype)
            naive = naive_bound(graph, outs)
            per = (naive.expand(b, -1).clone() if method == "naive"
                   else box_bounds(graph, lo, hi, outs, method, naive).to(F64))
    per = per.cpu()
    return BatchLipschitzResult(per.max(1).values, per, list(outs), method, time.perf_counter() - t0)
