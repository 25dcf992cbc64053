"""Structured nonlinear least-squares problems: linear feature maps + a pointwise nonlinearity.

    r(w) = [ f(Phi w + c) at m points ; L w - y ; lam * w ],   Phi: (P, m, J, N), L: (P, q, N)

so J_r = [ diag(df/dz_j) Phi_j ; L ; lam I ] needs one autograd call on the pointwise f (no jacfwd), and
the exact Hessian of 1/2 ||r||^2 is J^T J + sum_jk Phi_j^T diag(r d2f/dz_j dz_k) Phi_k
(Chalapathi et al., ICLR 2024, Sec. 3; structured form ours).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Pointwise = Callable[[Tensor], Tensor]
"""f(z): (P, m, J) -> (P, m); row p of the output may depend only on z[..., p, :] (checked in tests)."""


@dataclass
class NLLSProblem:
    """A batch of P independent problems in w in R^N (all tensors float64 inside the solver)."""

    phi: Tensor  # (P, m, J, N) linear features at the sampled points
    offset: Tensor | None  # (P, m, J) affine part of the features (e.g. a known IC contribution), or None
    L: Tensor  # (P, q, N) linear rows (IC/BC), q may be 0
    y: Tensor  # (P, q)
    f: Pointwise
    ridge: float = 1e-4

    @property
    def shape(self) -> tuple[int, int]:
        """(P, N)."""
        return self.phi.shape[0], self.phi.shape[-1]


def features(prob: NLLSProblem, w: Tensor) -> Tensor:
    """z = Phi w + c, shape (P, m, J)."""
    z = torch.einsum("pmjn,pn->pmj", prob.phi, w)
    return z if prob.offset is None else z + prob.offset


def residual(prob: NLLSProblem, w: Tensor) -> Tensor:
    """The stacked residual r(w), shape (P, m + q + N)."""
    r_lin = torch.einsum("pqn,pn->pq", prob.L, w) - prob.y
    return torch.cat([prob.f(features(prob, w)), r_lin, prob.ridge * w], dim=-1)


def pointwise_derivatives(f: Pointwise, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Return f(z), df/dz (P, m, J) and optionally d2f/dz_j dz_k (P, m, J, J), by autograd on a pointwise f.

    Because f acts row by row, the gradient of sum(f) w.r.t. z is exactly the per-row derivative.
    """
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        fz = f(zz)
        (d1,) = torch.autograd.grad(fz.sum(), zz, create_graph=second)
        d2 = None
        if second:
            cols = []
            for j in range(z.shape[-1]):
                if d1.requires_grad:
                    (col,) = torch.autograd.grad(d1[..., j].sum(), zz, retain_graph=True, allow_unused=True)
                else:
                    col = None  # f is linear: no second derivatives at all
                cols.append(torch.zeros_like(zz) if col is None else col)
            d2 = torch.stack(cols, dim=-2)
    return fz.detach(), d1.detach(), None if d2 is None else d2.detach()


def normal_equations(prob: NLLSProblem, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return (cost = 1/2 ||r||^2 (P,), J^T J (P, N, N), J^T r (P, N)) without forming the linear rows' J."""
    fz, d1, _ = pointwise_derivatives(prob.f, features(prob, w), second=False)
    jp = torch.einsum("pmj,pmjn->pmn", d1, prob.phi)
    r_lin = torch.einsum("pqn,pn->pq", prob.L, w) - prob.y
    lam2 = prob.ridge**2
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    jtj = jp.transpose(1, 2) @ jp + prob.L.transpose(1, 2) @ prob.L + lam2 * eye
    jtr = torch.einsum("pmn,pm->pn", jp, fz) + torch.einsum("pqn,pq->pn", prob.L, r_lin) + lam2 * w
    cost = 0.5 * ((fz**2).sum(-1) + (r_lin**2).sum(-1) + lam2 * (w**2).sum(-1))
    return cost, jtj, jtr


def hessian(prob: NLLSProblem, w: Tensor, gauss_newton: bool = False) -> Tensor:
    """Hessian of 1/2 ||r(w)||^2, (P, N, N): exact by default, J^T J only if ``gauss_newton``.

    The Gauss-Newton matrix is exact only at zero residual; our problems are over-determined (m >> N).
    """
    fz, d1, d2 = pointwise_derivatives(prob.f, features(prob, w), second=not gauss_newton)
    jp = torch.einsum("pmj,pmjn->pmn", d1, prob.phi)
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    h = jp.transpose(1, 2) @ jp + prob.L.transpose(1, 2) @ prob.L + prob.ridge**2 * eye
    if not gauss_newton:
        assert d2 is not None
        weighted = torch.einsum("pmjk,pmkn->pmjn", fz[..., None, None] * d2, prob.phi)
        p, m, jj, n = prob.phi.shape
        h = h + prob.phi.reshape(p, m * jj, n).transpose(1, 2) @ weighted.reshape(p, m * jj, n)
    return h
