"""Exact mixed-integer (MILP) encoding of a ReLU / MaxPool graph over an input box (complete verification).

Encoding: the input ``x`` is a box-bounded variable; every affine segment between nonlinear nodes is
substituted as an explicit float64 map ``v = M x' + c`` over earlier MIP variables (no equality rows). An
unstable ReLU ``h = max(z, 0)`` with bounds ``l < 0 < u`` gets a binary ``a`` and ``h >= 0, h >= z,
h <= u a, h <= z - l (1 - a)``; stable ones are fixed (``h = z`` or ``h = 0``). MaxPool ``y = max_k x_k``
gets one binary per candidate: ``y >= x_k, y <= x_k + (u_max - l_k)(1 - d_k), sum d_k = 1``. Bounds
``[l, u]`` are CROWN's (``verify.bounds.crown.intermediate_bounds``), by default tightened layer by layer by
LP over the encoding so far (``tighten``); any sound bounds keep the encoding exact on the box.
Sigmoid / Tanh have no exact mixed-integer form: :class:`~verify.errors.UnsupportedOperator` is raised.

Backends: Gurobi (size-limited license: about 2000 variables / constraints) when the model fits, else
HiGHS (highspy); ``backend="gurobi" | "highs" | "auto"``. Solver logs are silenced; fixed seed, Gurobi on one
thread; gaps 1e-9 and feasibility / integrality tolerances 1e-9 (big-M constants amplify integrality error).

* :func:`mip_bound` -- ``min c . f(x)`` over the box, with the solver's dual bound (sound on timeout too);
* :func:`mip_verify` -- is there ``x`` in the box with ``A f(x) <= b``? (``min_x max_i (A f(x) - b)_i``,
  stopped early once the sign is known); ``sat`` witnesses are re-checked with the float64 graph;
* :func:`mip_verify_spec` -- the same for every property / disjunct of a parsed VNNLIB spec.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from verify.bounds.crown import intermediate_bounds, lower_bound
from verify.errors import ClarkeError, ShapeError, UnsupportedOperator
from verify.graph import Graph
from verify.ops.activation import Relu
from verify.ops.pooling import MaxPool2d

__all__ = [
    "GUROBI_SIZE_LIMIT", "MipEncoding", "MipResult", "MipVerdict", "SolverUnavailable", "encode",
    "mip_bound", "mip_supported", "mip_verify", "mip_verify_spec",
]

Backend = Literal["auto", "gurobi", "highs"]

GUROBI_SIZE_LIMIT = 2000
"""Variables / linear constraints the size-limited Gurobi license accepts; ``auto`` skips Gurobi above it."""
BOUND_SLACK = 1e-10
"""Relative widening of the CROWN bounds before fixing stable neurons and forming big-M constants."""
GIVEN_BOUND_SLACK = 1e-5
"""Relative widening of intermediate bounds handed to :func:`encode` (float32 CROWN / solver tolerances)."""
DEFAULT_TOL_MARGIN = 1e-5
"""Relative margin on dual bounds of solves at the solvers' default tolerances (LP feasibility and optimality
1e-6): see :func:`lowered`."""
EVAL_TOL = 1e-6
"""Largest disagreement (relative to ``1 + |value|``) between the MIP's and the graph's outputs at a witness."""


class SolverUnavailable(ClarkeError):
    """The requested MILP backend cannot solve this model (not installed, no license, over its size limit)."""


# ---------------------------------------------------------------------------------------------- results


@dataclass
class MipResult:
    """``min c . f(x)`` over the box.

    ``value``: ``c . f(x)`` re-evaluated in float64 at the primal minimiser ``x`` (inf without one) -- an
    achievable value, so an upper bound of the minimum. ``bound``: the solver's dual bound, a lower bound
    of the minimum even on ``timeout`` (``+inf`` when infeasible). ``solver_value``: the MIP objective at ``x``.
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


@dataclass
class MipVerdict:
    """Does some ``x`` in the box satisfy ``A f(x) <= b`` (every row)?

    ``sat``: ``x`` (float64, inside the box) with ``y = f(x)`` evaluated by the float64 graph and
    ``max(A y - b) <= atol``. ``unsat``: the solver's dual bound on ``min_x max_i (A f(x) - b)_i`` is
    positive. ``timeout``: neither (time limit, or a witness the graph re-evaluation did not confirm;
    ``message`` says which). ``margin``: ``min_x max_i (A f(x) - b)_i`` as far as known -- at the witness
    for ``sat`` (<= atol), the dual bound for ``unsat`` (> 0), ``nan`` when unknown; ``bound`` is the dual bound.
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


# ---------------------------------------------------------------------------------------------- encoding


@dataclass
class _Expr:
    """Affine values of a node: ``value_flat = M @ v[cols] + c`` (``M [numel, len(cols)]``)."""

    cols: np.ndarray
    M: np.ndarray
    c: np.ndarray

    def pruned(self) -> _Expr:
        keep = np.any(self.M != 0.0, axis=0)
        if bool(keep.all()):
            return self
        return _Expr(self.cols[keep], self.M[:, keep], self.c)

    def widen(self, cols: np.ndarray) -> np.ndarray:
        """``M`` scattered onto the (sorted, superset) column list ``cols``."""
        if self.cols.shape == cols.shape and bool(np.all(self.cols == cols)):
            return self.M
        out = np.zeros((self.M.shape[0], cols.size))
        out[:, np.searchsorted(cols, self.cols)] = self.M
        return out


@dataclass
class _Model:
    """Variables ``lb <= v <= ub`` (``integer`` marks binaries), rows ``lo <= A v <= hi``, min ``obj . v``."""

    lb: list[np.ndarray] = field(default_factory=list)
    ub: list[np.ndarray] = field(default_factory=list)
    integer: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    rows_i: list[np.ndarray] = field(default_factory=list)
    rows_j: list[np.ndarray] = field(default_factory=list)
    rows_v: list[np.ndarray] = field(default_factory=list)
    row_lo: list[np.ndarray] = field(default_factory=list)
    row_hi: list[np.ndarray] = field(default_factory=list)
    m: int = 0

    def add_vars(self, lb: np.ndarray, ub: np.ndarray, integer: bool = False) -> np.ndarray:
        lb, ub = np.asarray(lb, dtype=np.float64).reshape(-1), np.asarray(ub, dtype=np.float64).reshape(-1)
        idx = np.arange(self.n, self.n + lb.size)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(np.full(lb.size, integer))
        self.n += lb.size
        return idx

    def add_rows(self, parts: Sequence[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray) -> None:
        """Rows ``lo <= sum_parts coef . v[cols] <= hi``. A part ``(cols, dense [R, len(cols)])`` or a
        diagonal part ``(cols [R], vals [R])`` (row ``r`` gets ``vals[r] * v[cols[r]]``)."""
        lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(hi, dtype=np.float64).reshape(-1)
        r = lo.size
        if r == 0:
            return
        for cols, vals in parts:
            if vals.ndim == 1:
                ii, jj, vv = np.arange(r), cols, vals
            else:
                ii, kk = np.nonzero(vals)
                jj, vv = cols[kk], vals[ii, kk]
            nz = vv != 0.0
            self.rows_i.append(ii[nz] + self.m)
            self.rows_j.append(np.asarray(jj)[nz])
            self.rows_v.append(vv[nz])
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.m += r

    def copy(self) -> _Model:
        out = _Model()
        for name in ("lb", "ub", "integer", "rows_i", "rows_j", "rows_v", "row_lo", "row_hi"):
            setattr(out, name, list(getattr(self, name)))
        out.n, out.m = self.n, self.m
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]:
        def cat(xs: list[np.ndarray], dt: type = np.float64) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dtype=dt)

        a = sp.coo_matrix((cat(self.rows_v), (cat(self.rows_i, np.int64), cat(self.rows_j, np.int64))),
                          shape=(self.m, self.n)).tocsr()
        a.sum_duplicates()
        return cat(self.lb), cat(self.ub), cat(self.integer, bool), a, cat(self.row_lo), cat(self.row_hi)

    @property
    def n_binaries(self) -> int:
        return int(sum(int(i.sum()) for i in self.integer))


@dataclass
class MipEncoding:
    """A graph encoded over a box: ``model`` holds the variables (the first ``n_inputs`` are ``x``, C-order
    flattened) and constraints; ``output`` expresses the flattened output affinely in the variables."""

    graph: Graph  # float64 copy used for the encoding and for re-evaluation
    x_lo: np.ndarray
    x_hi: np.ndarray
    bounds: dict[str, tuple[Tensor, Tensor]]
    model: _Model
    output: _Expr
    time: float = 0.0

    @property
    def n_inputs(self) -> int:
        return self.x_lo.size

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """``f(x)`` flattened, in float64."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(1, *self.graph.input_shape)
        with torch.no_grad():
            return self.graph(xt).reshape(-1).numpy().astype(np.float64)


def _float64_copy(graph: Graph) -> Graph:
    """A float64 deep copy with detached weights (torch-frontend ops may wrap modules, e.g. BatchNorm)."""
    g = copy.deepcopy(graph)
    for n in g.nodes:
        for k, v in list(vars(n.op).items()):
            if isinstance(v, Tensor) and v.is_floating_point():
                setattr(n.op, k, v.detach().to(torch.float64))
            elif isinstance(v, torch.nn.Module):
                v.double().requires_grad_(False)
    return g


def _encodable(op) -> bool:
    return getattr(op, "linear", False) or isinstance(op, Relu | MaxPool2d)


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


def mip_supported(graph: Graph) -> bool:
    """Every node has an exact mixed-integer form (affine ops, ReLU, MaxPool)."""
    return all(_encodable(n.op) for n in graph.nodes)


def _check_supported(graph: Graph) -> None:
    for n in graph.nodes:
        if _encodable(n.op):
            continue
        raise UnsupportedOperator(
            type(n.op).__name__, n.name,
            detail="MIP encoding: no exact mixed-integer form (only affine ops, ReLU and MaxPool are "
                   "encodable); use bound propagation / branch and bound instead")


def _box(graph: Graph, x_lo, x_hi) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(torch.as_tensor(x_lo).detach().cpu().numpy() if isinstance(x_lo, Tensor) else x_lo,
                    dtype=np.float64).reshape(-1)
    hi = np.asarray(torch.as_tensor(x_hi).detach().cpu().numpy() if isinstance(x_hi, Tensor) else x_hi,
                    dtype=np.float64).reshape(-1)
    n = graph.input_numel
    if lo.size != n or hi.size != n:
        raise ShapeError(f"box has {lo.size}/{hi.size} values but the model input has {n}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ShapeError("box bounds must be finite")
    if bool((lo > hi).any()):
        raise ShapeError(f"empty input box: lower > upper at input index {int(np.argmax(lo > hi))}")
    return lo, hi


LINEAR_CACHE_MAX = 4_000_000
"""Largest ``out x in`` size of a one-input affine op whose explicit matrix ``encode`` may cache."""


def _linear(op, ins: list[_Expr], in_shapes: list[tuple[int, ...]], cache: dict | None = None) -> _Expr:
    """Push affine expressions through an affine op: the linear part by forward-mode AD (exact, no
    offset subtraction), the constant by evaluating the op on the constants.

    ``cache``: a one-input op's own matrix is computed once (on the identity) and kept there, keyed by op;
    later calls compose ``M_op @ M_in`` instead of differentiating again (many encodings of one graph)."""
    if cache is not None and len(ins) == 1:
        n_in = int(np.prod(in_shapes[0], dtype=np.int64))
        key = id(op)
        if key not in cache:
            own = None
            if n_in * n_in <= LINEAR_CACHE_MAX:  # the identity it is computed from must be affordable too
                own = _linear(op, [_Expr(np.arange(n_in), np.eye(n_in), np.zeros(n_in))], in_shapes)
                if own.M.size > LINEAR_CACHE_MAX:
                    own = None
            cache[key] = (op, own)  # the op is kept so its id stays unique while cached
        own = cache[key][1]
        if own is not None:
            e = ins[0]
            m = own.M @ e.M[own.cols] if own.cols.size else np.zeros((own.M.shape[0], e.cols.size))
            return _Expr(e.cols, m, own.M @ e.c[own.cols] + own.c).pruned()
    cols = ins[0].cols
    for e in ins[1:]:
        cols = np.union1d(cols, e.cols)
    k = cols.size
    with torch.no_grad():
        consts = [torch.from_numpy(e.c).reshape(1, *s) for e, s in zip(ins, in_shapes, strict=True)]
        c = op.forward(*consts).reshape(-1).numpy().astype(np.float64)
    if k == 0:
        return _Expr(cols, np.zeros((c.size, 0)), c)
    tangents = tuple(torch.from_numpy(np.ascontiguousarray(e.widen(cols).T)).reshape(k, *s)
                     for e, s in zip(ins, in_shapes, strict=True))
    primals = tuple(torch.zeros_like(t) for t in tangents)
    try:
        _, dy = torch.func.jvp(op.forward, primals, tangents)
    except (RuntimeError, NotImplementedError):  # an op without a forward-AD rule: difference quotient
        with torch.no_grad():
            dy = op.forward(*tangents) - op.forward(*primals)
    m = dy.detach().reshape(k, -1).numpy().astype(np.float64).T
    return _Expr(cols, np.ascontiguousarray(m), c).pruned()


def _widened(lo: Tensor, hi: Tensor) -> tuple[np.ndarray, np.ndarray]:
    l = lo.detach().reshape(-1).numpy().astype(np.float64)
    u = hi.detach().reshape(-1).numpy().astype(np.float64)
    return l - BOUND_SLACK * (1 + np.abs(l)), u + BOUND_SLACK * (1 + np.abs(u))


def lowered(bound: float, margin: float = DEFAULT_TOL_MARGIN) -> float:
    """A solver's dual bound made safe for its tolerances: ``bound - margin (1 + |bound|)`` (infinities kept)."""
    return bound - margin * (1.0 + abs(bound)) if math.isfinite(bound) else bound


def _intersect(bounds: dict[str, tuple[Tensor, Tensor]], given: dict[str, tuple[Tensor, Tensor]]
               ) -> dict[str, tuple[Tensor, Tensor]]:
    """``bounds`` tightened by the widened ``given`` ones where those are inside (never loosened)."""
    out = dict(bounds)
    for k, (lo, hi) in given.items():
        if k not in out:
            continue
        lo64, hi64 = lo.detach().double(), hi.detach().double()
        lo64 = lo64 - GIVEN_BOUND_SLACK * (1 + lo64.abs())
        hi64 = hi64 + GIVEN_BOUND_SLACK * (1 + hi64.abs())
        old_lo, old_hi = out[k]
        out[k] = (torch.maximum(old_lo, lo64.reshape(old_lo.shape)), torch.minimum(old_hi, hi64.reshape(old_hi.shape)))
    return out


def _lp_tighten(model: _Model, z: _Expr, l: np.ndarray, u: np.ndarray, deadline: float | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Tighten ``[l, u]`` of the unstable entries of ``z`` by LP (the model so far, integrality relaxed):
    ``min / max z_j``, widened by a tolerance margin. Cheaper than the MIP, tighter than CROWN."""
    import highspy

    todo = np.nonzero((l < 0) & (u > 0))[0]
    if todo.size == 0 or z.cols.size == 0 or model.m == 0:  # no rows yet: the box alone, CROWN is exact
        return l, u
    lb, ub, _, a, rlo, rhi = model.arrays()
    h = _new_highs()
    l, u = l.copy(), u.copy()
    try:
        h.setOptionValue("output_flag", False)
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = model.n, model.m
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.zeros(model.n), lb, ub
        lp.row_lower_, lp.row_upper_ = rlo, rhi
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_row_, lp.a_matrix_.num_col_ = model.m, model.n
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        h.passModel(lp)
        cols = z.cols.astype(np.int32)
        for j in todo:
            for sign in (1.0, -1.0):
                if deadline is not None and time.perf_counter() > deadline:
                    return l, u
                h.changeColsCost(cols.size, cols, sign * z.M[j])
                h.run()
                if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                    continue
                v = sign * float(h.getInfo().objective_function_value) + z.c[j]
                margin = 1e-6 * (1 + abs(v))  # simplex tolerances
                if sign > 0:
                    l[j] = max(l[j], v - margin)
                else:
                    u[j] = min(u[j], v + margin)
                if l[j] >= 0 or u[j] <= 0:
                    break
    finally:
        h.clear()
    u = np.maximum(u, l)
    return l, u


def _relu(model: _Model, z: _Expr, l: np.ndarray, u: np.ndarray) -> _Expr:
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    r = int(unstable.sum())
    h = model.add_vars(np.zeros(r), u[unstable])
    a = model.add_vars(np.zeros(r), np.ones(r), integer=True)
    zm, zc, lu, uu = z.M[unstable], z.c[unstable], l[unstable], u[unstable]
    ones, ninf = np.ones(r), np.full(r, -np.inf)
    model.add_rows([(z.cols, zm), (h, -ones)], ninf, -zc)  # z <= h
    model.add_rows([(h, ones), (a, -uu)], ninf, np.zeros(r))  # h <= u a
    model.add_rows([(h, ones), (z.cols, -zm), (a, -lu)], ninf, zc - lu)  # h <= z - l (1 - a)
    cols = np.concatenate([z.cols, h])  # h indices are new, hence larger: still sorted
    m = np.zeros((z.M.shape[0], cols.size))
    m[active, : z.cols.size] = z.M[active]
    m[np.nonzero(unstable)[0], z.cols.size + np.arange(r)] = 1.0
    return _Expr(cols, m, np.where(active, z.c, 0.0)).pruned()


def _maxpool(model: _Model, op: MaxPool2d, x: _Expr, shape: tuple[int, ...], l: np.ndarray,
             u: np.ndarray) -> _Expr:
    """Window candidates are the elements whose upper bound reaches the window's largest lower bound."""
    lead = int(np.prod(shape[:-3], dtype=np.int64))
    idx = torch.arange(x.M.shape[0], dtype=torch.float64).reshape(lead, *shape[-3:])
    windows = op._windows(idx)  # [lead, C, K, L], -inf at padding
    windows = windows.permute(0, 1, 3, 2).reshape(-1, windows.shape[2]).numpy()
    n_out = windows.shape[0]
    rows_m, rows_c = np.zeros((n_out, x.cols.size)), np.zeros(n_out)
    new_cols: list[int] = []
    new_rows: list[tuple[int, int]] = []
    for o in range(n_out):
        w = windows[o][np.isfinite(windows[o])].astype(np.int64)
        best_l = l[w].max()
        cand = w[u[w] >= best_l]
        if cand.size == 1:
            rows_m[o], rows_c[o] = x.M[cand[0]], x.c[cand[0]]
            continue
        u_max = u[cand].max()
        y = int(model.add_vars(np.array([best_l]), np.array([u_max]))[0])
        d = model.add_vars(np.zeros(cand.size), np.ones(cand.size), integer=True)
        k = cand.size
        yk = np.full(k, y)
        ninf = np.full(k, -np.inf)
        model.add_rows([(x.cols, x.M[cand]), (yk, -np.ones(k))], ninf, -x.c[cand])  # x_k <= y
        big = u_max - l[cand]
        model.add_rows([(yk, np.ones(k)), (x.cols, -x.M[cand]), (d, big)], ninf, x.c[cand] + big)
        model.add_rows([(d, np.ones((1, k)))], np.ones(1), np.ones(1))  # sum d = 1
        new_cols.append(y)
        new_rows.append((o, y))
    cols = np.concatenate([x.cols, np.asarray(new_cols, dtype=np.int64)])
    m = np.zeros((n_out, cols.size))
    m[:, : x.cols.size] = rows_m
    for j, (o, _) in enumerate(new_rows):
        m[o, x.cols.size + j] = 1.0
    return _Expr(cols, m, rows_c).pruned()


def encode(graph: Graph, x_lo, x_hi, tighten: bool = False, tighten_time: float | None = None,
           linear_cache: dict | None = None, given: dict[str, tuple[Tensor, Tensor]] | None = None
           ) -> MipEncoding:
    """Encode ``graph`` over the box ``[x_lo, x_hi]`` (any shape with ``input_numel`` values).

    ``tighten``: also tighten the CROWN bounds of unstable ReLU inputs by LP over the encoding so far (two
    LPs per unstable neuron, for at most ``tighten_time`` seconds) -- fewer binaries, smaller big-M.
    A float64 ``graph`` is used as it is (no copy); ``linear_cache`` (an empty dict, then passed again for
    later boxes of the same float64 graph) keeps the affine ops' matrices between calls. ``given``: sound
    intermediate bounds over the box (e.g. MIP-refined, possibly float32) intersected with CROWN's after a
    widening of ``GIVEN_BOUND_SLACK`` (relative) for the rounding of their float32 arithmetic.
    """
    t0 = time.perf_counter()
    deadline = None if tighten_time is None else t0 + tighten_time
    _check_supported(graph)
    lo, hi = _box(graph, x_lo, x_hi)
    g = graph if graph.dtype == torch.float64 else _float64_copy(graph)
    shape = g.input_shape
    with torch.no_grad():
        bounds = intermediate_bounds(g, torch.from_numpy(lo).reshape(1, *shape),
                                     torch.from_numpy(hi).reshape(1, *shape), "crown")
    if given is not None:
        bounds = _intersect(bounds, given)
    model = _Model()
    n = lo.size
    x_idx = model.add_vars(lo, hi)
    exprs: dict[str, _Expr] = {g.input_name: _Expr(x_idx, np.eye(n), np.zeros(n))}
    uses: dict[str, int] = {}
    for node in g.nodes:
        for i in node.inputs:
            uses[i] = uses.get(i, 0) + 1
    for node in g.nodes:
        op = node.op
        ins = [exprs[i] for i in node.inputs]
        if getattr(op, "linear", False):
            out = _linear(op, ins, [g.shape_of(i) for i in node.inputs], linear_cache if g is graph else None)
        elif isinstance(op, Relu):
            l, u = _widened(*bounds[node.inputs[0]])
            if tighten:
                l, u = _lp_tighten(model, ins[0], l, u, deadline)
            out = _relu(model, ins[0], l, u)
        else:  # MaxPool2d (checked above)
            out = _maxpool(model, op, ins[0], g.shape_of(node.inputs[0]), *_widened(*bounds[node.inputs[0]]))
        exprs[node.name] = out
        for i in node.inputs:
            uses[i] -= 1
            if uses[i] == 0 and i != g.output:
                del exprs[i]
    return MipEncoding(g, lo, hi, bounds, model, exprs[g.output], time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- solvers


@dataclass
class _Solution:
    status: Literal["optimal", "timeout", "infeasible", "stopped"]
    objective: float  # best primal objective (inf without one)
    bound: float  # dual bound
    v: np.ndarray | None
    backend: str
    time: float
    message: str = ""


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


def _solve_gurobi(model: _Model, obj: np.ndarray, time_limit: float | None, obj_stop: float | None,
                  bound_stop: float | None, threads: int, seed: int, light: bool = False, strict: bool = True
                  ) -> _Solution:
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
            if strict:
                p.MIPGap, p.MIPGapAbs = 1e-9, 1e-9
                p.IntFeasTol, p.FeasibilityTol = 1e-9, 1e-9
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
                return _Solution("infeasible", math.inf, math.inf, None, "gurobi", time.perf_counter() - t0)
            if is_mip:
                bound = float(m.ObjBound)
            else:
                bound = objective if st == GRB.OPTIMAL else -math.inf
    except gp.GurobiError as e:
        raise SolverUnavailable(f"gurobi: {e}") from None
    status = {GRB.OPTIMAL: "optimal", GRB.USER_OBJ_LIMIT: "stopped"}.get(st, "timeout")
    msg = "" if status != "timeout" else f"gurobi status {st}"
    return _Solution(status, objective, bound, vals, "gurobi", time.perf_counter() - t0, msg)


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


def _solve_highs(model: _Model, obj: np.ndarray, time_limit: float | None, obj_stop: float | None,
                 bound_stop: float | None, threads: int, seed: int, strict: bool = True) -> _Solution:
    try:
        import highspy
    except ImportError as e:
        raise SolverUnavailable(f"highspy is not installed ({e})") from None
    lb, ub, integer, a, rlo, rhi = model.arrays()
    t0 = time.perf_counter()
    h = _new_highs()
    try:
        h.setOptionValue("output_flag", False)
        h.setOptionValue("log_to_console", False)
        h.setOptionValue("random_seed", seed)
        if strict:
            h.setOptionValue("mip_rel_gap", 1e-9)
            h.setOptionValue("mip_abs_gap", 1e-9)
            h.setOptionValue("mip_feasibility_tolerance", 1e-9)
            h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 0.0))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = model.n, model.m
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = obj, lb, ub
        lp.row_lower_, lp.row_upper_ = rlo, rhi
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_row_, lp.a_matrix_.num_col_ = model.m, model.n
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        is_mip = bool(integer.any())
        if is_mip:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in integer]
        h.passModel(lp)
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
            return _Solution("infeasible", math.inf, math.inf, None, "highs", time.perf_counter() - t0)
        if st == s.kOptimal:
            status = "optimal"
        elif stopped[0] and st in (s.kInterrupt, s.kHighsInterrupt):
            status = "stopped"
        else:
            status = "timeout"
        if is_mip:
            bound = float(info.mip_dual_bound)
            if not math.isfinite(bound) and bound > 0:  # +inf dual bound: nothing feasible below the cutoff
                bound = objective if has_sol else math.inf
        else:
            bound = objective if status == "optimal" else -math.inf
        msg = "" if status != "timeout" else f"highs status {h.modelStatusToString(st)}"
    finally:
        h.clear()
    return _Solution(status, objective, bound, vals, "highs", time.perf_counter() - t0, msg)


def _solve(model: _Model, obj: np.ndarray, backend: Backend, time_limit: float | None,
           obj_stop: float | None = None, bound_stop: float | None = None, threads: int = 1,
           seed: int = 0, light: bool = False, strict: bool = True) -> _Solution:
    if backend not in ("auto", "gurobi", "highs"):
        raise ValueError(f"unknown MIP backend {backend!r}; choose auto, gurobi or highs")
    note = ""
    if backend == "gurobi" or (backend == "auto" and max(model.n, model.m) <= GUROBI_SIZE_LIMIT):
        try:
            return _solve_gurobi(model, obj, time_limit, obj_stop, bound_stop, threads, seed, light, strict)
        except SolverUnavailable as e:
            if backend == "gurobi":
                raise
            note = f"{e}; fell back to HiGHS"
    sol = _solve_highs(model, obj, time_limit, obj_stop, bound_stop, threads, seed, strict)
    if note:
        sol.message = (note + ". " + sol.message).strip()
    return sol


def _crown_lower(enc: MipEncoding, C: np.ndarray) -> np.ndarray:
    """CROWN lower bounds of ``C f(x)`` over the encoded box (reusing its intermediate bounds)."""
    g = enc.graph
    lam = torch.from_numpy(np.ascontiguousarray(C, dtype=np.float64)).reshape(1, C.shape[0], *g.output_shape)
    with torch.no_grad():
        return lower_bound(g, g.output, lam, enc.bounds).reshape(-1).numpy().astype(np.float64)


def _remaining(timeout: float | None, t0: float) -> float | None:
    return None if timeout is None else max(timeout - (time.perf_counter() - t0), 0.0)


# ---------------------------------------------------------------------------------------------- API


def mip_bound(graph: Graph, x_lo, x_hi, c: np.ndarray, timeout: float | None = None,
              backend: Backend = "auto", *, tighten: bool = True, threads: int = 1, seed: int = 0) -> MipResult:
    """``min_x c . f(x)`` over ``[x_lo, x_hi]`` (``c`` over the flattened output) by an exact MILP.

    ``timeout`` (seconds) covers encoding and solving. Raises :class:`UnsupportedOperator` for graphs with
    Sigmoid/Tanh and :class:`SolverUnavailable` when a forced backend cannot run. ``tighten``: LP bound
    tightening before the MILP (see :func:`encode`; at most half of ``timeout``).
    """
    t0 = time.perf_counter()
    enc = encode(graph, x_lo, x_hi, tighten, None if timeout is None else timeout / 2)
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    if c.size != enc.output.M.shape[0]:
        raise ShapeError(f"objective has {c.size} entries but the model has {enc.output.M.shape[0]} outputs")
    obj = np.zeros(enc.model.n)
    obj[enc.output.cols] = c @ enc.output.M
    const = float(c @ enc.output.c)
    sol = _solve(enc.model, obj, backend, _remaining(timeout, t0), threads=threads, seed=seed)
    status = "infeasible" if sol.status == "infeasible" else ("optimal" if sol.status == "optimal" else "timeout")
    bound = sol.bound + const
    if status == "timeout":  # the CROWN bound is sound too: never report less than it
        bound = max(bound, _crown_lower(enc, c[None])[0])
    res = MipResult(status, math.inf, bound, None, sol.backend, sol.time, 0.0, enc.model.n_binaries,
                    sol.objective + const, sol.message)
    if sol.v is not None:
        x = np.clip(sol.v[: enc.n_inputs], enc.x_lo, enc.x_hi)
        res.x = x
        res.value = float(c @ enc.evaluate(x))
        if abs(res.value - res.solver_value) > EVAL_TOL * (1 + abs(res.value)):
            res.message = (res.message + f" graph value {res.value:.9g} differs from the MIP objective "
                           f"{res.solver_value:.9g}").strip()
    res.total_time = time.perf_counter() - t0
    return res


def mip_verify(graph: Graph, box_lo, box_hi, A: np.ndarray, b: np.ndarray, timeout: float | None = None,
               backend: Backend = "auto", *, A_x: np.ndarray | None = None, atol: float = EVAL_TOL,
               crown_check: bool = True, tighten: bool = True, threads: int = 1, seed: int = 0,
               encoding: MipEncoding | None = None, light: bool = False, solver_margin: float = 0.0
               ) -> MipVerdict:
    """Is there ``x`` in the box with ``A f(x) (+ A_x x) <= b`` (all rows)? ``sat`` / ``unsat`` / ``timeout``.

    Minimises ``s`` subject to ``(A f(x) - b)_i <= s`` and stops as soon as the sign of the optimum is known.
    ``crown_check``: first try to refute a row with the CROWN bound (no MIP needed). ``encoding``: reuse an
    :func:`encode` result for the same graph and box; ``tighten``: LP bound tightening (see :func:`encode`);
    ``light``: Gurobi without cuts and primal heuristics (still exact; faster on small models).
    ``solver_margin`` > 0: the solvers' default tolerances (often several times faster than the tight ones
    used otherwise), and the dual bound is lowered by ``solver_margin * (1 + |bound|)`` before it counts.
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
    crown = -math.inf  # CROWN lower bound of max_i (A f(x) - b)_i (mixed rows left out)
    if A.shape[0] and A_x is None:
        crown = float((_crown_lower(enc, A) - b).max())
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
    model.add_rows(parts, np.full(m, -np.inf), b - A @ enc.output.c)
    obj = np.zeros(model.n)
    obj[s] = 1.0
    sol = _solve(model, obj, backend, _remaining(timeout, t0), obj_stop=0.0, bound_stop=max(1e-9, 3 * solver_margin),
                 threads=threads, seed=seed, light=light, strict=solver_margin <= 0)
    common = dict(bound=max(lowered(sol.bound, solver_margin), crown), backend=sol.backend, solve_time=sol.time,
                  n_binaries=nb)
    if sol.status == "infeasible":  # cannot happen for a non-empty box; treat the empty set as unsat
        return MipVerdict("unsat", margin=math.inf, total_time=time.perf_counter() - t0,
                          message="MILP infeasible", **common)
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
