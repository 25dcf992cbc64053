"""LipSDP-Neuron (Fazlyab et al., NeurIPS 2019): a global l2 Lipschitz bound of a ReLU MLP by an SDP.

With slope-restricted activations in ``[0, 1]``, ``T = diag(lambda) >= 0``, ``A = [blkdiag(W_1..W_{L-1}), 0]``,
``B = [0, I_N]``: minimise ``rho`` s.t. ``A^T T B + B^T T A - 2 B^T T B - blkdiag(rho I, 0, .., -w_j w_j^T) <= 0``;
then ``||J_j||_2 <= sqrt(rho)`` everywhere and ``||J_j||_1 <= sqrt(d) sqrt(rho)``. Solver tolerance applies.
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


def _chain_weights(graph: Graph) -> list[np.ndarray]:
    """Weights ``W_1..W_L`` of a Dense-ReLU-...-Dense chain (reshapes skipped)."""
    ws: list[np.ndarray] = []
    expect_dense = True
    for n in graph.nodes:
        if isinstance(n.op, Reshape):
            continue
        if isinstance(n.op, Dense) and expect_dense:
            ws.append(n.op.weight.detach().double().numpy())
            expect_dense = False
        elif isinstance(n.op, Relu) and not expect_dense:
            expect_dense = True
        else:
            raise UnsupportedOperator(type(n.op).__name__, n.name,
                                      detail="LipSDP needs a Dense-ReLU-...-Dense chain")
    if expect_dense:
        raise UnsupportedOperator("Relu", detail="LipSDP needs the network to end with a Dense layer")
    return ws


def lipsdp_l2(graph: Graph, outputs: Sequence[int], solver: str = "CLARABEL") -> list[float]:
    """Global l2 Lipschitz bound of each selected output of a Dense/ReLU chain."""
    import cvxpy as cp

    ws = _chain_weights(graph)
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
    out = []
    for j in outputs:
        lam = cp.Variable(big_n, nonneg=True)
        rho = cp.Variable(nonneg=True)
        t = cp.diag(lam)
        m = a.T @ t @ b + b.T @ t @ a - 2 * b.T @ t @ b
        wl = ws[-1][j:j + 1]
        last = np.zeros((size, size))
        nl = wl.shape[1]
        last[size - nl:, size - nl:] = wl.T @ wl
        e0 = np.zeros((size, size))
        e0[:n0, :n0] = np.eye(n0)
        lmi = m - rho * e0 + last
        prob = cp.Problem(cp.Minimize(rho), [(lmi + lmi.T) / 2 << 0])
        log.info("LipSDP: output %d (%d of %d), LMI of size %d, solver %s", j, len(out) + 1, len(outputs), size,
                 solver)
        t0 = time.perf_counter()
        try:
            prob.solve(solver=solver)
        except (cp.error.SolverError, ValueError):
            prob.solve(solver="SCS")
        val = float(rho.value) if rho.value is not None else math.inf
        log.info("LipSDP: output %d %s in %.1f s", j, prob.status, time.perf_counter() - t0)
        out.append(math.sqrt(max(val, 0.0)) * (1 + 1e-6))
    return out
