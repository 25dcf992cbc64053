"""Solver tolerances, and the one rule that turns a solver's dual bound into a sound bound.

Solvers compute with tolerances, so a dual bound ``beta`` is not a proof. It is the objective of a basis whose
reduced costs and row duals have the right sign up to the optimality tolerance ``delta``, rows hold up to the
feasibility tolerance ``eps``. Weak duality with those residuals: for the exact minimiser ``v*``,
``c . v* >= beta - delta (sum_j |v*_j - bound_j| + sum_i slack_i(v*))``, and presolve, cuts and scaling act on the
same scale with ``eps``. So the margin is

    ``margin = max(floor (1 + |beta|),  (eps + delta) (1 + |beta| + S))``,

with ``S`` the model's spread (:class:`verify.mip.model._Model`: column ranges plus row slack bounds at exact
executions, e.g. ``u - 2 l`` per unstable ReLU; ``(1 + |beta|)`` covers the objective's own row and column) and
``floor`` the relative margin used before. Integrality tolerance and MIP gaps only decide when a solve stops and
which primal points count as integral (both enlarge the solver's feasible set: the dual bound stays a bound);
primal witnesses are re-checked on the graph. The tolerances below are the ones set on the solvers in every
mode (:mod:`verify.mip.solvers`); errors of the encoding itself (``_Expr.err``) are added separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerances:
    """What a solve was run with: feasibility (rows and bounds), optimality (reduced costs, row duals),
    integrality, and the relative and absolute MIP gap (None: the solver's default); ``floor``: the smallest
    relative margin on its dual bounds."""

    feasibility: float
    optimality: float
    integrality: float
    gap: float | None
    floor: float

    def margin(self, bound: float, spread: float) -> float:
        """The module docstring's rule (0 for an infinite bound, which is kept as it is)."""
        if not math.isfinite(bound):
            return 0.0
        scale = 1.0 + abs(bound)
        return max(self.floor * scale, (self.feasibility + self.optimality) * (scale + spread))

    def lower(self, bound: float, spread: float, error: float = 0.0) -> float:
        """``bound - margin - error``, rounded down: a sound lower bound from a dual bound ``bound`` of a model
        with spread ``spread`` whose objective misses the exact one by at most ``error``."""
        if not math.isfinite(bound):
            return bound
        return float(np.nextafter(bound - self.margin(bound, spread) - error, -math.inf))

    def stop_at(self, spread: float) -> float:
        """A dual bound at which to stop a solve that only has to prove ``min > 0``: any bound ``b`` above it
        keeps ``lower(b) > 0`` (``margin(b) <= margin(0) + b max(floor, eps + delta) < b``)."""
        return max(1e-9, 3.0 * self.margin(0.0, spread))


STRICT = Tolerances(feasibility=1e-9, optimality=1e-9, integrality=1e-9, gap=1e-9, floor=0.0)
"""Tight tolerances (the solvers' smallest feasibility / optimality tolerances): small verification MIPs."""
FAST = Tolerances(feasibility=1e-9, optimality=1e-9, integrality=1e-5, gap=None, floor=1e-5)
"""The solvers' default integrality tolerance and gaps (what makes tight MIPs slow: with big-M rows an integrality
tolerance of 1e-9 forces deep branching), but the smallest feasibility and optimality tolerances, which the margin
scales with: at Gurobi's defaults (1e-6) the margin of an mnist_fc race MIP (spread ~6e3) would be 1e-2, above
the 4e-4 by which its disjuncts are refuted; at 1e-9 it is the 1e-5 floor, at no measured cost in speed."""
LP = Tolerances(feasibility=1e-9, optimality=1e-9, integrality=0.0, gap=None, floor=1e-6)
"""LP bound tightening (HiGHS simplex; a tight LP costs little more than a loose one)."""


def fast(floor: float) -> Tolerances:
    """:data:`FAST` with another floor (``mip_verify(solver_margin=...)``)."""
    return Tolerances(FAST.feasibility, FAST.optimality, FAST.integrality, FAST.gap, max(floor, 0.0))


def lowered(bound: float, margin: float = FAST.floor) -> float:
    """``bound - margin (1 + |bound|)`` (infinities kept): the relative floor alone, for callers without a model
    (prefer :meth:`Tolerances.lower`)."""
    return bound - margin * (1.0 + abs(bound)) if math.isfinite(bound) else bound
