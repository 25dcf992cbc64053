"""Exact implicit-function-theorem backward through the Levenberg-Marquardt solve.

At the optimum g(w*, xi) = J^T r = 0, so dw*/dxi = -H^{-1} dg/dxi with H = J^T J + sum_i r_i Hess(r_i)
(the full Hessian; Gauss-Newton H = J^T J only on request). VJP: solve H lam = dL/dw*, then
xi_bar = -(dg/dxi)^T lam (jaxopt custom_root, optimistix ImplicitAdjoint; Chalapathi et al., ICLR 2024).
H starts from the solver's last J^T J at w*, and xi_bar is written out for the structured residual (O(m J N),
no double backward through autograd); both are checked against autograd and finite differences in the tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from physics.lm import LMConfig, LMResult, lm_solve
from physics.nlls import (
    NLLSProblem,
    Pointwise,
    feature_major,
    features,
    hessian,
    pointwise_derivatives,
    row_coefficients,
    second_order,
)


@dataclass(frozen=True)
class SolverConfig:
    """Forward (LM) and backward (IFT) settings of the hard-constraint layer."""

    lm: LMConfig = field(default_factory=LMConfig)
    ridge: float = 1e-4
    hessian: str = "exact"  # "exact" or "gauss_newton" (documented approximation, wrong at nonzero residual)
    drop_nonconverged: bool = False  # zero the gradient of problems whose solve did not converge

    def __post_init__(self) -> None:
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(f"hessian must be 'exact' or 'gauss_newton', got {self.hessian!r}")


class _ImplicitNLLS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi, offset, L, y, omega0, f, cfg, diag, blocks):  # noqa: D401
        prob = NLLSProblem(phi, offset, L, y, f, cfg.ridge, blocks)
        res = lm_solve(prob, omega0, cfg.lm)
        diag.append(res)
        ctx.f, ctx.cfg, ctx.blocks = f, cfg, blocks
        ctx.jtj = res.jtj  # the solver's J^T J at w*: the backward's Hessian starts from it (no second build)
        ctx.save_for_backward(phi, offset, L, y, res.omega, res.converged)
        return res.omega

    @staticmethod
    def backward(ctx, grad_w):
        phi, offset, L, y, w, converged = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        prob = NLLSProblem(phi, offset, L, y, ctx.f, ctx.cfg.ridge, ctx.blocks)
        with torch.no_grad():
            derivs, lam = _backward_multipliers(ctx, prob, w, grad_w, converged)  # derivs: once for H and the VJP
            grads = _vjp(prob, w, lam, derivs, needs)
        # w* does not depend on the starting point; f, cfg and diag are not tensors.
        return (*grads, None, None, None, None, None)


def _multipliers(prob: NLLSProblem, w: Tensor, grad_w: Tensor, cfg: SolverConfig, jtj: Tensor | None, derivs) -> Tensor:
    """lam = H^{-1} dL/dw* with H = J^T J (+ the second-order term), reusing the solver's last J^T J at w*."""
    if jtj is None:
        h = hessian(prob, w, gauss_newton=cfg.hessian == "gauss_newton")
    else:
        h = jtj if cfg.hessian == "gauss_newton" else jtj + second_order(prob, derivs)
    # The exact Hessian may be indefinite away from a strict minimum: LU, not Cholesky.
    return torch.linalg.solve(h, grad_w.to(h.dtype))


def _row_fields(prob: NLLSProblem, lam: Tensor, derivs) -> tuple[Tensor, Tensor]:
    """(q, p) (P, m, J) with dL/dPhi_ij = -(q_ij w + p_ij lam) and dL/dc_ij = -q_ij (see _vjp)."""
    fz, d1, d2 = derivs
    s = features(NLLSProblem(prob.phi, None, prob.L, prob.y, prob.f, prob.ridge, prob.blocks), lam)  # Phi lam
    a = (d1 * s).sum(-1)
    q = a[..., None] * d1
    if d2 is not None:
        q = q + fz[..., None] * (d2 * s[:, :, None, :]).sum(-1)
    return q, d1 * fz[..., None]


def _linear_row_grads(prob: NLLSProblem, w: Tensor, lam: Tensor, needs) -> list[Tensor | None]:
    """dL/dL = -((L w - y) lam^T + (L lam) w^T), dL/dy = L lam."""
    out: list[Tensor | None] = [None, None]
    if needs[0] or needs[1]:
        l_lam = torch.einsum("pqn,pn->pq", prob.L, lam)
        if needs[0]:
            r_lin = torch.einsum("pqn,pn->pq", prob.L, w) - prob.y
            out[0] = -(r_lin[..., None] * lam[:, None, :] + l_lam[..., None] * w[:, None, :])
        if needs[1]:
            out[1] = l_lam
    return out


def _vjp(prob: NLLSProblem, w: Tensor, lam: Tensor, derivs, needs) -> list[Tensor | None]:
    """xi_bar = -d/dxi (lam^T g(w*, xi)) in closed form for the structured residual, O(m J N) per problem.

    With z = Phi w + c, f = f(z), f' = df/dz, f'' = d2f/dz2, s = Phi lam and a = f' . s (row-wise):
    lam^T g = sum_i a_i f_i + (L lam) . (L w - y) + ridge^2 lam . w, so
    dPhi_ij = -(f'_ij f_i lam + q_ij w), dc_ij = -q_ij with q = f (f'' s) + a f',
    dL = -((L w - y) lam^T + (L lam) w^T), dy = L lam.
    """
    q, pp = _row_fields(prob, lam, derivs)
    out: list[Tensor | None] = [None, None]
    if needs[0]:
        # The coefficients each row acts on, (P, 1 or m, N).
        w_r, lam_r = (w, lam) if prob.blocks == 1 else (row_coefficients(prob, w), row_coefficients(prob, lam))
        w_r, lam_r = (v.reshape(v.shape[0], -1, v.shape[-1]) for v in (w_r, lam_r))
        # Written in phi's own storage order (feature-major or not), so that the gradient flows back through the
        # layer's gather without a transposing copy; two passes over the output, no temporaries.
        qq, pp = -q, -pp  # (P, m, J)
        fm = feature_major(prob.phi) is not None
        if fm:  # (P, J, m, N) storage
            qq, pp = qq.transpose(1, 2).contiguous(), pp.transpose(1, 2).contiguous()
            w_r, lam_r = w_r[:, None], lam_r[:, None]
        else:
            w_r, lam_r = w_r[:, :, None], lam_r[:, :, None]
        g = qq[..., None] * w_r
        g.addcmul_(pp[..., None], lam_r)
        out[0] = g.transpose(1, 2) if fm else g
    if needs[1] and prob.offset is not None:
        out[1] = -q
    return out + _linear_row_grads(prob, w, lam, needs[2:])


def _backward_multipliers(ctx, prob: NLLSProblem, w: Tensor, grad_w: Tensor, converged: Tensor):
    """Second derivatives at w* (shared by H and the VJP) and lam = H^{-1} dL/dw*, with a warning if not finite."""
    cfg: SolverConfig = ctx.cfg
    derivs = pointwise_derivatives(prob.f, features(prob, w), second=True)
    lam = _multipliers(prob, w, grad_w, cfg, ctx.jtj, derivs)
    if cfg.drop_nonconverged:
        lam = torch.where(converged[:, None], lam, torch.zeros_like(lam))
    if not torch.isfinite(lam).all():
        warnings.warn(
            "implicit backward produced non-finite multipliers (singular Hessian)", RuntimeWarning, stacklevel=3
        )
    return derivs, lam


PhiAdjoint = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""(Q, Pr, w, lam) -> dL/dsrc for dL/dPhi_ij = Q_ij w + Pr_ij lam, Q and Pr (P, m, J), w and lam (P, N)."""


class _FactoredNLLS(torch.autograd.Function):
    """w* for phi = make_phi(src): the phi gradient is passed to ``adjoint`` as its two row fields, never formed."""

    @staticmethod
    def forward(ctx, src, offset, L, y, omega0, make_phi, adjoint, f, cfg, diag):  # noqa: D401
        phi = make_phi(src)
        prob = NLLSProblem(phi, offset, L, y, f, cfg.ridge)
        res = lm_solve(prob, omega0, cfg.lm)
        diag.append(res)
        ctx.f, ctx.cfg, ctx.adjoint, ctx.phi, ctx.jtj = f, cfg, adjoint, phi, res.jtj
        ctx.save_for_backward(offset, L, y, res.omega, res.converged)
        return res.omega

    @staticmethod
    def backward(ctx, grad_w):
        offset, L, y, w, converged = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        prob = NLLSProblem(ctx.phi, offset, L, y, ctx.f, ctx.cfg.ridge)
        with torch.no_grad():
            derivs, lam = _backward_multipliers(ctx, prob, w, grad_w, converged)
            q, pp = _row_fields(prob, lam, derivs)
            g_src = ctx.adjoint(-q, -pp, w, lam) if needs[0] else None
            g_off = -q if needs[1] and offset is not None else None
            g_lin = _linear_row_grads(prob, w, lam, needs[2:])
        return (g_src, g_off, *g_lin, None, None, None, None, None, None)


def solve_nlls_factored(
    src: Tensor,
    make_phi: Callable[[Tensor], Tensor],
    adjoint: PhiAdjoint,
    L: Tensor,
    y: Tensor,
    f: Pointwise,
    omega0: Tensor,
    cfg: SolverConfig | None = None,
    offset: Tensor | None = None,
) -> tuple[Tensor, LMResult]:
    """solve_nlls for features phi = make_phi(src) (float64, linear in src) with a structured backward.

    dL/dPhi_ij = -(q_ij w + p_ij lam) is rank 2 per row (see _vjp), so ``adjoint`` receives the (P, m, J) row
    fields -q, -p with w*, lam and returns dL/dsrc directly: the (P, m, J, N) gradient of phi is never formed
    (e.g. the layer scatters the row fields to the grid and applies the features' adjoint to 2K scalar fields
    instead of N basis functions). Same values as solve_nlls(make_phi(src), ...) up to rounding.
    """
    cfg = cfg or SolverConfig()
    dt = torch.float64
    L, y = L.to(dt), y.to(dt)
    offset = None if offset is None else offset.to(dt)
    diag: list[LMResult] = []
    w = _FactoredNLLS.apply(src, offset, L, y, omega0.to(dt).detach(), make_phi, adjoint, f, cfg, diag)
    return w, diag[0]


def solve_nlls(
    phi: Tensor,
    L: Tensor,
    y: Tensor,
    f: Pointwise,
    cfg: SolverConfig | None = None,
    offset: Tensor | None = None,
    omega0: Tensor | None = None,
    blocks: int = 1,
) -> tuple[Tensor, LMResult]:
    """Differentiable w* = argmin 1/2 ||r(w)||^2 for a batch of structured problems, in float64.

    Inputs of other dtypes are cast at this boundary; the returned w* is float64 with its LM diagnostics.
    ``blocks`` = K > 1: w in R^{K N} and the m PDE rows form K consecutive groups acting on one block each
    (see NLLSProblem).
    """
    cfg = cfg or SolverConfig()
    dt = torch.float64
    phi, L, y = phi.to(dt), L.to(dt), y.to(dt)
    offset = None if offset is None else offset.to(dt)
    if omega0 is None:
        omega0 = torch.zeros(phi.shape[0], phi.shape[-1] * blocks, dtype=dt, device=phi.device)
    diag: list[LMResult] = []
    w = _ImplicitNLLS.apply(phi, offset, L, y, omega0.to(dt).detach(), f, cfg, diag, blocks)
    return w, diag[0]
