"""Exact local Lipschitz constant by mixed-integer programming (LipMIP, Jordan & Dimakis, NeurIPS 2020).

Per output ``j``: ``max sum_i t_i`` over ``x`` in the box, forward ReLU binaries ``a`` (big-M with sound
``[l, u]``), gradient ``G:out = e_j``, ``G:in = L^T G:out`` for affine ops, ``s = a (.) g`` for unstable ReLUs
(``s <= g - gl(1-a)``, ``s >= g - gu(1-a)``, ``s >= gl a``, ``s <= gu a`` with ``gl = min(l_g, 0)``,
``gu = max(u_g, 0)`` from the Jacobian CROWN bounds) and ``t = |g_0|`` with a binary for straddling entries.
On timeout the solver's dual bound (still an upper bound) is reported, intersected with CROWN.

Real arithmetic: every affine expression carries a bound ``E`` on its distance, at an exact execution, to the
exact value (float64 rounding of its coefficients and the weights' representation errors): forward ones from
``verify.mip``; gradient ones ``E_x = |L|^T E_y + gamma_n |L|^T m_y + Err^T m_y`` with ``m_y = |M_y| |v| + |c_y|``.
Rows that compare such expressions are relaxed by ``E`` (and the gradient variables' ranges widened by it), so an
exact execution stays feasible and the solver's dual bound, after ``verify.mip.tolerance``'s margin, is sound.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from verify.bounds.crown import intermediate_bounds
from verify.errors import UnsupportedOperator
from verify.graph import Graph
from verify.lipschitz.jacobian import JacobianGraph, abs_adjoint, adjoint, err_adjoint, seed_tensor, step_gamma
from verify.mip import Backend, _Expr, _linear, _lp_tighten, _Model, _relu, _solve, _widened
from verify.mip.encoding import _rhs_up
from verify.ops.activation import Relu
from verify.ops.base import LinearOp

log = logging.getLogger(__name__)


@dataclass
class LipMipResult:
    """Per-output results of :func:`lipmip`."""

    upper: list[float]  # per output: exact value when optimal, else the dual bound (min with CROWN)
    value: list[float]  # per output: the MIP objective at the best feasible solution (-inf without one)
    status: list[str]  # "optimal" / "timeout"
    x: list  # per output: the best x found (or None)
    seconds: float = 0.0
    n_binaries: int = 0


U64 = float(np.finfo(np.float64).eps) / 2


def _mass(e: _Expr, col_mag: np.ndarray) -> np.ndarray:
    """``|M| |v| + |c|``: the largest magnitude of the expression's terms over the variables' box."""
    return np.abs(e.M) @ col_mag[e.cols] + np.abs(e.c)


def _add(a: _Expr | None, b: _Expr, col_mag: np.ndarray) -> _Expr:
    """Sum of two affine expressions over MIP variables (fan-out of gradients); the float64 sum rounds once."""
    if a is None:
        return b
    cols = np.union1d(a.cols, b.cols)
    err = a.error() + b.error() + 2 * U64 * (_mass(a, col_mag) + _mass(b, col_mag))
    return _Expr(cols, a.widen(cols) + b.widen(cols), a.c + b.c, err)


def _adjoint_expr(op: LinearOp, e: _Expr, k: int, out_shape, col_mag: np.ndarray) -> _Expr:
    """``L_k^T`` applied to an affine expression (columns as the spec axis of ``adjoint``), with its error
    (module docstring)."""
    ncols = e.cols.size
    with torch.no_grad():
        c = adjoint(op, torch.from_numpy(e.c).reshape(1, 1, *out_shape))[k].reshape(-1).numpy()
        if ncols:
            m = torch.from_numpy(np.ascontiguousarray(e.M.T)).reshape(1, ncols, *out_shape)
            mt = adjoint(op, m)[k].reshape(ncols, -1).numpy().T
        else:
            mt = np.zeros((c.size, 0))
        mass = torch.from_numpy(_mass(e, col_mag)).reshape(1, 1, *out_shape)
        err = step_gamma(op, torch.float64) * abs_adjoint(op, mass)[k]
        if e.err is not None:
            err = err + abs_adjoint(op, torch.from_numpy(e.err).reshape(1, 1, *out_shape))[k]
        werr = err_adjoint(op, k, mass)
        if werr is not None:
            err = err + werr
    return _Expr(e.cols, np.ascontiguousarray(mt), c.astype(np.float64),
                 (err.reshape(-1).numpy() * (1 + 1e-6))).pruned()


def lipmip(graph: Graph, x_lo, x_hi, outputs: Sequence[int], timeout: float | None = None,
           backend: Backend = "auto", tighten: bool = True, crown_upper: Sequence[float] | None = None
           ) -> LipMipResult:
    """Exact ``max_{x in X} ||J_j(x)||_1`` per output (float64 ``graph`` of affine ops and ReLUs)."""
    t0 = time.perf_counter()
    for n in graph.nodes:
        if not (isinstance(n.op, LinearOp) or isinstance(n.op, Relu)):
            raise UnsupportedOperator(n.op.display_name, n.name, detail="LipMIP encodes affine ops and ReLU only")
    # the solvers read numpy arrays: everything here is on the CPU
    lo = torch.as_tensor(x_lo, dtype=torch.float64, device="cpu").reshape(1, *graph.input_shape)
    hi = torch.as_tensor(x_hi, dtype=torch.float64, device="cpu").reshape(1, *graph.input_shape)
    with torch.no_grad():
        fb = intermediate_bounds(graph, lo, hi, "crown")
    model = _Model()
    n_in = graph.input_numel
    x_idx = model.add_vars(lo.reshape(-1).numpy(), hi.reshape(-1).numpy())
    exprs: dict[str, _Expr] = {graph.input_name: _Expr(x_idx, np.eye(n_in), np.zeros(n_in))}
    relu_info: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}  # l, u, unstable, a idx
    deadline = None if timeout is None else t0 + timeout / 4
    for node in graph.nodes:
        ins = [exprs[i] for i in node.inputs]
        if isinstance(node.op, Relu):
            l, u = _widened(*fb[node.inputs[0]])
            if tighten:
                l, u = _lp_tighten(model, ins[0], l, u, deadline)
            unstable = (l < 0) & (u > 0)
            r = int(unstable.sum())
            n0 = model.n
            exprs[node.name] = _relu(model, ins[0], l, u)
            relu_info[node.name] = (l, u, unstable, np.arange(n0 + r, n0 + 2 * r))
        else:
            exprs[node.name] = _linear(node.op, ins, [graph.shape_of(i) for i in node.inputs], model=model)
    # forward bounds for the Jacobian bounds: exactly the ones the encoding used
    fb_used = dict(fb)
    for node in graph.nodes:
        if isinstance(node.op, Relu):
            l, u = relu_info[node.name][:2]
            shape = graph.shape_of(node.inputs[0])
            fb_used[node.inputs[0]] = (torch.from_numpy(l).reshape(1, *shape), torch.from_numpy(u).reshape(1, *shape))
    jg = JacobianGraph(graph)
    res = LipMipResult([], [], [], [], 0.0, 0)
    base = model
    for idx, j in enumerate(outputs):
        seeds = seed_tensor(graph, [j], torch.float64)
        gates = jg.gates(fb_used)
        gb = jg.bounds(gates, seeds, True)
        crown = float(jg.l1_upper(gates, gb, seeds, True)[0])
        if crown_upper is not None:
            crown = min(crown, float(crown_upper[idx]))
        m = base.copy()
        col_mag = m.magnitudes()
        g_expr: dict[str, _Expr] = {graph.output: _Expr(np.zeros(0, dtype=np.int64),
                                                       np.zeros((graph.output_numel, 0)),
                                                       seeds.reshape(-1).numpy().astype(np.float64))}
        for node in reversed(graph.nodes):
            ge = g_expr.pop(node.name, None)
            if ge is None:
                continue
            if isinstance(node.op, Relu):
                l, u, unstable, a_idx = relu_info[node.name]
                glo = gb[node.name][0].reshape(-1).numpy()
                ghi = gb[node.name][1].reshape(-1).numpy()
                eg = ge.error()
                # s = a g* of the exact gradient g*, |g - g*| <= E: ranges and rows relaxed by E (rounded up)
                gl = np.nextafter(np.minimum(glo, 0.0) - eg - 1e-9 * (1 + np.abs(glo)), -np.inf)
                gu = np.nextafter(np.maximum(ghi, 0.0) + eg + 1e-9 * (1 + np.abs(ghi)), np.inf)
                active = l >= 0
                r = int(unstable.sum())
                s_idx = m.add_vars(gl[unstable], gu[unstable])
                ui = np.nonzero(unstable)[0]
                gm, gc, eu = ge.M[ui], ge.c[ui], eg[ui]
                one, ninf, pinf = np.ones(r), np.full(r, -np.inf), np.full(r, np.inf)
                glu, guu = gl[unstable], gu[unstable]
                # s <= g - gl (1 - a)  <=>  s - g - gl a <= -gl
                m.add_rows([(s_idx, one), (ge.cols, -gm), (a_idx, -glu)], ninf, _rhs_up(gc - glu + eu))
                # s >= g - gu (1 - a)  <=>  s - g - gu a >= -gu
                m.add_rows([(s_idx, one), (ge.cols, -gm), (a_idx, -guu)], -_rhs_up(guu - gc + eu), pinf)
                m.add_rows([(s_idx, one), (a_idx, -glu)], np.zeros(r), pinf)  # s >= gl a
                m.add_rows([(s_idx, one), (a_idx, -guu)], ninf, np.zeros(r))  # s <= gu a
                cols = np.concatenate([ge.cols, s_idx])
                mm = np.zeros((ge.M.shape[0], cols.size))
                mm[active, : ge.cols.size] = ge.M[active]
                mm[ui, ge.cols.size + np.arange(r)] = 1.0
                out = _Expr(cols, mm, np.where(active, ge.c, 0.0), np.where(l > u, 0.0, np.where(
                    u <= 0, 0.0, eg))).pruned()  # s itself may sit E away from a g*
                col_mag = m.magnitudes()
                zname = node.inputs[0]
                g_expr[zname] = _add(g_expr.get(zname), out, col_mag)
            else:
                for k, i in enumerate(node.inputs):
                    e = _adjoint_expr(node.op, ge, k, graph.shape_of(node.name), col_mag)
                    g_expr[i] = _add(g_expr.get(i), e, col_mag)
        g0 = g_expr[graph.input_name]
        glo = gb[graph.input_name][0].reshape(-1).numpy()
        ghi = gb[graph.input_name][1].reshape(-1).numpy()
        const = 0.0
        pos, neg = glo >= 0, ghi <= 0
        strad = ~(pos | neg)
        # sign-stable entries: t = +-g directly in the objective (minimise -sum t)
        sign = np.where(pos, 1.0, np.where(neg, -1.0, 0.0))
        coef = -(sign @ g0.M)
        const -= float(sign @ g0.c)
        r = int(strad.sum())
        si = np.nonzero(strad)[0]
        e0 = g0.error()
        if float(np.abs(sign) @ e0) > 0:  # the sign-stable part of the objective misses sum |g*| by sum E
            const -= float(np.nextafter(float(np.abs(sign) @ e0) * (1 + 1e-6), np.inf))
        if r:
            es = e0[si]
            lo_s = np.nextafter(glo[si] - es - 1e-9 * (1 + np.abs(glo[si])), -np.inf)
            hi_s = np.nextafter(ghi[si] + es + 1e-9 * (1 + np.abs(ghi[si])), np.inf)
            t_idx = m.add_vars(np.zeros(r), np.maximum(-lo_s, hi_s))
            sg = m.add_vars(np.zeros(r), np.ones(r), integer=True)
            one, ninf, pinf = np.ones(r), np.full(r, -np.inf), np.full(r, np.inf)
            gm, gc = g0.M[si], g0.c[si]
            # t = |g*| for the exact gradient g*, |g - g*| <= E: every row relaxed by E (rounded outward)
            m.add_rows([(t_idx, one), (g0.cols, -gm)], -_rhs_up(es - gc), pinf)  # t >= g - E
            m.add_rows([(t_idx, one), (g0.cols, gm)], -_rhs_up(es + gc), pinf)  # t >= -g - E
            m.add_rows([(t_idx, one), (g0.cols, -gm), (sg, -2 * lo_s)], ninf, _rhs_up(gc - 2 * lo_s + es))
            m.add_rows([(t_idx, one), (g0.cols, gm), (sg, -2 * hi_s)], ninf, _rhs_up(es - gc))
        obj = np.zeros(m.n)
        obj[g0.cols] += coef
        if r:
            obj[t_idx] -= 1.0
        remaining = None if timeout is None else max(timeout - (time.perf_counter() - t0), 0.0) / (
            len(outputs) - idx)
        log.info("LipMIP: output %d (%d of %d), %d variables, time limit %s", outputs[idx], idx + 1, len(outputs),
                 m.n, "none" if remaining is None else f"{remaining:.1f} s")
        sol = _solve(m, obj, backend, remaining)
        log.info("LipMIP: output %d %s", outputs[idx], sol.status)
        value = -(sol.objective + const) if math.isfinite(sol.objective) else -math.inf
        # the dual bound of min -sum t, made sound for the solver's tolerances (verify.mip.tolerance)
        dual = sol.tol.lower(sol.bound + const, m.spread) if sol.status != "infeasible" else -math.inf
        if sol.status == "optimal":
            up = max(-dual, value)
            status = "optimal"
        else:
            up = -dual if math.isfinite(dual) else math.inf
            status = "timeout"
        res.upper.append(min(up, crown))  # both are upper bounds (MIP gap / CROWN)
        res.value.append(value)
        res.status.append(status)
        res.x.append(None if sol.v is None else np.clip(sol.v[:n_in], lo.reshape(-1).numpy(),
                                                        hi.reshape(-1).numpy()))
        res.n_binaries = max(res.n_binaries, m.n_binaries)
    res.seconds = time.perf_counter() - t0
    return res
