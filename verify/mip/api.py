"""Complete verification by MILP: bounds and verdicts from the exact encoding (:mod:`verify.mip.encoding`).

* :func:`mip_bound` -- ``min c . f(x)`` over the box, with a sound lower bound (also on timeout);
* :func:`mip_verify` -- is there ``x`` in the box with ``A f(x) <= b``? (``min_x max_i (A f(x) - b)_i``,
  stopped early once the sign is known); ``sat`` witnesses are re-checked with the float64 graph;
* :func:`mip_verify_spec` -- the same for every property / disjunct of a parsed VNNLIB spec.

Every dual bound passes through the margin rule of :mod:`verify.mip.tolerance` (the tolerances actually set,
times the model's spread) before it counts, and the encoding's error against the exact network is paid
(rows relaxed, or ``|c| E`` subtracted). A solver's "infeasible" is never a proof: the encoding of a
non-empty box always has the exact executions as feasible points, so such an answer is solver trouble and
reported as ``timeout``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from verify.bounds.crown import lower_bound
from verify.errors import ShapeError
from verify.graph import Graph
from verify.mip.encoding import MipEncoding, encode
from verify.mip.solvers import Backend, _solve
from verify.mip.tolerance import STRICT, fast
from verify.rounding import F64, gamma, unit_roundoff

EVAL_TOL = 1e-6
"""Largest disagreement (relative to ``1 + |value|``) between the MIP's and the graph's outputs at a witness."""
_U = unit_roundoff(F64)


@dataclass
class MipResult:
    """``min c . f(x)`` over the box.

    ``value``: ``c . f(x)`` re-evaluated in float64 at the primal minimiser ``x`` (inf without one) -- an
    achievable value, so an upper bound of the minimum. ``bound``: a sound lower bound of the minimum (the
    solver's dual bound less the tolerance margin and the encoding's error), also on ``timeout`` (then at least
    CROWN's). ``solver_value``: the MIP objective at ``x``. ``margin``: what was subtracted from the dual bound.
    ``infeasible`` is never reported (module docstring); the literal stays for old callers.
    """

    status: Literal["optimal", "timeout", "infeasible"]
    value: float
    bound: float
    x: np.ndarray | None
    backend: str = ""
    solve_time: float = 0.0
    total_time: float = 0.0
    n_binaries: int = 0
    solver_value: float = math.inf
    message: str = ""
    margin: float = 0.0


@dataclass
class MipVerdict:
    """Does some ``x`` in the box satisfy ``A f(x) <= b`` (every row)?

    ``sat``: ``x`` (float64, inside the box) with ``y = f(x)`` evaluated by the float64 graph and
    ``max(A y - b) <= atol``. ``unsat``: a sound lower bound of ``min_x max_i (A f(x) - b)_i`` is positive.
    ``timeout``: neither (time limit, solver trouble, or a witness the graph re-evaluation did not confirm;
    ``message`` says which). ``margin``: ``min_x max_i (A f(x) - b)_i`` as far as known -- at the witness
    for ``sat`` (<= atol), the sound bound for ``unsat`` (> 0), ``nan`` when unknown; ``bound``: the sound bound.
    """

    status: Literal["sat", "unsat", "timeout"]
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    margin: float = math.nan
    bound: float = -math.inf
    backend: str = ""
    solve_time: float = 0.0
    total_time: float = 0.0
    n_binaries: int = 0
    message: str = ""


def _crown_lower(enc: MipEncoding, C: np.ndarray) -> np.ndarray:
    """Rigorous CROWN lower bounds of ``C f(x)`` over the encoded box (reusing its intermediate bounds)."""
    g = enc.graph
    lam = torch.from_numpy(np.ascontiguousarray(C, dtype=np.float64)).reshape(1, C.shape[0], *g.output_shape)
    with torch.no_grad():
        return lower_bound(g, g.output, lam, enc.bounds).reshape(-1).numpy().astype(np.float64)


def _remaining(timeout: float | None, t0: float) -> float | None:
    return None if timeout is None else max(timeout - (time.perf_counter() - t0), 0.0)


def _b_slack(b: np.ndarray) -> np.ndarray:
    """``b`` is the float64 reading of a decimal, within ``u |b|`` of it (as in ``RowSpec``): pay twice that."""
    return 2 * _U * np.abs(b)


def _output_error(enc: MipEncoding, k: int) -> np.ndarray:
    """Per output: its error ``E`` against the exact network plus the rounding of a float64 combination of ``k``
    outputs' maps (``c M``, ``c . c_out``: ``gamma_{k+2} (|M| a + |c_out|)``)."""
    mag = np.abs(enc.output.M) @ enc.model.magnitudes()[enc.output.cols] + np.abs(enc.output.c)
    return enc.output.error() + gamma(k + 2, F64) * mag


def mip_bound(graph: Graph, x_lo, x_hi, c: np.ndarray, timeout: float | None = None,
              backend: Backend = "auto", *, tighten: bool = True, threads: int = 1, seed: int = 0) -> MipResult:
    """``min_x c . f(x)`` over ``[x_lo, x_hi]`` (``c`` over the flattened output) by an exact MILP.

    ``timeout`` (seconds) covers encoding and solving. Raises :class:`UnsupportedOperator` for graphs with
    Sigmoid/Tanh and :class:`SolverUnavailable` when a forced backend cannot run. ``tighten``: LP bound
    tightening before the MILP (see :func:`encode`; at most half of ``timeout``). ``bound`` is the solver's
    dual bound less ``tol.margin`` (strict tolerances, the model's spread) and ``|c| E`` of the output's error.
    """
    t0 = time.perf_counter()
    enc = encode(graph, x_lo, x_hi, tighten, None if timeout is None else timeout / 2)
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    if c.size != enc.output.M.shape[0]:
        raise ShapeError(f"objective has {c.size} entries but the model has {enc.output.M.shape[0]} outputs")
    obj = np.zeros(enc.model.n)
    obj[enc.output.cols] = c @ enc.output.M
    const = float(c @ enc.output.c)
    # the objective c . f_mip misses c . f by |c| E; the float64 sums forming obj and const round too
    error = float(np.abs(c) @ _output_error(enc, c.size)) * (1 + 1e-6)
    sol = _solve(enc.model, obj, backend, _remaining(timeout, t0), threads=threads, seed=seed, tol=STRICT)
    status = "optimal" if sol.status == "optimal" else "timeout"
    dual = sol.bound if sol.status != "infeasible" else -math.inf  # an infeasibility claim bounds nothing
    bound = sol.tol.lower(dual + const, enc.model.spread, error)
    if status == "timeout":  # the CROWN bound is sound too: never report less than it
        bound = max(bound, _crown_lower(enc, c[None])[0])
    message = sol.message
    if sol.status == "infeasible":
        message = f"{message}: the solver found no feasible point, which an exact encoding always has".strip()
    res = MipResult(status, math.inf, bound, None, sol.backend, sol.time, 0.0, enc.model.n_binaries,
                    sol.objective + const, message,
                    margin=sol.tol.margin(dual + const, enc.model.spread) + error)
    if sol.v is not None:
        x = np.clip(sol.v[: enc.n_inputs], enc.x_lo, enc.x_hi)
        res.x = x
        res.value = float(c @ enc.evaluate(x))
        if abs(res.value - res.solver_value) > EVAL_TOL * (1 + abs(res.value)):
            res.message = (res.message + f" graph value {res.value:.9g} differs from the MIP objective "
                           f"{res.solver_value:.9g}").strip()
    res.total_time = time.perf_counter() - t0
    return res


def _row_ranges(enc: MipEncoding, A: np.ndarray, b: np.ndarray, A_x: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of the exact rows ``A f(x) + A_x x - b`` over the box (for the spread of the slack rows)."""
    out_lo, out_hi = (t.reshape(-1).double().numpy() for t in enc.bounds[enc.graph.output])
    lo = np.clip(A, 0, None) @ out_lo + np.clip(A, None, 0) @ out_hi - b
    hi = np.clip(A, 0, None) @ out_hi + np.clip(A, None, 0) @ out_lo - b
    if A_x is not None:
        lo = lo + np.clip(A_x, 0, None) @ enc.x_lo + np.clip(A_x, None, 0) @ enc.x_hi
        hi = hi + np.clip(A_x, 0, None) @ enc.x_hi + np.clip(A_x, None, 0) @ enc.x_lo
    return lo, hi


def mip_verify(graph: Graph, box_lo, box_hi, A: np.ndarray, b: np.ndarray, timeout: float | None = None,
               backend: Backend = "auto", *, A_x: np.ndarray | None = None, atol: float = EVAL_TOL,
               crown_check: bool = True, tighten: bool = True, threads: int = 1, seed: int = 0,
               encoding: MipEncoding | None = None, light: bool = False, solver_margin: float = 0.0
               ) -> MipVerdict:
    """Is there ``x`` in the box with ``A f(x) (+ A_x x) <= b`` (all rows)? ``sat`` / ``unsat`` / ``timeout``.

    Minimises ``s`` subject to ``(A f(x) - b)_i <= s`` (each row relaxed by ``|A_i| E`` of the output's error and
    ``b``'s decimal slack) and stops as soon as the sign of the optimum is known. ``crown_check``: first try
    to refute a row with the CROWN bound (no MIP needed). ``encoding``: reuse an :func:`encode` result for the
    same graph and box; ``tighten``: LP bound tightening (see :func:`encode`); ``light``: Gurobi without cuts
    and primal heuristics (still exact; faster on small models). ``solver_margin`` > 0: the solvers' default
    integrality tolerance and gaps (:data:`~verify.mip.tolerance.FAST`: often several times faster than the tight
    ones used otherwise) with that relative floor on the margin; the margin itself always follows
    :mod:`verify.mip.tolerance` for the tolerances used.
    """
    t0 = time.perf_counter()
    if encoding is None:
        encoding = encode(graph, box_lo, box_hi, tighten, None if timeout is None else timeout / 2)
    enc = encoding
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    k = enc.output.M.shape[0]
    if A.shape[1] != k or A.shape[0] != b.size:
        raise ShapeError(f"spec A {A.shape} / b {b.shape} does not fit {k} outputs")
    if A_x is not None:
        A_x = np.atleast_2d(np.asarray(A_x, dtype=np.float64))
        if A_x.shape != (A.shape[0], enc.n_inputs):
            raise ShapeError(f"A_x must be {(A.shape[0], enc.n_inputs)}, got {A_x.shape}")
    nb = enc.model.n_binaries
    crown = -math.inf  # sound lower bound of max_i (A f(x) - b)_i (mixed rows left out)
    if A.shape[0] and A_x is None:
        rows = _crown_lower(enc, A) - b
        rows = np.nextafter(rows - _b_slack(b) - 2 * _U * np.abs(rows), -np.inf)
        crown = float(rows.max())
        if crown_check and crown > 0:
            return MipVerdict("unsat", margin=crown, bound=crown, backend="crown",
                              total_time=time.perf_counter() - t0, n_binaries=nb,
                              message="refuted by CROWN without a MIP")
    m = A.shape[0]
    if m == 0 and A_x is None:  # no output constraint: every x is a witness
        x = (enc.x_lo + enc.x_hi) / 2
        return MipVerdict("sat", x, enc.evaluate(x), margin=-math.inf, backend="none", n_binaries=nb,
                          total_time=time.perf_counter() - t0)
    model = enc.model.copy()
    s = int(model.add_vars(np.array([-np.inf]), np.array([np.inf]))[0])
    parts = [(enc.output.cols, A @ enc.output.M), (np.full(m, s), -np.ones(m))]
    if A_x is not None:
        parts.append((np.arange(enc.n_inputs), A_x))
    # Relaxation: the output's error, b's decimal slack, and the float64 rounding of A M and b - A c.
    relax = np.abs(A) @ _output_error(enc, k) * (1 + 1e-6) + _b_slack(b)
    rhs = b - A @ enc.output.c + relax
    r_lo, r_hi = _row_ranges(enc, A, b, A_x)
    s_hi = float(r_hi.max())
    model.add_rows(parts, np.full(m, -np.inf), np.nextafter(rhs + 2 * _U * np.abs(rhs), np.inf),
                   slack=s_hi - r_lo + 2 * relax)
    model.spread += s_hi - float(r_lo.max())  # the free column s: its optimum lies in [max r_lo, max r_hi]
    obj = np.zeros(model.n)
    obj[s] = 1.0
    tol = STRICT if solver_margin <= 0 else fast(solver_margin)
    sol = _solve(model, obj, backend, _remaining(timeout, t0), obj_stop=0.0, bound_stop=tol.stop_at(model.spread),
                 threads=threads, seed=seed, light=light, tol=tol)
    dual = sol.bound if sol.status != "infeasible" else -math.inf  # an infeasibility claim bounds nothing
    common = dict(bound=max(sol.tol.lower(dual, model.spread), crown), backend=sol.backend,
                  solve_time=sol.time, n_binaries=nb)
    if sol.status == "infeasible":
        return MipVerdict("timeout", margin=math.nan, total_time=time.perf_counter() - t0,
                          message=f"{sol.message}: the solver found no feasible point, which the exact encoding "
                                  "of a non-empty box always has (numerical trouble): no verdict", **common)
    if sol.v is not None and sol.objective <= atol:  # the float64 graph decides
        x = np.clip(sol.v[: enc.n_inputs], enc.x_lo, enc.x_hi)
        y = enc.evaluate(x)
        viol = A @ y - b + (A_x @ x if A_x is not None else 0.0)
        worst = float(viol.max()) if m else -math.inf
        if worst <= atol:
            y_mip = enc.output.M @ sol.v[enc.output.cols] + enc.output.c
            diff = float(np.max(np.abs(y_mip - y) / (1 + np.abs(y)))) if y.size else 0.0
            note = "" if diff <= EVAL_TOL else f"MIP outputs differ from the graph by {diff:.3g} (witness valid)"
            return MipVerdict("sat", x, y, margin=worst, total_time=time.perf_counter() - t0, message=note,
                              **common)
        return MipVerdict("timeout", x, y, margin=math.nan, total_time=time.perf_counter() - t0,
                          message=f"MIP witness not confirmed by the graph: max(A f(x) - b) = {worst:.3g} "
                                  f"(MIP: {sol.objective:.3g})", **common)
    if common["bound"] > 0:
        return MipVerdict("unsat", margin=common["bound"], total_time=time.perf_counter() - t0, **common)
    return MipVerdict("timeout", margin=math.nan, total_time=time.perf_counter() - t0,
                      message=sol.message or "sign of the optimum not decided", **common)


def mip_verify_spec(graph: Graph, spec, timeout: float | None = None, backend: Backend = "auto",
                    tighten: bool = True, **kwargs) -> MipVerdict:
    """Decide a parsed VNNLIB spec (:class:`verify.vnnlib.VnnlibSpec`): ``sat`` if some property's box has
    a disjunct with a witness, ``unsat`` if every disjunct is refuted, else ``timeout``. One encoding
    per box; ``timeout`` is shared by all disjuncts."""
    t0 = time.perf_counter()
    undecided: MipVerdict | None = None  # the first disjunct left open (kept for its message and bound)
    last: MipVerdict | None = None
    for prop in spec.properties:
        left = _remaining(timeout, t0)
        enc = encode(graph, prop.box.lo, prop.box.hi, tighten, None if left is None else left / 2)
        for d in prop.disjuncts:
            a_x, A, b = None, d.A, d.b
            if d.mixed is not None:
                ax, ay, bm = d.mixed
                a_x = np.vstack([np.zeros((A.shape[0], ax.shape[1])), ax])
                A, b = np.vstack([A, ay]), np.concatenate([b, bm])
            left = _remaining(timeout, t0)
            if left is not None and left <= 0:
                v = MipVerdict("timeout", n_binaries=enc.model.n_binaries, message="time limit")
            else:
                v = mip_verify(graph, None, None, A, b, left, backend, A_x=a_x, encoding=enc, **kwargs)
            if v.status == "sat":
                v.total_time = time.perf_counter() - t0
                return v
            if v.status == "timeout" and undecided is None:
                undecided = v
            if last is not None and v.status == "unsat":  # the weakest refutation is the spec's margin
                v.margin, v.bound = min(v.margin, last.margin), min(v.bound, last.bound)
            last = v
    out = undecided or last or MipVerdict("unsat", margin=math.inf, message="empty spec")
    out.total_time = time.perf_counter() - t0
    return out
