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
    # blocks = K > 1: w = (w_1, ..., w_K) in R^{K N}, phi is (P, m, J, N) with m = K m_k rows in K consecutive
    # groups, group k acting on w_k only (the block-diagonal PDE rows of a joint expert solve, never padded
    # with zeros); L still acts on all of w.
    blocks: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """(P, N)."""
        return self.phi.shape[0], self.phi.shape[-1] * self.blocks


def row_coefficients(prob: NLLSProblem, v: Tensor) -> Tensor:
    """(P, K N) -> (P, m, N): the block of v that each PDE row acts on."""
    p, m, _, n = prob.phi.shape
    k = prob.blocks
    return v.reshape(p, k, 1, n).expand(-1, -1, m // k, -1).reshape(p, m, n)


def block_diagonal(g: Tensor) -> Tensor:
    """(P, K, N, N) -> (P, K N, K N) block-diagonal."""
    p, k, n, _ = g.shape
    out = g.new_zeros(p, k, n, k, n)
    idx = torch.arange(k, device=g.device)
    out[:, idx, :, idx, :] = g.transpose(0, 1)
    return out.reshape(p, k * n, k * n)


def row_gram(prob: NLLSProblem, a: Tensor, b: Tensor) -> Tensor:
    """sum over PDE rows of a_i^T b_i for rows a, b (P, M, N) (M = m or m J), block-diagonal when blocks > 1."""
    if prob.blocks == 1:
        return a.transpose(1, 2) @ b
    p, mm, n = a.shape
    k = prob.blocks
    ak, bk = a.reshape(p * k, mm // k, n), b.reshape(p * k, mm // k, n)
    return block_diagonal((ak.transpose(1, 2) @ bk).reshape(p, k, n, n))


def features(prob: NLLSProblem, w: Tensor) -> Tensor:
    """z = Phi w + c, shape (P, m, J)."""
    if prob.blocks == 1:
        z = torch.einsum("pmjn,pn->pmj", prob.phi, w)
    else:
        p, m, j, n = prob.phi.shape
        k = prob.blocks
        z = (prob.phi.reshape(p * k, (m // k) * j, n) @ w.reshape(p * k, n, 1)).reshape(p, m, j)
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


def row_jacobian(d1: Tensor, phi: Tensor) -> Tensor:
    """J of the PDE rows, sum_j diag(df/dz_j) Phi_j, shape (P, m, N).

    A broadcast multiply and a sum over the J features: einsum("pmj,pmjn->pmn") lowers to P m tiny (1 x J)(J x N)
    matrix products, about 4x slower on CPU at m = 1e4, N = 16.
    """
    return (d1[..., None] * phi).sum(2)


def normal_equations(prob: NLLSProblem, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return (cost = 1/2 ||r||^2 (P,), J^T J (P, N, N), J^T r (P, N)) without forming the linear rows' J."""
    fz, d1, _ = pointwise_derivatives(prob.f, features(prob, w), second=False)
    jp = row_jacobian(d1, prob.phi)
    r_lin = torch.einsum("pqn,pn->pq", prob.L, w) - prob.y
    lam2 = prob.ridge**2
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    jtj = row_gram(prob, jp, jp) + prob.L.transpose(1, 2) @ prob.L + lam2 * eye
    if prob.blocks == 1:
        jtr_pde = torch.einsum("pmn,pm->pn", jp, fz)
    else:
        jtr_pde = (jp * fz[..., None]).reshape(jp.shape[0], prob.blocks, -1, jp.shape[-1]).sum(2).flatten(1)
    jtr = jtr_pde + torch.einsum("pqn,pq->pn", prob.L, r_lin) + lam2 * w
    cost = 0.5 * ((fz**2).sum(-1) + (r_lin**2).sum(-1) + lam2 * (w**2).sum(-1))
    return cost, jtj, jtr


def hessian(prob: NLLSProblem, w: Tensor, gauss_newton: bool = False) -> Tensor:
    """Hessian of 1/2 ||r(w)||^2, (P, N, N): exact by default, J^T J only if ``gauss_newton``.

    The Gauss-Newton matrix is exact only at zero residual; our problems are over-determined (m >> N).
    """
    derivs = pointwise_derivatives(prob.f, features(prob, w), second=not gauss_newton)
    jp = row_jacobian(derivs[1], prob.phi)
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    h = row_gram(prob, jp, jp) + prob.L.transpose(1, 2) @ prob.L + prob.ridge**2 * eye
    return h if gauss_newton else h + second_order(prob, derivs)


def second_order(prob: NLLSProblem, derivs: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
    """sum_i r_i Hess(r_i) = sum_jk Phi_j^T diag(f d2f/dz_j dz_k) Phi_k from the pointwise derivatives at w."""
    fz, _, d2 = derivs
    p, m, jj, n = prob.phi.shape
    if d2 is None:
        k = prob.blocks
        return torch.zeros(p, k * n, k * n, dtype=prob.phi.dtype, device=prob.phi.device)
    weighted = ((fz[..., None, None] * d2)[..., None] * prob.phi[:, :, None]).sum(3)  # (P, m, J, N)
    return row_gram(prob, prob.phi.reshape(p, m * jj, n), weighted.reshape(p, m * jj, n))
