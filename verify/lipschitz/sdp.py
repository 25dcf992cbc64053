"""LipSDP-Neuron (Fazlyab et al., NeurIPS 2019): a global l2 Lipschitz bound of a ReLU MLP by an SDP.

With slope-restricted activations in ``[0, 1]``, ``T = diag(lambda) >= 0``, ``A = [blkdiag(W_1..W_{L-1}), 0]``,
``B = [0, I_N]``: minimise ``rho`` s.t. ``M = A^T T B + B^T T A - 2 B^T T B - blkdiag(rho I, 0, .., -w_j w_j^T) <= 0``;
then ``||J_j||_2 <= sqrt(rho)`` everywhere and ``||J_j||_1 <= sqrt(d) sqrt(rho)``.

A solver's answer is no proof (tolerances), so the bound is certified: with the returned ``lambda`` (clamped to
``>= 0``) and a candidate ``rho``, ``M`` is formed in float64 with an entrywise bound ``E >= |M* - M|`` (its rounding
and the weights' ``weight_err``; ``M*`` the exact matrix), and with ``M ~ V D V^T`` from ``eigh`` (Weyl):
``lambda_max(M*) <= d_max (1 -+ eta) + ||M - V D V^T||_F + ||E||_F``, ``eta >= ||V^T V - I||_2``, every product and
norm bounded in float64 with its ``gamma`` term. ``rho`` is inflated until this is ``< 0`` (once more after a
re-solve with a margin); no certificate: the bound is ``inf`` (the API then falls back to the naive bound).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from verify.errors import UnsupportedOperator
from verify.graph import Graph
from verify.ops.activation import Relu
from verify.ops.linear import Dense
from verify.ops.shape import Reshape

log = logging.getLogger(__name__)
U64 = float(np.finfo(np.float64).eps) / 2
INFLATE = (0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 1.0)  # relative inflations of rho tried for a certificate


def _gamma(n: int) -> float:
    """``1.5 gamma_{n+4}`` in float64 (``verify.rounding.gamma``)."""
    k = (n + 4) * U64
    return 1.5 * k / (1 - k)


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def _chain_weights(graph: Graph) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights ``W_1..W_L`` of a Dense-ReLU-...-Dense chain (reshapes skipped) and bounds on their distance to
    the exact weights (``weight_err``, zeros when exact), in float64 (exact for float32 weights)."""
    ws: list[np.ndarray] = []
    errs: list[np.ndarray] = []
    expect_dense = True
    for n in graph.nodes:
        if isinstance(n.op, Reshape):
            continue
        if isinstance(n.op, Dense) and expect_dense:
            w = n.op.weight.detach().double().numpy()
            ws.append(w)
            werr = n.op.weight_err
            errs.append(np.zeros_like(w) if werr is None else werr.detach().double().numpy())
            expect_dense = False
        elif isinstance(n.op, Relu) and not expect_dense:
            expect_dense = True
        else:
            raise UnsupportedOperator(n.op.display_name, n.name,
                                      detail="LipSDP needs a Dense-ReLU-...-Dense chain")
    if expect_dense:
        raise UnsupportedOperator("Relu", detail="LipSDP needs the network to end with a Dense layer")
    return ws, errs


def _frob_up(x: np.ndarray) -> float:
    """An upper bound of the Frobenius norm of the float64 matrix ``x`` (sum of squares with its gamma, and
    underflowed squares)."""
    s = float(np.sum(x * x))
    return _up(math.sqrt(s * (1 + _gamma(x.size + 2))) * (1 + 4 * U64) + x.size * 1e-154)


def lmi_matrix(ws: list[np.ndarray], errs: list[np.ndarray], lam: np.ndarray, rho: float, j: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The LMI matrix ``M`` of output ``j`` in float64 and an entrywise bound ``E`` on ``|M* - M|`` for the exact
    weights (``|W* - W| <= errs``) and exact arithmetic."""
    hidden = [w.shape[0] for w in ws[:-1]]
    n0 = ws[0].shape[1]
    size = n0 + sum(hidden)
    m = np.zeros((size, size))
    e = np.zeros((size, size))
    col, row = 0, n0
    off = 0
    for w, err, h in zip(ws[:-1], errs[:-1], hidden, strict=True):
        t = lam[off:off + h]
        tw = t[:, None] * w  # one rounding per entry; exact weights: |t W* - t W| <= t Err
        ew = U64 * np.abs(tw) + t[:, None] * err * (1 + 2 * U64)
        m[row:row + h, col:col + w.shape[1]] = tw
        m[col:col + w.shape[1], row:row + h] = tw.T
        e[row:row + h, col:col + w.shape[1]] = ew
        e[col:col + w.shape[1], row:row + h] = ew.T
        m[row:row + h, row:row + h] -= np.diag(2 * t)  # exact
        col, row, off = row, row + h, off + h
    wl, el = ws[-1][j], errs[-1][j]
    nl = wl.size
    outer = np.outer(wl, wl)
    last = m[size - nl:, size - nl:]
    e_last = U64 * np.abs(outer) + (2 * np.outer(el, np.abs(wl)) + np.outer(el, el)) * (1 + 4 * U64)
    m[size - nl:, size - nl:] = last + outer
    e[size - nl:, size - nl:] += e_last + U64 * np.abs(m[size - nl:, size - nl:])  # the rounded sum
    m[:n0, :n0] -= rho * np.eye(n0)  # exact (the block holds zeros)
    return m, e


def lambda_max_upper(m: np.ndarray, e: np.ndarray) -> float:
    """A rigorous upper bound of the largest eigenvalue of every symmetric ``M*`` with ``|M* - m| <= e``."""
    n = m.shape[0]
    w, v = np.linalg.eigh(m)
    av = np.abs(v)
    g = _gamma(n + 1)
    # ||m - V D V^T||_F: the computed residual, plus the rounding of V D V^T (gamma |V||D||V|^T) and of m - P
    p = (v * w) @ v.T
    q = (av * np.abs(w)) @ av.T * (1 + g)
    r = _up(_frob_up(m - p) * (1 + 2 * U64) + g * _frob_up(q))
    # eta >= ||V^T V - I||_2 likewise
    vtv = v.T @ v
    eta = _up(_frob_up(vtv - np.eye(n)) * (1 + 2 * U64) + g * _frob_up(av.T @ av * (1 + g)))
    if eta >= 0.5:
        return math.inf
    d = float(w.max())
    lead = d * (1 - eta) if d <= 0 else d * (1 + eta)  # D <= d I, so V D V^T <= d V V^T
    return _up(_up(lead * (1 + 2 * U64) if lead > 0 else lead * (1 - 2 * U64)) + r + _frob_up(e))


def _certify(ws, errs, lam: np.ndarray, rho: float, j: int) -> float | None:
    """The smallest tried inflation of ``rho`` with a certified ``lambda_max(M*) < 0``, or None."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    scale = 1.0 + float(np.abs(ws[-1][j]).sum()) ** 2
    for delta in INFLATE:
        r = _up(_up(rho * (1 + delta)) + delta * scale * 1e-3) if delta else rho
        if not math.isfinite(r):
            return None
        m, e = lmi_matrix(ws, errs, lam, r, j)
        if lambda_max_upper(m, e) < 0:
            return r
    return None


def lipsdp_l2(graph: Graph, outputs: Sequence[int], solver: str = "CLARABEL") -> list[float]:
    """Certified global l2 Lipschitz bound of each selected output of a Dense/ReLU chain (``inf`` where no
    certificate was found)."""
    import cvxpy as cp

    ws, errs = _chain_weights(graph)
    hidden = [w.shape[0] for w in ws[:-1]]
    n0, big_n = ws[0].shape[1], sum(hidden)
    size = n0 + big_n
    a = np.zeros((big_n, size))
    r = c = 0
    for w in ws[:-1]:
        a[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    b = np.zeros((big_n, size))
    b[:, n0:] = np.eye(big_n)
    e0 = np.zeros((size, size))
    e0[:n0, :n0] = np.eye(n0)

    def solve(j: int, margin: float) -> tuple[np.ndarray | None, float]:
        lam = cp.Variable(big_n, nonneg=True)
        rho = cp.Variable(nonneg=True)
        t = cp.diag(lam)
        m = a.T @ t @ b + b.T @ t @ a - 2 * b.T @ t @ b
        wl = ws[-1][j:j + 1]
        last = np.zeros((size, size))
        nl = wl.shape[1]
        last[size - nl:, size - nl:] = wl.T @ wl
        lmi = m - rho * e0 + last + margin * np.eye(size)
        prob = cp.Problem(cp.Minimize(rho), [(lmi + lmi.T) / 2 << 0])
        try:
            prob.solve(solver=solver)
        except (cp.error.SolverError, ValueError):
            prob.solve(solver="SCS")
        log.info("LipSDP: output %d %s (margin %g)", j, prob.status, margin)
        if rho.value is None or lam.value is None:
            return None, math.inf
        return np.asarray(lam.value, dtype=np.float64), float(rho.value)

    out = []
    for j in outputs:
        log.info("LipSDP: output %d (%d of %d), LMI of size %d, solver %s", j, len(out) + 1, len(outputs), size,
                 solver)
        t0 = time.perf_counter()
        rho_c = None
        lam, rho = solve(j, 0.0)
        if lam is not None and math.isfinite(rho):
            rho_c = _certify(ws, errs, lam, max(rho, 0.0), j)
        if rho_c is None:  # the optimum sits on the boundary of the cone: re-solve strictly inside it
            lam, rho = solve(j, 1e-6 * (1.0 + float(np.abs(ws[-1][j]).sum()) ** 2))
            if lam is not None and math.isfinite(rho):
                rho_c = _certify(ws, errs, lam, max(rho, 0.0), j)
        if rho_c is None:
            log.warning("LipSDP: output %d: no certified bound (the LMI could not be verified)", j)
            out.append(math.inf)
        else:
            out.append(_up(math.sqrt(rho_c)))  # sqrt is correctly rounded: one ulp up bounds it
        log.info("LipSDP: output %d bound %.6g in %.1f s", j, out[-1], time.perf_counter() - t0)
    return out
