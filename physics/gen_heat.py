"""1D heat equation with an exact solution, the linear test problem.

u_t = kappa u_xx on (0, 1), u(0, t) = u(1, t) = 0,   u0(x) = sum_n a_n sin(n pi x)
=> u(x, t) = sum_n a_n exp(-kappa n^2 pi^2 t) sin(n pi x)       (separation of variables)
"""

from __future__ import annotations

import numpy as np


def heat_exact(a: np.ndarray, x: np.ndarray, t: np.ndarray, kappa: float) -> np.ndarray:
    """Exact solution u[nt, nx] for sine coefficients a[n-1] of modes n = 1..len(a)."""
    n = np.arange(1, len(a) + 1)
    decay = np.exp(-kappa * (n * np.pi) ** 2 * t[:, None])  # (nt, modes)
    modes = np.sin(np.pi * n[:, None] * x[None, :])  # (modes, nx)
    return (a[None, :] * decay) @ modes


def heat_crank_nicolson(u0: np.ndarray, t: np.ndarray, kappa: float, substeps: int = 1) -> np.ndarray:
    """Crank-Nicolson finite differences on the interior nodes of a uniform grid including x=0 and x=1.

    Second order in space and time; used to check the exact solution under refinement.
    """
    nx = u0.shape[0]
    dx = 1.0 / (nx - 1)
    m = nx - 2
    lap = (np.diag(-2.0 * np.ones(m)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)) / dx**2
    out = np.empty((t.shape[0], nx))
    out[0] = u0
    u = u0[1:-1].copy()
    eye = np.eye(m)
    for i in range(1, t.shape[0]):
        dt = (t[i] - t[i - 1]) / substeps
        step = np.linalg.solve(eye - 0.5 * dt * kappa * lap, eye + 0.5 * dt * kappa * lap)
        for _ in range(substeps):
            u = step @ u
        out[i, 1:-1] = u
        out[i, [0, -1]] = 0.0
    return out
