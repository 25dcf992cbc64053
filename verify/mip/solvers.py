"""MILP back ends: Gurobi (size-limited license: about 2000 variables / constraints) when the model fits, else
HiGHS (highspy); ``backend="gurobi" | "highs" | "auto"``.

Solver logs are silenced; fixed seed, Gurobi on one thread unless told otherwise. Every solve sets the
tolerances of a :class:`~verify.mip.tolerance.Tolerances` profile explicitly on the solver (Gurobi
``FeasibilityTol``, ``OptimalityTol``, ``IntFeasTol``, ``MIPGap`` / ``MIPGapAbs``; HiGHS
``primal_feasibility_tolerance``, ``dual_feasibility_tolerance``, ``mip_feasibility_tolerance``, ``mip_rel_gap`` /
``mip_abs_gap``) and returns it with the solution, so the margin applied to the dual bound is the one for the
tolerances actually used. A solver's "infeasible" is reported as such; the callers never take it as a proof.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from verify.errors import ClarkeError
from verify.mip.model import _Model
from verify.mip.tolerance import FAST, STRICT, Tolerances

Backend = Literal["auto", "gurobi", "highs"]

GUROBI_SIZE_LIMIT = 2000
"""Variables / linear constraints the size-limited Gurobi license accepts; ``auto`` skips Gurobi above it."""


class SolverUnavailable(ClarkeError):
    """The requested MILP backend cannot solve this model (not installed, no license, over its size limit)."""


def installed_backends() -> list[str]:
    """The MILP backends importable here, preferred first (``gurobi``, ``highs``)."""
    out = []
    for name, module in (("gurobi", "gurobipy"), ("highs", "highspy")):
        try:
            __import__(module)
        except ImportError:
            continue
        out.append(name)
    return out


@dataclass
class _Solution:
    status: Literal["optimal", "timeout", "infeasible", "stopped"]
    objective: float  # best primal objective (inf without one)
    bound: float  # dual bound, as the solver reports it (apply ``tol.lower`` before trusting it)
    v: np.ndarray | None
    backend: str
    time: float
    message: str = ""
    tol: Tolerances = STRICT


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level stdout (HiGHS prints its banner when the first instance is created)."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(fd, 1)
    finally:
        os.close(fd)


_GUROBI_ENVS: dict[int, object] = {}


def _gurobi_env():
    """One silent Gurobi environment per process (starting one checks the license: milliseconds that
    thousands of small MIPs, e.g. BaB leaves, would otherwise pay each)."""
    import gurobipy as gp

    pid = os.getpid()  # never share an environment across fork()
    if pid not in _GUROBI_ENVS:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.setParam("LogToConsole", 0)
        env.start()
        _GUROBI_ENVS[pid] = env
    return _GUROBI_ENVS[pid]


def _gurobi_model(model: _Model):
    """``(gurobipy.Model, its variable MVar)`` holding ``model``'s variables and rows, no objective yet."""
    import gurobipy as gp
    from gurobipy import GRB

    lb, ub, integer, a, rlo, rhi = model.arrays()
    m = gp.Model(env=_gurobi_env())
    v = m.addMVar(model.n, lb=lb, ub=ub, vtype=np.where(integer, GRB.BINARY, GRB.CONTINUOUS))
    eq = rlo == rhi
    upper, lower = np.isfinite(rhi) & ~eq, np.isfinite(rlo) & ~eq
    for mask, sense, rhs in ((eq, GRB.EQUAL, rhi), (upper, GRB.LESS_EQUAL, rhi), (lower, GRB.GREATER_EQUAL, rlo)):
        if mask.any():
            rows = a[np.nonzero(mask)[0]]
            m.addMConstr(rows, v, np.full(rows.shape[0], sense), rhs[mask])
    return m, v


def _gurobi_tolerances(params, tol: Tolerances) -> None:
    """Set ``tol`` on a Gurobi model's ``Params`` (every tolerance the margin assumes, explicitly)."""
    params.FeasibilityTol, params.OptimalityTol = tol.feasibility, tol.optimality
    if tol.integrality > 0:
        params.IntFeasTol = tol.integrality
    if tol.gap is not None:
        params.MIPGap, params.MIPGapAbs = tol.gap, tol.gap


def _highs_tolerances(h, tol: Tolerances) -> None:
    """Set ``tol`` on a ``highspy.Highs``. Its ``mip_feasibility_tolerance`` also governs row feasibility in the
    MIP search (presolve, propagation), so it gets the feasibility tolerance, never a looser integrality one."""
    import highspy

    options = {"primal_feasibility_tolerance": tol.feasibility, "dual_feasibility_tolerance": tol.optimality,
               "mip_feasibility_tolerance": min(tol.feasibility, tol.integrality or tol.feasibility)}
    if tol.gap is not None:
        options.update(mip_rel_gap=tol.gap, mip_abs_gap=tol.gap)
    for name, value in options.items():
        # a rejected value would leave the default in place and the margin assuming another tolerance
        if h.setOptionValue(name, value) != highspy.HighsStatus.kOk:
            raise SolverUnavailable(f"highs rejected {name} = {value:g}")


def _solve_gurobi(model: _Model, obj: np.ndarray, time_limit: float | None, obj_stop: float | None,
                  bound_stop: float | None, threads: int, seed: int, light: bool, tol: Tolerances) -> _Solution:
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError as e:
        raise SolverUnavailable(f"gurobipy is not installed ({e})") from None
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            m, v = _gurobi_model(model)
            stack.enter_context(m)
            m.setMObjective(None, obj, 0.0, sense=GRB.MINIMIZE)
            p = m.Params
            p.Threads, p.Seed = threads, seed
            if light:  # many tiny MIPs: cut rounds and primal heuristics cost more than they save (3x)
                p.Cuts, p.Heuristics = 0, 0.0
            _gurobi_tolerances(p, tol)
            if time_limit is not None:
                p.TimeLimit = max(time_limit, 0.0)
            if obj_stop is not None:
                p.BestObjStop = obj_stop
            if bound_stop is not None:
                p.BestBdStop = bound_stop
            m.optimize()
            is_mip = model.n_binaries > 0
            st = m.Status
            has_sol = m.SolCount > 0
            objective = float(m.ObjVal) if has_sol else math.inf
            vals = np.asarray(v.X, dtype=np.float64) if has_sol else None
            if st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
                return _Solution("infeasible", math.inf, math.inf, None, "gurobi", time.perf_counter() - t0,
                                 f"gurobi status {st}", tol)
            if is_mip:
                bound = float(m.ObjBound)
            else:
                bound = objective if st == GRB.OPTIMAL else -math.inf
    except gp.GurobiError as e:
        raise SolverUnavailable(f"gurobi: {e}") from None
    status = {GRB.OPTIMAL: "optimal", GRB.USER_OBJ_LIMIT: "stopped"}.get(st, "timeout")
    msg = "" if status != "timeout" else f"gurobi status {st}"
    return _Solution(status, objective, bound, vals, "gurobi", time.perf_counter() - t0, msg, tol)


_HIGHS_READY = False


def _new_highs():
    """A fresh ``highspy.Highs`` (the first one in a process is created with its banner silenced)."""
    global _HIGHS_READY
    import highspy

    if _HIGHS_READY:
        return highspy.Highs()
    with _quiet_stdout():
        h = highspy.Highs()
    _HIGHS_READY = True
    return h


def _highs_lp(model: _Model, obj: np.ndarray):
    """``model`` as a ``highspy.HighsLp`` with objective ``obj`` (integrality marked where there is any)."""
    import highspy

    lb, ub, integer, a, rlo, rhi = model.arrays()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = model.n, model.m
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = obj, lb, ub
    lp.row_lower_, lp.row_upper_ = rlo, rhi
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_row_, lp.a_matrix_.num_col_ = model.m, model.n
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
    if bool(integer.any()):
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in integer]
    return lp


def _solve_highs(model: _Model, obj: np.ndarray, time_limit: float | None, obj_stop: float | None,
                 bound_stop: float | None, threads: int, seed: int, tol: Tolerances) -> _Solution:
    try:
        import highspy
    except ImportError as e:
        raise SolverUnavailable(f"highspy is not installed ({e})") from None
    t0 = time.perf_counter()
    h = _new_highs()
    try:
        h.setOptionValue("output_flag", False)
        h.setOptionValue("log_to_console", False)
        h.setOptionValue("random_seed", seed)
        _highs_tolerances(h, tol)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 0.0))
        is_mip = model.n_binaries > 0
        h.passModel(_highs_lp(model, obj))
        stopped = [False]
        if is_mip and (obj_stop is not None or bound_stop is not None):
            def stop(e) -> None:
                out = e.data_out
                if (obj_stop is not None and out.mip_primal_bound <= obj_stop) or (
                        bound_stop is not None and out.mip_dual_bound >= bound_stop):
                    stopped[0] = True
                    e.interrupt()

            h.cbMipInterrupt.subscribe(stop)
            h.cbMipImprovingSolution.subscribe(stop)
        h.run()
        st = h.getModelStatus()
        info = h.getInfo()
        has_sol = int(info.primal_solution_status) == 2
        vals = np.asarray(h.getSolution().col_value, dtype=np.float64) if has_sol else None
        objective = float(info.objective_function_value) if has_sol else math.inf
        s = highspy.HighsModelStatus
        if st == s.kInfeasible:
            return _Solution("infeasible", math.inf, math.inf, None, "highs", time.perf_counter() - t0,
                             "highs status infeasible", tol)
        if st == s.kOptimal:
            status = "optimal"
        elif stopped[0] and st in (s.kInterrupt, s.kHighsInterrupt):
            status = "stopped"
        else:
            status = "timeout"
        if is_mip:
            bound = float(info.mip_dual_bound)
            if not math.isfinite(bound) and bound > 0:
                # +inf: the search closed every node against the cutoff, which needs a solution to stand for
                # the optimum; without one it is a claim of infeasibility, and that is no bound
                bound = objective if has_sol else -math.inf
        else:
            bound = objective if status == "optimal" else -math.inf
        msg = "" if status != "timeout" else f"highs status {h.modelStatusToString(st)}"
    finally:
        h.clear()
    return _Solution(status, objective, bound, vals, "highs", time.perf_counter() - t0, msg, tol)


def _solve(model: _Model, obj: np.ndarray, backend: Backend, time_limit: float | None,
           obj_stop: float | None = None, bound_stop: float | None = None, threads: int = 1,
           seed: int = 0, light: bool = False, strict: bool = True, tol: Tolerances | None = None) -> _Solution:
    """Minimise ``obj . v`` over ``model``. ``tol`` (default: :data:`STRICT` if ``strict`` else :data:`FAST`) is set
    on the solver and returned with the solution; ``light``: Gurobi without cuts and heuristics."""
    if backend not in ("auto", "gurobi", "highs"):
        raise ValueError(f"unknown MIP backend {backend!r}; choose auto, gurobi or highs")
    tol = tol if tol is not None else (STRICT if strict else FAST)
    note = ""
    if backend == "gurobi" or (backend == "auto" and max(model.n, model.m) <= GUROBI_SIZE_LIMIT):
        try:
            return _solve_gurobi(model, obj, time_limit, obj_stop, bound_stop, threads, seed, light, tol)
        except SolverUnavailable as e:
            if backend == "gurobi":
                raise
            note = f"{e}; fell back to HiGHS"
    sol = _solve_highs(model, obj, time_limit, obj_stop, bound_stop, threads, seed, tol)
    if note:
        sol.message = (note + ". " + sol.message).strip()
    return sol
