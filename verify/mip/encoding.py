"""Exact mixed-integer (MILP) encoding of a ReLU / MaxPool graph over an input box.

The input ``x`` is a box-bounded variable; every affine segment between nonlinear nodes is substituted as an
explicit float64 map ``v = M x' + c`` over earlier MIP variables (no equality rows). An unstable ReLU
``h = max(z, 0)`` with bounds ``l < 0 < u`` gets a binary ``a`` and ``h >= 0, h >= z, h <= u a,
h <= z - l (1 - a)``; stable ones are fixed (``h = z`` or ``h = 0``). MaxPool ``y = max_k x_k`` gets one binary
per candidate: ``y >= x_k, y <= x_k + (u_max - l_k)(1 - d_k), sum d_k = 1``. Sigmoid / Tanh have no exact
mixed-integer form: :class:`~verify.errors.UnsupportedOperator` is raised.

Soundness in real arithmetic: the bounds ``[l, u]`` are the engine's rigorous float64 bounds (CROWN, optionally
intersected with given sound bounds and tightened by LP with the margin of :mod:`verify.mip.tolerance`), so they
hold for the exact network; they are used as they are, no widening. The substituted maps miss the exact network
(the rounding of forming ``M`` and ``c`` in float64, and the frontend's ``weight_err`` / ``bias_err``) by at most
``E`` per value: ``E_out = |op|(E_in) + e_op(|M_in| a + |c_in| + E_in)`` with ``e_op`` the op's own error radius
(``Op.error_radius``, weight errors included) and ``a`` the variables' magnitudes (for an op's cached explicit
matrix without weight errors, the same from the matrix itself: :class:`_OwnMatrix`). Every row that compares such a
map is relaxed by its ``E`` (``h >= z - E``, ...), so an exact execution of the network is a feasible point:
the MILP's minimum never exceeds the exact one (objectives over ``E``-carrying outputs pay ``|c| E``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verify.bounds.crown import intermediate_bounds
from verify.errors import ShapeError, UnsupportedOperator
from verify.graph import Graph
from verify.mip.model import _Expr, _Model
from verify.mip.solvers import _highs_tolerances, _new_highs
from verify.mip.tolerance import LP, Tolerances
from verify.ops.activation import Relu
from verify.ops.pooling import MaxPool2d
from verify.rounding import F64, cast_box, gamma, unit_roundoff

LINEAR_CACHE_MAX = 4_000_000
"""Largest ``out x in`` size of a one-input affine op whose explicit matrix ``encode`` may cache."""
_U = unit_roundoff(F64)


@dataclass
class MipEncoding:
    """A graph encoded over a box: ``model`` holds the variables (the first ``n_inputs`` are ``x``, C-order
    flattened) and constraints; ``output`` expresses the flattened output affinely in the variables (with its
    error ``output.err`` against the exact network)."""

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
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64), device="cpu").reshape(1, *self.graph.input_shape)
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


def mip_supported(graph: Graph) -> bool:
    """Every node has an exact mixed-integer form (affine ops, ReLU, MaxPool)."""
    return all(_encodable(n.op) for n in graph.nodes)


def _check_supported(graph: Graph) -> None:
    for n in graph.nodes:
        if _encodable(n.op):
            continue
        raise UnsupportedOperator(
            n.op.display_name, n.name,
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


def _rhs_up(x: np.ndarray) -> np.ndarray:
    """A float64 right-hand side at least the real value that ``x`` (a sum of a few rounded terms) stands for."""
    return np.nextafter(x + 2 * _U * np.abs(x), np.inf)


def _linear(op, ins: list[_Expr], in_shapes: list[tuple[int, ...]], cache: dict | None = None,
            model: _Model | None = None) -> _Expr:
    """Push affine expressions through an affine op: the linear part by forward-mode AD (exact, no
    offset subtraction), the constant by evaluating the op on the constants.

    ``cache``: a one-input op's own matrix is computed once (on the identity) and kept there, keyed by op;
    later calls compose ``M_op @ M_in`` instead of differentiating again (many encodings of one graph).
    ``model``: the variables the expressions range over; with it the result carries its error ``err`` against
    the exact network (module docstring), without it the error is not tracked (``err`` None)."""
    own = _own_matrix(op, ins, in_shapes, cache)
    if own is not None:
        e = ins[0]
        m = own.expr.M @ e.M[own.expr.cols] if own.expr.cols.size else np.zeros((own.expr.M.shape[0], e.cols.size))
        out = _Expr(e.cols, m, own.expr.M @ e.c[own.expr.cols] + own.expr.c).pruned()
        if model is not None:
            out.err = own.error(e, model.magnitudes()) if own.exact_weights else \
                _linear_error(op, ins, in_shapes, model.magnitudes(), out.c.size)
        return out
    out = _linear_map(op, ins, in_shapes)
    if model is not None:
        out.err = _linear_error(op, ins, in_shapes, model.magnitudes(), out.c.size)
    return out


@dataclass
class _OwnMatrix:
    """A one-input op as an explicit float64 map ``(M_op, c_op)``, with what its error bound needs."""

    expr: _Expr
    abs_m: np.ndarray  # |M_op|
    g: float  # 2 gamma_{k+2}, k the most nonzero entries in a row of M_op (zeros add exactly)
    exact_weights: bool  # no weight_err / bias_err declared

    def error(self, e: _Expr, col_mag: np.ndarray) -> np.ndarray:
        """``E_out = (1 + g)|M_op| E_in + g (|M_op| m + |c_op|)``, ``m = |M_in| a + |c_in|``: one ``gamma`` for the
        rounded composition ``M_op M_in`` (and ``M_op c_in + c_op``), one for ``M_op`` against the op's exact map
        (its identity columns evaluated in float64), and ``|M_op|`` for the exact map's action on ``E_in``."""
        cols = self.expr.cols
        mag = np.abs(e.M) @ col_mag[e.cols] + np.abs(e.c)
        out = self.g * (self.abs_m @ mag[cols] + np.abs(self.expr.c))
        if e.err is not None:
            out = out + (1 + self.g) * (self.abs_m @ e.err[cols])
        return out * (1 + 1e-6)  # the float64 sums of these non-negative terms round too


def _own_matrix(op, ins: list[_Expr], in_shapes: list[tuple[int, ...]], cache: dict | None) -> _OwnMatrix | None:
    if cache is None or len(ins) != 1:
        return None
    key = id(op)
    if key not in cache:
        n_in = int(np.prod(in_shapes[0], dtype=np.int64))
        own = None
        if n_in * n_in <= LINEAR_CACHE_MAX:  # the identity it is computed from must be affordable too
            expr = _linear_map(op, [_Expr(np.arange(n_in), np.eye(n_in), np.zeros(n_in))], in_shapes)
            if expr.M.size <= LINEAR_CACHE_MAX:
                k = int((expr.M != 0).sum(1).max(initial=0))
                exact = all(getattr(op, name, None) is None for name in ("weight_err", "bias_err"))
                own = _OwnMatrix(expr, np.abs(expr.M), 2 * gamma(k + 2, F64), exact)
        cache[key] = (op, own)  # the op is kept so its id stays unique while cached
    return cache[key][1]


def _linear_map(op, ins: list[_Expr], in_shapes: list[tuple[int, ...]]) -> _Expr:
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


def _linear_error(op, ins: list[_Expr], in_shapes: list[tuple[int, ...]], col_mag: np.ndarray, numel: int
                  ) -> np.ndarray | None:
    """``E_out = |op|(E_in) + e_op(|M_in| a + |c_in| + E_in)`` (module docstring). The float64 products that form
    ``M`` and ``c`` are sums of at most the op's fan-in nonzero terms (zeros add exactly), which is what
    ``e_op`` charges a float64 evaluation of the op with, twice over (cached matrix and composition)."""
    mags = [np.abs(e.M) @ col_mag[e.cols] + np.abs(e.c) + e.error() for e in ins]
    with torch.no_grad():
        out = op.error_radius([torch.from_numpy(m).reshape(1, *s) for m, s in zip(mags, in_shapes, strict=True)])
        if any(e.err is not None and bool(e.err.any()) for e in ins):
            pushed = op.abs_forward([torch.from_numpy(e.error()).reshape(1, *s)
                                     for e, s in zip(ins, in_shapes, strict=True)])
            out = pushed if out is None else out + pushed
    if out is None:
        return None
    arr = out.detach().to(F64).numpy()
    if arr.size != numel:
        arr = np.broadcast_to(arr, (1, *op.out_shape))
    return np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)


def _widened(lo: Tensor, hi: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Bounds as flat float64 arrays (a cast outward: exact from float32 or float64). The engine's bounds are
    rigorous for the exact network, which is all the encoding needs: no widening (module docstring)."""
    lo64, hi64 = cast_box(lo.detach().reshape(-1), hi.detach().reshape(-1), F64)
    return np.array(lo64.numpy(), dtype=np.float64), np.array(hi64.numpy(), dtype=np.float64)


def _intersect(bounds: dict[str, tuple[Tensor, Tensor]], given: dict[str, tuple[Tensor, Tensor]]
               ) -> dict[str, tuple[Tensor, Tensor]]:
    """``bounds`` tightened by the ``given`` sound ones (cast outward to float64; never loosened)."""
    out = dict(bounds)
    for k, (lo, hi) in given.items():
        if k not in out:
            continue
        lo64, hi64 = cast_box(lo.detach(), hi.detach(), F64)
        old_lo, old_hi = out[k]
        out[k] = (torch.maximum(old_lo, lo64.reshape(old_lo.shape)), torch.minimum(old_hi, hi64.reshape(old_hi.shape)))
    return out


def _lp_tighten(model: _Model, z: _Expr, l: np.ndarray, u: np.ndarray, deadline: float | None,
                tol: Tolerances = LP) -> tuple[np.ndarray, np.ndarray]:
    """Tighten ``[l, u]`` of the unstable entries of ``z`` by LP (the model so far, integrality relaxed):
    ``min / max z_j``, each optimum made sound by ``tol.lower`` (the model's spread, ``z``'s error).
    Cheaper than the MIP, tighter than CROWN."""
    import highspy

    from verify.mip.solvers import _highs_lp

    todo = np.nonzero((l < 0) & (u > 0))[0]
    if todo.size == 0 or z.cols.size == 0 or model.m == 0:  # no rows yet: the box alone, CROWN is exact
        return l, u
    err = z.error()
    h = _new_highs()
    l, u = l.copy(), u.copy()
    try:
        h.setOptionValue("output_flag", False)
        _highs_tolerances(h, tol)
        lp = _highs_lp(model, np.zeros(model.n))
        lp.integrality_ = []  # the LP relaxation
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
                # a lower bound of sign * z_j
                bd = tol.lower(float(h.getInfo().objective_function_value) + sign * z.c[j], model.spread,
                               float(err[j]))
                if sign > 0:
                    l[j] = max(l[j], bd)
                else:
                    u[j] = min(u[j], -bd)
                if l[j] >= 0 or u[j] <= 0:
                    break
    finally:
        h.clear()
    u = np.maximum(u, l)
    return l, u


def _relu(model: _Model, z: _Expr, l: np.ndarray, u: np.ndarray) -> _Expr:
    """Big-M rows of the unstable entries, relaxed by ``z``'s error ``E`` (module docstring). Slacks at an exact
    execution: ``z <= h`` at most ``-l + 2E``, ``h <= u a`` at most ``u``, ``h <= z - l (1 - a)`` at most
    ``-l + 2E``."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    r = int(unstable.sum())
    err = z.error()
    h = model.add_vars(np.zeros(r), u[unstable])
    a = model.add_vars(np.zeros(r), np.ones(r), integer=True)
    zm, zc, lu, uu, eu = z.M[unstable], z.c[unstable], l[unstable], u[unstable], err[unstable]
    ones, ninf = np.ones(r), np.full(r, -np.inf)
    model.add_rows([(z.cols, zm), (h, -ones)], ninf, _rhs_up(eu - zc), slack=2 * eu - lu)  # z <= h
    model.add_rows([(h, ones), (a, -uu)], ninf, np.zeros(r), slack=uu)  # h <= u a
    model.add_rows([(h, ones), (z.cols, -zm), (a, -lu)], ninf, _rhs_up(zc - lu + eu), slack=2 * eu - lu)
    cols = np.concatenate([z.cols, h])  # h indices are new, hence larger: still sorted
    m = np.zeros((z.M.shape[0], cols.size))
    m[active, : z.cols.size] = z.M[active]
    m[np.nonzero(unstable)[0], z.cols.size + np.arange(r)] = 1.0
    out_err = None if z.err is None else np.where(active, z.err, 0.0)
    return _Expr(cols, m, np.where(active, z.c, 0.0), out_err).pruned()


def _maxpool(model: _Model, op: MaxPool2d, x: _Expr, shape: tuple[int, ...], l: np.ndarray,
             u: np.ndarray) -> _Expr:
    """Window candidates are the elements whose upper bound reaches the window's largest lower bound. Rows are
    relaxed by the candidates' errors; slacks at an exact execution: ``x_k <= y`` at most ``u_max - l_k + 2E_k``,
    ``y <= x_k + big (1 - d_k)`` at most ``big + 2E_k``."""
    lead = int(np.prod(shape[:-3], dtype=np.int64))
    idx = torch.arange(x.M.shape[0], dtype=torch.float64, device="cpu").reshape(lead, *shape[-3:])
    windows = op._windows(idx)  # [lead, C, K, L], -inf at padding
    windows = windows.permute(0, 1, 3, 2).reshape(-1, windows.shape[2]).numpy()
    n_out = windows.shape[0]
    err = x.error()
    rows_m, rows_c, rows_e = np.zeros((n_out, x.cols.size)), np.zeros(n_out), np.zeros(n_out)
    new_cols: list[int] = []
    new_rows: list[tuple[int, int]] = []
    for o in range(n_out):
        w = windows[o][np.isfinite(windows[o])].astype(np.int64)
        best_l = l[w].max()
        cand = w[u[w] >= best_l]
        if cand.size == 1:
            rows_m[o], rows_c[o], rows_e[o] = x.M[cand[0]], x.c[cand[0]], err[cand[0]]
            continue
        u_max = u[cand].max()
        y = int(model.add_vars(np.array([best_l]), np.array([u_max]))[0])
        d = model.add_vars(np.zeros(cand.size), np.ones(cand.size), integer=True)
        k = cand.size
        yk = np.full(k, y)
        ninf = np.full(k, -np.inf)
        ek = err[cand]
        big = u_max - l[cand]
        model.add_rows([(x.cols, x.M[cand]), (yk, -np.ones(k))], ninf, _rhs_up(ek - x.c[cand]),
                       slack=big + 2 * ek)  # x_k <= y
        model.add_rows([(yk, np.ones(k)), (x.cols, -x.M[cand]), (d, big)], ninf, _rhs_up(x.c[cand] + big + ek),
                       slack=big + 2 * ek)
        model.add_rows([(d, np.ones((1, k)))], np.ones(1), np.ones(1), slack=np.zeros(1))  # sum d = 1
        new_cols.append(y)
        new_rows.append((o, y))
    cols = np.concatenate([x.cols, np.asarray(new_cols, dtype=np.int64)])
    m = np.zeros((n_out, cols.size))
    m[:, : x.cols.size] = rows_m
    for j, (o, _) in enumerate(new_rows):
        m[o, x.cols.size + j] = 1.0
    return _Expr(cols, m, rows_c, None if x.err is None else rows_e).pruned()


def encode(graph: Graph, x_lo, x_hi, tighten: bool = False, tighten_time: float | None = None,
           linear_cache: dict | None = None, given: dict[str, tuple[Tensor, Tensor]] | None = None
           ) -> MipEncoding:
    """Encode ``graph`` over the box ``[x_lo, x_hi]`` (any shape with ``input_numel`` values).

    ``tighten``: also tighten the CROWN bounds of unstable ReLU inputs by LP over the encoding so far (two
    LPs per unstable neuron, for at most ``tighten_time`` seconds) -- fewer binaries, smaller big-M.
    A float64 ``graph`` is used as it is (no copy); ``linear_cache`` (an empty dict, then passed again for
    later boxes of the same float64 graph) keeps the affine ops' matrices between calls. ``given``: sound
    intermediate bounds over the box (e.g. MIP-refined; any precision, cast outward) intersected with CROWN's.
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
            out = _linear(op, ins, [g.shape_of(i) for i in node.inputs], linear_cache if g is graph else None,
                          model)
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
