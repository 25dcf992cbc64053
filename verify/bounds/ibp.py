"""Interval bound propagation (Gowal et al., 2018): push ``[l, u]`` through every node in order.

Every interval is a rigorous enclosure: ops whose interval rule rounds are widened by their rounding
allowance (``Op.interval_radius``) and rounded outward (``verify.rounding.widen``), so the result contains
the exact image of the input box and every floating-point evaluation of the op on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from verify.graph import Graph
from verify.ops.base import Bounds, Op
from verify.rounding import accounted, magnitude, widen


def allowance_args(op: Op, in_bounds: Sequence[Bounds]) -> list:
    """What an op's allowance rules take: its inputs' magnitudes ``max(|l|, |u|)``, or, for ops whose slopes depend
    on more than that (``allowance_from_bounds``: products, powers, the reciprocal), the bounds themselves."""
    if getattr(op, "allowance_from_bounds", False):
        return list(in_bounds)
    return [magnitude(*b) for b in in_bounds]


def sound_interval(op: Op, in_bounds: Sequence[Bounds]) -> Bounds:
    """``op.interval`` widened by the op's rounding allowance (no-op for exact interval rules)."""
    lo, hi = op.interval(*in_bounds)
    if op.interval_exact or op.interval_rigorous or not accounted():
        return lo, hi
    return widen(lo, hi, op.interval_radius(allowance_args(op, in_bounds)))


def ibp_all(graph: Graph, x_lo: Tensor, x_hi: Tensor) -> dict[str, Bounds]:
    """Interval bounds of every node; ``x_lo``/``x_hi`` are ``[B, *input_shape]``."""
    out: dict[str, Bounds] = {graph.input_name: (x_lo, x_hi)}
    for n in graph.nodes:
        out[n.name] = sound_interval(n.op, [out[i] for i in n.inputs])
    return out
