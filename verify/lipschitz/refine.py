"""MIP refinement of the forward bounds that fix the Jacobian's gates (issue 16, item 3).

A local Lipschitz bound is only as tight as the pre-activation bounds ``[l_z, u_z]``: every ReLU with
``l_z < 0 < u_z`` leaves its gate in ``[0, 1]``. Layer by layer (all but the first, whose bounds over a box are
exact), each unstable pre-activation is minimised and maximised over the exact big-M encoding of the layers below
(Tjeng et al., ICLR 2019) with the dual-bound margins of ``verify.mip_refine`` (sound in real arithmetic); CROWN
with the tightened bounds as reference then carries them to the later layers before the next layer is refined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from verify import mip
from verify.bab.common import Deadline
from verify.bounds.crown import intermediate_bounds
from verify.graph import Graph
from verify.mip_refine import RefineResult, _refine_layer, relu_inputs_encoded
from verify.ops.activation import Relu
from verify.ops.base import Bounds
from verify.rounding import cast_box


@dataclass
class RefinedBounds:
    bounds: dict[str, Bounds]  # every forward node; the refined ones within CROWN's
    unstable_before: int  # unstable ReLU inputs with CROWN's bounds
    unstable_after: int
    solves: int = 0
    seconds: float = 0.0
    stopped: str = "done"  # done | deadline | too large | no solver
    layers: list[str] = field(default_factory=list)


def unstable_count(graph: Graph, bounds: dict[str, Bounds]) -> int:
    """ReLU inputs whose bounds straddle zero (summed over the batch of boxes)."""
    return sum(int(((bounds[n.inputs[0]][0] < 0) & (bounds[n.inputs[0]][1] > 0)).sum())
               for n in graph.nodes if isinstance(n.op, Relu))


def mip_refined_bounds(graph: Graph, x_lo: Tensor, x_hi: Tensor, seconds: float, neuron_work: float = 1.0,
                       bounds: dict[str, Bounds] | None = None) -> RefinedBounds:
    """Forward bounds of every node over the single box ``[x_lo, x_hi]`` (``[1, *input_shape]``), the unstable
    ReLU inputs tightened by MIP until ``seconds`` pass (widest relaxation gap ``-l u / (u - l)`` first, at most
    ``neuron_work`` Gurobi work units per solve). ``bounds``: sound starting bounds (default: CROWN's)."""
    t0 = time.perf_counter()
    deadline = Deadline(seconds)
    with torch.no_grad():
        cur = dict(bounds) if bounds is not None else intermediate_bounds(graph, x_lo, x_hi, "crown")
    out = RefinedBounds(cur, unstable_count(graph, cur), 0)
    if x_lo.shape[0] != 1:
        raise ValueError("MIP refinement takes one box at a time")
    if not mip.mip_supported(graph):
        out.stopped = "no solver"
        out.unstable_after = out.unstable_before
        return out
    tally = RefineResult(cur, torch.zeros(1, 0, device=x_lo.device))  # counts the solves
    for model, node, z in relu_inputs_encoded(graph, x_lo, x_hi, cur):
        name = node.inputs[0]
        l, u = mip._widened(*cur[name])
        todo = np.nonzero((l < 0) & (u > 0))[0]
        if model.m and todo.size and not deadline.passed():  # the first layer's bounds over a box are exact
            if max(model.n, model.m) > mip.GUROBI_SIZE_LIMIT:
                out.stopped = "too large"
                break
            gap = -l[todo] * u[todo] / (u[todo] - l[todo])
            todo = todo[np.argsort(-gap)]
            l, u = _refine_layer(model, neuron_work, z, l, u, todo, deadline, tally, 1)
            old_lo, old_hi = cur[name]
            new_lo, new_hi = cast_box(torch.from_numpy(l), torch.from_numpy(u), old_lo.dtype)
            cur[name] = (torch.maximum(old_lo, new_lo.to(old_lo.device).reshape(old_lo.shape)),
                         torch.minimum(old_hi, new_hi.to(old_hi.device).reshape(old_hi.shape)))
            with torch.no_grad():  # carry the tighter layer to the later ones
                cur.update(intermediate_bounds(graph, x_lo, x_hi, "crown", reference=cur))
            out.layers.append(name)
        if deadline.passed() and out.stopped == "done":
            out.stopped = "deadline"
    out.bounds, out.solves = cur, tally.solves
    out.unstable_after = unstable_count(graph, cur)
    out.seconds = time.perf_counter() - t0
    return out
