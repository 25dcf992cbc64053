"""Interval bound propagation (Gowal et al., 2018): push ``[l, u]`` through every node in order."""

from __future__ import annotations

from torch import Tensor

from verify.graph import Graph
from verify.ops.base import Bounds


def ibp_all(graph: Graph, x_lo: Tensor, x_hi: Tensor) -> dict[str, Bounds]:
    """Interval bounds of every node; ``x_lo``/``x_hi`` are ``[B, *input_shape]``."""
    out: dict[str, Bounds] = {graph.input_name: (x_lo, x_hi)}
    for n in graph.nodes:
        out[n.name] = n.op.interval(*[out[i] for i in n.inputs])
    return out
