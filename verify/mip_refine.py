"""MIP refinement of intermediate ReLU bounds before branch and bound ("bab-refine" in alpha-beta-CROWN).

Layer by layer (all but the last ReLU layer), the unstable pre-activations that cost the property's bound the
most (BaBSR's score: the relaxation intercept ``-l u / (u - l)`` times ``|min(Lambda, 0)|``, the neuron's negative
CROWN coefficients summed over the spec rows) are minimised and maximised over the exact big-M encoding of the
layers below (Tjeng et al., ICLR 2019); a solve stops once its dual bound proves the neuron stable. Only dual
bounds are used (valid whenever a solve stops), made sound by the margin rule of ``verify.mip.tolerance`` (the
tolerances set on the solver times the model's spread) less the encoding's error against the exact network (so the
refined bounds hold in real arithmetic, like the engine's). After each layer, alpha-CROWN with
optimised intermediate slopes carries the tighter bounds to the later layers and re-checks the property.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verify import mip
from verify.bab.common import Deadline
from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import lower_bound
from verify.graph import Graph, Node
from verify.ops.activation import Relu
from verify.rounding import cast_box
from verify.spec import RowSpec

log = logging.getLogger(__name__)

SECONDS_PER_WORK = 0.6
"""Gurobi work units are deterministic; one took about 0.6 s on the 2-core development machine (HiGHS, which
has no work limit, gets this many seconds per unit)."""


@dataclass
class RefineResult:
    bounds: dict[str, tuple[Tensor, Tensor]]  # intermediate bounds, each within the ones given
    lower: Tensor  # [1, R] row lower bounds (margins, ``- rows.b`` applied) with these bounds
    solves: int = 0
    layers: int = 0
    seconds: float = 0.0
    stopped: str = "done"  # done | proved | deadline | too large | no solver


class _NeuronSolver:
    """Min / max of affine expressions over one fixed MIP: one Gurobi model re-used for every objective
    (building it costs as much as a quick solve), HiGHS through ``verify.mip`` where Gurobi is missing.
    Each solve gets ``work`` Gurobi work units: the bounds found do not depend on the machine's load. Both
    back ends run with the tolerances ``tol`` (set explicitly), and every dual bound is made sound by
    ``tol.lower`` with the model's spread and the objective's encoding error."""

    def __init__(self, model: mip._Model, work: float, tol: mip.Tolerances = mip.FAST):
        self.model, self.work, self.tol = model, work, tol
        self.grb = None
        try:
            from gurobipy import GRB
        except ImportError:
            return
        m, _ = mip._gurobi_model(model)
        m.Params.Threads, m.Params.WorkLimit = 1, work
        mip._gurobi_tolerances(m.Params, tol)
        self.grb, self.sense = m, GRB.MINIMIZE
        # Statuses whose dual bound we trust; anything else (numerical trouble, infeasible) teaches us nothing.
        self.trusted = (GRB.OPTIMAL, GRB.TIME_LIMIT, GRB.WORK_LIMIT, GRB.USER_OBJ_LIMIT)

    def lower(self, cols: np.ndarray, coef: np.ndarray, const: float, seconds: float, err: float = 0.0) -> float:
        """A sound lower bound of the exact value that ``coef . v[cols] + const`` encodes with error ``err``
        (the solve stops once that bound is > 0, and at ``seconds``); ``-inf`` when the solve taught nothing."""
        obj = np.zeros(self.model.n)
        obj[cols] = coef
        seconds = max(0.01, seconds)
        stop = self.tol.stop_at(self.model.spread) + err  # a dual bound above it proves the sign
        if self.grb is None:
            seconds = min(seconds, SECONDS_PER_WORK * self.work)
            sol = mip._solve(self.model, obj, "highs", seconds, bound_stop=stop - const, tol=self.tol)
            if sol.status == "infeasible":  # never a proof (the exact executions are feasible): nothing learned
                return -np.inf
            bound = sol.bound + const  # HiGHS: -inf bound if none
        else:
            self.grb.setMObjective(None, obj, const, sense=self.sense)
            self.grb.Params.TimeLimit = seconds
            self.grb.Params.BestBdStop = stop
            self.grb.reset()  # no warm start from the previous neuron: results independent of the order of solves
            self.grb.optimize()
            if self.grb.Status not in self.trusted:  # the caller's bounds stand
                return -np.inf
            bound = float(self.grb.ObjBound)
        return self.tol.lower(bound, self.model.spread, err)

    def close(self) -> None:
        if self.grb is not None:
            self.grb.dispose()


def refine_bounds(graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, bounds: dict, deadline: Deadline,
                  neuron_work: float = 1.5, max_neurons: int = 60, alpha_iterations: int = 20,
                  workers: int = 1, lower: Tensor | None = None) -> RefineResult:
    """Tighten ``bounds`` (sound intermediate bounds over the box ``[lo, hi]``) of the ReLU inputs by MIP, at
    most ``max_neurons`` per layer and ``neuron_work`` Gurobi work units per solve (about a second), until the
    deadline or until alpha-CROWN proves every row group. ``workers`` > 1 solves a layer's neurons in that many
    forked processes (the neurons of one layer are independent problems). ``lower`` ``[1, R]``: row margins
    already known with ``bounds`` (default: CROWN's), improved on by every alpha-CROWN pass."""
    t0 = time.perf_counter()
    shape = graph.input_shape
    x_lo, x_hi = lo.reshape(1, *shape), hi.reshape(1, *shape)
    lam = rows.output_lam(graph)
    bounds = dict(bounds)
    if lower is None:
        with torch.no_grad():
            lower = rows.finish(lower_bound(graph, graph.output, lam, bounds), graph, bounds)
    res = RefineResult(bounds, lower)
    if not mip.mip_supported(graph):
        res.stopped = "no solver"
        return res
    last = [n.name for n in graph.nodes if isinstance(n.op, Relu)][-1:]
    for model, node, z in relu_inputs_encoded(graph, x_lo, x_hi, res.bounds):
        name = node.inputs[0]
        if node.name in last:
            # The last ReLU layer is left alone: its MIPs are the largest, and the split search after refinement
            # handles it well (mnist 256x4 prop_9 eps 0.05: 63 s of solves moved the margin from -1.64 to -1.56).
            break
        l, u = mip._widened(*res.bounds[name])
        todo = np.nonzero((l < 0) & (u > 0))[0]
        if model.m and todo.size:  # the first ReLU layer's bounds over a box are exact already
            if max(model.n, model.m) > mip.GUROBI_SIZE_LIMIT:
                res.stopped = "too large"
                break
            todo = todo[np.argsort(-_scores(graph, rows, x_lo, x_hi, res.bounds, node.name, l, u)[todo])][:max_neurons]
            l, u = _refine_layer(model, neuron_work, z, l, u, todo, deadline, res, workers)
            old_lo, old_hi = res.bounds[name]
            new_lo, new_hi = cast_box(torch.from_numpy(l), torch.from_numpy(u), old_lo.dtype)
            res.bounds[name] = (torch.maximum(old_lo, new_lo.reshape(old_lo.shape)),
                                torch.minimum(old_hi, new_hi.reshape(old_hi.shape)))
            res.layers += 1
            lower, new = alpha_crown_lower(graph, x_lo, x_hi, lam, iterations=alpha_iterations,
                                           optimize_intermediate=True, bounds=res.bounds, return_bounds=True,
                                           time_limit=max(0.0, deadline.left()))
            res.bounds.update({k: (torch.maximum(v[0], new[k][0]), torch.minimum(v[1], new[k][1]))
                               for k, v in res.bounds.items()})
            lower = rows.finish(lower, graph, res.bounds)
            res.lower = torch.maximum(res.lower, lower)  # each pass is sound; keep the best per row
            log.debug("refined %s: %d solves in all, worst margin %.4f, %.1f s", name, res.solves,
                      float(rows.group_max(res.lower).min()), time.perf_counter() - t0)
            if rows.proved(res.lower):
                res.stopped = "proved"
                break
            if deadline.passed():
                res.stopped = "deadline"
                break
    res.seconds = time.perf_counter() - t0
    return res


def relu_inputs_encoded(graph: Graph, x_lo: Tensor, x_hi: Tensor, bounds: Mapping[str, tuple[Tensor, Tensor]]
                        ) -> Iterator[tuple[mip._Model, Node, mip._Expr]]:
    """Encode a float64 copy of ``graph`` over the box ``[x_lo, x_hi]`` node by node (the big-M form of
    ``verify.mip``); at each ReLU yield ``(model, the ReLU node, its input's expression)`` - the model then holds the
    layers below it - and encode the ReLU with ``bounds`` as they are when the caller resumes (it may tighten them
    in place meanwhile). MaxPool is encoded with the bounds of its input, never yielded."""
    g64 = mip._float64_copy(graph)
    model = mip._Model()
    xl, xh = x_lo.reshape(-1).double().cpu().numpy(), x_hi.reshape(-1).double().cpu().numpy()
    exprs = {g64.input_name: mip._Expr(model.add_vars(xl, xh), np.eye(xl.size), np.zeros(xl.size))}
    for node in g64.nodes:
        ins = [exprs[i] for i in node.inputs]
        if getattr(node.op, "linear", False):
            exprs[node.name] = mip._linear(node.op, ins, [g64.shape_of(i) for i in node.inputs], model=model)
            continue
        if not isinstance(node.op, Relu):  # e.g. MaxPool: encoded, never refined
            exprs[node.name] = mip._maxpool(model, node.op, ins[0], g64.shape_of(node.inputs[0]),
                                            *mip._widened(*bounds[node.inputs[0]]))
            continue
        yield model, node, ins[0]
        exprs[node.name] = mip._relu(model, ins[0], *mip._widened(*bounds[node.inputs[0]]))


def _scores(graph: Graph, rows: RowSpec, x_lo: Tensor, x_hi: Tensor, bounds: dict, relu: str, l: np.ndarray,
            u: np.ndarray) -> np.ndarray:
    """BaBSR-style refinement priority of the neurons of ReLU ``relu`` (unstable ones; plus a small share of the
    relaxation gap, so that neurons invisible to the current bound still come in order of width).

    Ordering by the score rather than by the gap alone: on mnist 256x4 prop_6 eps 0.03 the same 60 solves per
    layer left 81 instead of 94 unstable second-layer neurons and the search after it needed 8k instead of 333k
    domains."""
    record: dict = {relu: None}
    with torch.no_grad():
        rows.lower_bounds(graph, {**bounds, graph.input_name: (x_lo, x_hi)}, record=record)
    lam = record[relu][0].reshape(rows.C.shape[0], -1).clamp(max=0).abs().sum(0).double().numpy()
    gap = np.where((l < 0) & (u > 0), -l * u / np.where(u > l, u - l, 1.0), 0.0)
    return lam * gap + 1e-3 * gap


def _refine_layer(model: mip._Model, work: float, z: mip._Expr, l: np.ndarray, u: np.ndarray, todo: np.ndarray,
                  deadline: Deadline, res: RefineResult, workers: int) -> tuple[np.ndarray, np.ndarray]:
    l, u = l.copy(), u.copy()
    err = z.error()
    jobs = [(z.cols, z.M[j], z.c[j], l[j], u[j], err[j]) for j in todo]
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork")  # the model is inherited, not pickled
        with ctx.Pool(workers, _worker_init, (model, work, deadline.end)) as pool:
            out = pool.map(_worker_neuron, jobs, chunksize=1)
    else:
        solver = _NeuronSolver(model, work)
        try:
            out = [_neuron(solver, job, deadline.end) for job in jobs]
        finally:
            solver.close()
    for j, (lj, uj, n) in zip(todo, out, strict=True):
        l[j], u[j] = max(l[j], lj), min(u[j], uj)
        res.solves += n
    return l, np.maximum(u, l)


def _neuron(solver: _NeuronSolver, job: tuple, end: float) -> tuple[float, float, int]:
    """Refined ``(l, u, solves)`` of one neuron ``z = coef . v[cols] + const`` (encoding error ``err``) with bounds
    ``[l, u]``: each side a sound bound of the exact network's value (``_NeuronSolver.lower``)."""
    cols, coef, const, l, u, err = job
    solves = 0
    # The side nearer zero first: it is the one most likely to make the neuron stable.
    for sign in ((1.0, -1.0) if -l < u else (-1.0, 1.0)):
        left = end - time.perf_counter()
        if left <= 0:
            break
        bd = solver.lower(cols, sign * coef, sign * const, left, err)
        solves += 1
        if not np.isfinite(bd):
            continue
        if sign > 0:
            l = max(l, bd)
        else:
            u = min(u, -bd)
        if l >= 0 or u <= 0:
            break
    return l, u, solves


_WORKER: dict = {}


def _worker_init(model: mip._Model, work: float, end: float) -> None:
    torch.set_num_threads(1)
    _WORKER.update(solver=_NeuronSolver(model, work), end=end)


def _worker_neuron(job: tuple) -> tuple[float, float, int]:
    return _neuron(_WORKER["solver"], job, _WORKER["end"])
