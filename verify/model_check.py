"""Check the engine's reading of an ONNX model against onnxruntime before any verdict.

A frontend that misreads a model (an op's semantics, a dtype) makes every bound about some other network.
So at load, the IR's forward pass (in the model's precision) is compared with onnxruntime's on a few points
of the input region: the box centres and corners plus seeded random points. The tolerance is scaled to the
computation: twice the width of the interval enclosure of the IR at that point in the model's precision
(which contains every floating-point evaluation of the network there, ``verify.rounding``), plus a relative
floor for implementations whose elementary functions round differently (onnxruntime's sigmoid/tanh).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from verify.bounds.crown import intermediate_bounds
from verify.counterexample import run_onnxruntime
from verify.errors import ModelError, UnboundedError
from verify.graph import Graph

REL_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-12}


def sample_points(boxes: list[tuple[np.ndarray, np.ndarray]], per_box: int = 2, seed: int = 0,
                  limit: int = 12) -> np.ndarray:
    """Centre, lower and upper corner and ``per_box`` uniform points of each box (float64 ``[N, n]``)."""
    gen = np.random.default_rng(seed)
    pts = []
    for lo, hi in boxes:
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        pts += [(lo + hi) / 2, lo, hi]
        pts += [lo + gen.random(lo.shape) * (hi - lo) for _ in range(per_box)]
    return np.stack(pts[:limit])


def _point_widths(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Widths ``[N, K]`` of the output's rigorous interval at the points ``x`` (the rounding the IR may differ by)."""
    pts = x.reshape(-1, *graph.input_shape)
    lo, hi = intermediate_bounds(graph, pts, pts, "ibp")[graph.output]
    return (hi - lo).reshape(x.shape[0], -1).double()


def check_against_onnxruntime(graph: Graph, onnx_path: str | os.PathLike, points: np.ndarray) -> float:
    """Raise ``ModelError`` naming the largest deviation when the IR and onnxruntime disagree at ``points``
    (float64 ``[N, n]``, cast to the model's input precision first); returns the largest deviation seen."""
    dtype = graph.dtype
    x = torch.as_tensor(points, device=graph.device).to(dtype)  # the points the model really sees
    with torch.no_grad():
        ours = graph(x.reshape(-1, *graph.input_shape)).reshape(x.shape[0], -1).double()
        try:
            width = _point_widths(graph, x)
        except UnboundedError:  # some point has no bound (e.g. a divisor of exactly 0): one at a time, those skipped
            rows = []
            for k in range(x.shape[0]):
                try:
                    rows.append(_point_widths(graph, x[k:k + 1]))
                except UnboundedError:
                    rows.append(torch.full((1, ours.shape[1]), float("nan"), dtype=torch.float64, device=x.device))
            width = torch.cat(rows)
    worst = 0.0
    for k in range(x.shape[0]):
        ref = torch.as_tensor(run_onnxruntime(onnx_path, x[k].double().cpu().numpy()), device=x.device)
        if ref.numel() != ours.shape[1]:
            raise ModelError(f"{onnx_path}: onnxruntime gives {ref.numel()} outputs, the IR {ours.shape[1]}")
        if not bool(torch.isfinite(ref).all()) or not bool(torch.isfinite(width[k]).all()):
            continue  # the model itself overflows at this point, or has no bound there: nothing to compare
        dev = (ours[k] - ref).abs()
        tol = 2 * width[k] + REL_FLOOR.get(dtype, 1e-5) * (1 + ref.abs().max())
        bad = ~(dev <= tol)  # NaN counts as a mismatch
        if bool(bad.any()):
            j = int(torch.where(bad, dev.nan_to_num(float("inf")), torch.zeros_like(dev)).argmax())
            raise ModelError(f"{onnx_path}: Clarke's reading of the model deviates from onnxruntime by "
                             f"{float(dev[j]):.6g} at output {j} (Clarke {float(ours[k, j]):.9g}, onnxruntime "
                             f"{float(ref[j]):.9g}, tolerance {float(tol[j]):.3g}, input point {k}); no verdict")
        worst = max(worst, float(dev.max()) if dev.numel() else 0.0)
    return worst
