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

    phi: Tensor  # (P, m, J, N) linear features at the sampled points (any strides; see feature_major)
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
    """sum over PDE rows of a_i^T b_i for rows a, b (P, m, N), block-diagonal when blocks > 1."""
    if prob.blocks == 1:
        return a.transpose(1, 2) @ b
    p, mm, n = a.shape
    k = prob.blocks
    ak, bk = a.reshape(p * k, mm // k, n), b.reshape(p * k, mm // k, n)
    return block_diagonal((ak.transpose(1, 2) @ bk).reshape(p, k, n, n))


def feature_major(phi: Tensor) -> Tensor | None:
    """phi (P, m, J, N) stored feature-major, i.e. a transpose(1, 2) view of a contiguous (P, J, m, N): that
    storage, else None. Each feature's (m, N) rows are then contiguous, which makes the per-feature passes of
    the solver (Jacobian rows, Hessian, gradients) about 3x faster than on (m, J, N) rows."""
    t = phi.transpose(1, 2)
    return t if t.is_contiguous() else None


_LOOP_MAX = 128  # problems up to which matrix-vector products loop over the problems


def _matvec(a: Tensor, v: Tensor) -> Tensor:
    """(P, M, N) @ (P, N) -> (P, M). A batched matrix-vector product lowers to bmm with one output column, about
    3x slower on CPU than one matrix-vector product per problem (1.0 vs 0.3 ms for 4 x 3e4 x 16); on a GPU the
    per-problem loop would cost one kernel launch per problem instead."""
    if a.device.type == "cpu" and a.shape[0] <= _LOOP_MAX:
        return torch.stack([a[i] @ v[i] for i in range(a.shape[0])])
    return (a @ v[..., None])[..., 0]


def features(prob: NLLSProblem, w: Tensor) -> Tensor:
    """z = Phi w + c, shape (P, m, J) (feature-major storage when phi is)."""
    p, m, j, n = prob.phi.shape
    k = prob.blocks
    fm = feature_major(prob.phi)
    if k == 1 and fm is not None:
        z = _matvec(fm.reshape(p, j * m, n), w).reshape(p, j, m).transpose(1, 2)
    elif fm is not None:  # row group g of every feature acts on block g of w: one product per (problem, feature, g)
        mk, wk = m // k, w.reshape(p, k, n)
        rows = [
            torch.cat([fm[i, jj, g * mk : (g + 1) * mk] @ wk[i, g] for g in range(k)])
            for i in range(p)
            for jj in range(j)
        ]
        z = torch.stack(rows).reshape(p, j, m).transpose(1, 2)
    else:
        z = _matvec(prob.phi.reshape(p * k, (m // k) * j, n), w.reshape(p * k, n)).reshape(p, m, j)
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
    """J of the PDE rows, sum_j diag(df/dz_j) Phi_j, shape (P, m, N), contiguous.

    One multiply-accumulate per feature: no (P, m, J, N) temporary (a broadcast product summed over J is 2x
    slower, 4x on feature-major phi; einsum("pmj,pmjn->pmn") lowers to P m tiny matrix products, 4x slower).
    """
    return _weighted_sum(phi, [d1[:, :, j] for j in range(phi.shape[2])])


def _weighted_sum(phi: Tensor, weights: list[Tensor | None]) -> Tensor:
    """sum_j diag(weights[j]) Phi_j (P, m, N) over the features whose weight (P, m) is not None."""
    out = None
    for j, c in enumerate(weights):
        if c is None:
            continue
        if out is None:
            out = phi[:, :, j] * c[..., None]
        else:
            out.addcmul_(phi[:, :, j], c[..., None])
    if out is None:
        p, m, _, n = phi.shape
        return phi.new_zeros(p, m, n)
    return out


def linear_gram(prob: NLLSProblem) -> Tensor:
    """L^T L + ridge^2 I, (P, N, N): the constant part of J^T J (the IC/BC rows and the ridge are linear)."""
    n = prob.L.shape[-1]
    eye = torch.eye(n, dtype=prob.L.dtype, device=prob.L.device)
    return prob.L.transpose(1, 2) @ prob.L + prob.ridge**2 * eye


def normal_equations(prob: NLLSProblem, w: Tensor, lin: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Return (cost = 1/2 ||r||^2 (P,), J^T J (P, N, N), J^T r (P, N)) without forming the linear rows' J.

    ``lin`` = linear_gram(prob), computed once per solve by the caller: the IC/BC rows and the ridge are the
    same in every iteration, so only the PDE rows' part of J^T J changes (for experts that share the global IC/BC
    rows this avoids re-multiplying the replicated rows in every iteration).
    """
    fz, d1, _ = pointwise_derivatives(prob.f, features(prob, w), second=False)
    p, m, _, n = prob.phi.shape
    k = prob.blocks
    jp = row_jacobian(d1, prob.phi).reshape(p * k, m // k, n)
    gram = jp.transpose(1, 2) @ jp
    jtj = (gram if k == 1 else block_diagonal(gram.reshape(p, k, n, n))) + (linear_gram(prob) if lin is None else lin)
    # Products with transposed matrices as row vector times matrix (one gemm row; einsum would copy a
    # transposed L in every iteration, and one output column lowers to a slow bmm).
    r_lin = _matvec(prob.L, w) - prob.y
    lam2 = prob.ridge**2
    jtr_pde = (fz.reshape(p * k, 1, m // k) @ jp).reshape(p, k * n)
    jtr = jtr_pde + (r_lin[:, None, :] @ prob.L)[:, 0] + lam2 * w
    cost = 0.5 * ((fz**2).sum(-1) + (r_lin**2).sum(-1) + lam2 * (w**2).sum(-1))
    return cost, jtj, jtr


def hessian(prob: NLLSProblem, w: Tensor, gauss_newton: bool = False) -> Tensor:
    """Hessian of 1/2 ||r(w)||^2, (P, N, N): exact by default, J^T J only if ``gauss_newton``.

    The Gauss-Newton matrix is exact only at zero residual; our problems are over-determined (m >> N).
    """
    derivs = pointwise_derivatives(prob.f, features(prob, w), second=not gauss_newton)
    jp = row_jacobian(derivs[1], prob.phi)
    h = row_gram(prob, jp, jp) + linear_gram(prob)
    return h if gauss_newton else h + second_order(prob, derivs)


def second_order(prob: NLLSProblem, derivs: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
    """sum_i r_i Hess(r_i) = sum_j Phi_j^T V_j with V_j = sum_k diag(f d2f/dz_j dz_k) Phi_k, at w.

    Pairs (j, k) whose second derivative vanishes at every row (features entering f linearly, e.g. u_t) are
    skipped: they add exact zeros.
    """
    fz, _, d2 = derivs
    p, m, jj, n = prob.phi.shape
    k = prob.blocks
    out = torch.zeros(p * k, n, n, dtype=prob.phi.dtype, device=prob.phi.device)
    if d2 is not None:
        c = fz[..., None, None] * d2  # (P, m, J, J)
        for j in range(jj):
            cols = [c[:, :, j, kk] if bool(d2[:, :, j, kk].any()) else None for kk in range(jj)]
            if all(col is None for col in cols):
                continue
            v = _weighted_sum(prob.phi, cols).reshape(p * k, m // k, n)
            out += prob.phi[:, :, j].reshape(p * k, m // k, n).transpose(1, 2) @ v
    return out if k == 1 else block_diagonal(out.reshape(p, k, n, n))
