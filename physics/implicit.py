"""Exact implicit-function-theorem backward through the Levenberg-Marquardt solve.

At the optimum g(w*, xi) = J^T r = 0, so dw*/dxi = -H^{-1} dg/dxi with H = J^T J + sum_i r_i Hess(r_i)
(the full Hessian; Gauss-Newton H = J^T J only on request). VJP: solve H lam = dL/dw*, then
xi_bar = -(dg/dxi)^T lam (jaxopt custom_root, optimistix ImplicitAdjoint; Chalapathi et al., ICLR 2024).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from physics.lm import LMConfig, LMResult, lm_solve
from physics.nlls import NLLSProblem, Pointwise, hessian, residual


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
    def forward(ctx, phi, offset, L, y, omega0, f, cfg, diag):  # noqa: D401
        prob = NLLSProblem(phi, offset, L, y, f, cfg.ridge)
        res = lm_solve(prob, omega0, cfg.lm)
        diag.append(res)
        ctx.f, ctx.cfg = f, cfg
        ctx.save_for_backward(phi, offset, L, y, res.omega, res.converged)
        return res.omega

    @staticmethod
    def backward(ctx, grad_w):
        phi, offset, L, y, w, converged = ctx.saved_tensors
        cfg: SolverConfig = ctx.cfg
        inputs = [phi, offset, L, y]
        needs = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(bool(nd)) if t is not None else None
                for t, nd in zip(inputs, needs, strict=True)
            ]
            prob = NLLSProblem(leaves[0], leaves[1], leaves[2], leaves[3], ctx.f, cfg.ridge)
            ww = w.detach().requires_grad_(True)
            r = residual(prob, ww)
            (g,) = torch.autograd.grad(0.5 * (r * r).sum(), ww, create_graph=True)
            h = hessian(
                NLLSProblem(phi, offset, L, y, ctx.f, cfg.ridge),
                w,
                gauss_newton=cfg.hessian == "gauss_newton",
            )
            # The exact Hessian may be indefinite away from a strict minimum: LU, not Cholesky.
            lam = torch.linalg.solve(h, grad_w.to(h.dtype))
            if cfg.drop_nonconverged:
                lam = torch.where(converged[:, None], lam, torch.zeros_like(lam))
            wanted = [t for t, nd in zip(leaves, needs, strict=True) if t is not None and nd]
            grads = iter(torch.autograd.grad(g, wanted, grad_outputs=-lam, allow_unused=True)) if wanted else iter(())
        out = []
        for t, nd in zip(leaves, needs, strict=True):
            if t is not None and nd:
                gi = next(grads)
                out.append(torch.zeros_like(t) if gi is None else gi)
            else:
                out.append(None)
        if not torch.isfinite(lam).all():
            warnings.warn(
                "implicit backward produced non-finite multipliers (singular Hessian)",
                RuntimeWarning,
                stacklevel=2,
            )
        # w* does not depend on the starting point; f, cfg and diag are not tensors.
        return (*out, None, None, None, None)


def solve_nlls(
    phi: Tensor,
    L: Tensor,
    y: Tensor,
    f: Pointwise,
    cfg: SolverConfig | None = None,
    offset: Tensor | None = None,
    omega0: Tensor | None = None,
) -> tuple[Tensor, LMResult]:
    """Differentiable w* = argmin 1/2 ||r(w)||^2 for a batch of structured problems, in float64.

    Inputs of other dtypes are cast at this boundary; the returned w* is float64 with its LM diagnostics.
    """
    cfg = cfg or SolverConfig()
    dt = torch.float64
    phi, L, y = phi.to(dt), L.to(dt), y.to(dt)
    offset = None if offset is None else offset.to(dt)
    if omega0 is None:
        omega0 = torch.zeros(phi.shape[0], phi.shape[-1], dtype=dt, device=phi.device)
    diag: list[LMResult] = []
    w = _ImplicitNLLS.apply(phi, offset, L, y, omega0.to(dt).detach(), f, cfg, diag)
    return w, diag[0]
