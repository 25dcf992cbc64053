"""Batched damped Levenberg-Marquardt in float64 with per-problem convergence masks.

Solve (J^T J + mu I) d = -J^T r; accept when rho = (actual reduction)/(predicted reduction) > 0 with
predicted = -d^T J^T r - 1/2 d^T J^T J d; Madsen-Nielsen: mu <- mu max(1/3, 1 - (2 rho - 1)^3) on accept,
mu <- mu nu, nu <- 2 nu on reject (google/jaxopt's LevenbergMarquardt; Chalapathi et al., ICLR 2024, Sec. 3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from physics.errors import PhysicsError
from physics.nlls import NLLSProblem, feature_major, linear_gram, normal_equations

_EPS_COST = 100 * torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class LMConfig:
    """Solver settings; 50 iterations as the paper; tolerances tightened for exact gradients."""

    max_iter: int = 50
    gtol: float = 1e-10  # stop when ||J^T r||_2 <= gtol * max(1, ||J^T r at start||)
    xtol: float = 1e-12  # or when an accepted step is <= xtol (||w|| + xtol)
    tau: float = 1e-6  # mu_0 = tau * max diag(J^T J)
    on_fail: str = "warn"  # non-converged problems: "warn", "raise" or "ignore"; non-finite always raises


@dataclass
class LMResult:
    """Solution and per-problem diagnostics (never hide non-convergence)."""

    omega: Tensor  # (P, N)
    iterations: Tensor  # (P,) int
    converged: Tensor  # (P,) bool
    residual_norm: Tensor  # (P,) ||r(omega)||_2
    grad_norm: Tensor  # (P,) ||J^T r||_2
    jtj: Tensor | None = None  # (P, N, N) J^T J (with the ridge) at omega, for the implicit backward


def lm_solve(prob: NLLSProblem, omega0: Tensor, cfg: LMConfig | None = None) -> LMResult:
    """Minimise 1/2 ||r(w)||^2 for every problem of the batch independently (no grad tracking)."""
    cfg = cfg or LMConfig()
    with torch.no_grad():
        w = omega0.detach().clone()
        lin = linear_gram(prob)  # the IC/BC rows' and ridge's part of J^T J: the same in every iteration
        cost, jtj, g = normal_equations(prob, w, lin)
        if not torch.isfinite(cost).all():
            bad = cost[~torch.isfinite(cost)]
            raise PhysicsError(f"residual is not finite at the starting point (norm {bad[0].item()})")
        n = w.shape[-1]
        eye = torch.eye(n, dtype=w.dtype, device=w.device)
        mu = cfg.tau * torch.diagonal(jtj, dim1=-2, dim2=-1).amax(-1)
        nu = torch.full_like(mu, 2.0)
        gscale = torch.clamp(g.norm(dim=-1), min=1.0)
        converged = g.norm(dim=-1) <= cfg.gtol * gscale
        iters = torch.zeros_like(mu, dtype=torch.long)
        # The loop works on the unconverged problems only, a compacted sub-batch (state and data) that shrinks
        # when problems converge: the cost of a batch is the sum of its problems' iterations, not (max
        # iterations) x (batch size); easy experts stop early, hard ones go on. Results are written back to the
        # full arrays when problems leave, so nothing is gathered or scattered in iterations where none does.
        a = torch.nonzero(~converged).squeeze(-1)
        full = a.numel() == converged.numel()
        sub, lin_a = (prob, lin) if full else (take(prob, a), lin[a])
        w_a, g_a, jtj_a, cost_a, mu_a, nu_a, gs_a = w[a], g[a], jtj[a], cost[a], mu[a], nu[a], gscale[a]
        it_a = torch.zeros_like(a)
        for _ in range(cfg.max_iter):
            if a.numel() == 0:
                break
            chol, info = torch.linalg.cholesky_ex(jtj_a + mu_a[:, None, None] * eye)
            ok = info == 0
            step = torch.cholesky_solve(-g_a[..., None], chol).squeeze(-1)
            step = torch.where(ok[:, None], step, torch.zeros_like(step))
            w_new = w_a + step
            cost_new, jtj_new, g_new = normal_equations(sub, w_new, lin_a)
            pred = -(step * g_a).sum(-1) - 0.5 * torch.einsum("pn,pnk,pk->p", step, jtj_a, step)
            rho = (cost_a - cost_new) / torch.where(pred > 0, pred, torch.ones_like(pred))
            # Once the predicted decrease is below the rounding error of the cost (slow Gauss-Newton tails of
            # nonzero-residual problems), rho is noise: accept a step iff it reduces ||J^T r|| instead.
            tiny = pred <= _EPS_COST * cost_a
            gain = torch.where(tiny, g_new.norm(dim=-1) < g_a.norm(dim=-1), (pred > 0) & (rho > 0))
            accept = ok & gain & torch.isfinite(cost_new)
            rho = torch.where(tiny & accept, torch.ones_like(rho), rho)
            w_a = torch.where(accept[:, None], w_new, w_a)
            cost_a = torch.where(accept, cost_new, cost_a)
            jtj_a = torch.where(accept[:, None, None], jtj_new, jtj_a)
            g_a = torch.where(accept[:, None], g_new, g_a)
            shrink = torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0)
            mu_a = torch.where(accept, mu_a * shrink, torch.clamp(mu_a * nu_a, max=1e30))
            nu_a = torch.where(accept, torch.full_like(nu_a, 2.0), nu_a * 2.0)
            gn = g_a.norm(dim=-1)
            small_step = step.norm(dim=-1) <= cfg.xtol * (w_a.norm(dim=-1) + cfg.xtol)
            # A rejected step at the floating-point floor (tiny pred and gradient) is also convergence.
            stalled = ~accept & tiny & (gn <= 1e-6 * gs_a)
            conv_a = (gn <= cfg.gtol * gs_a) | (accept & small_step) | stalled
            it_a += 1
            if bool(conv_a.any()):  # one sync per iteration; per-problem logic stays in masks
                done, keep = conv_a.nonzero().squeeze(-1), (~conv_a).nonzero().squeeze(-1)
                _write_back(a[done], done, (w, cost, jtj, g, iters), (w_a, cost_a, jtj_a, g_a, it_a))
                converged[a[done]] = True
                a, sub, lin_a = a[keep], take(sub, keep), lin_a[keep]
                w_a, g_a, jtj_a, cost_a, mu_a, nu_a, gs_a, it_a = (
                    v[keep] for v in (w_a, g_a, jtj_a, cost_a, mu_a, nu_a, gs_a, it_a)
                )
        _write_back(
            a, torch.arange(a.numel(), device=a.device), (w, cost, jtj, g, iters), (w_a, cost_a, jtj_a, g_a, it_a)
        )
        rnorm = torch.sqrt(2.0 * cost)
    if not torch.isfinite(w).all() or not torch.isfinite(rnorm).all():
        raise PhysicsError(f"Levenberg-Marquardt diverged: residual norm {rnorm.max().item():.3e}")
    result = LMResult(w, iters, converged, rnorm, g.norm(dim=-1), jtj)
    report_nonconvergence(result, cfg.on_fail)
    return result


def _write_back(dst: Tensor, src: Tensor, full: tuple[Tensor, ...], sub: tuple[Tensor, ...]) -> None:
    """full[i][dst] = sub[i][src] in place: the final state of problems leaving the active sub-batch."""
    for f, v in zip(full, sub, strict=True):
        f[dst] = v[src]


def take(prob: NLLSProblem, idx: Tensor) -> NLLSProblem:
    """The sub-batch of problems ``idx`` (phi keeps its feature-major storage)."""
    off = None if prob.offset is None else prob.offset[idx]
    fm = feature_major(prob.phi)
    phi = prob.phi[idx] if fm is None else fm[idx].transpose(1, 2)
    return NLLSProblem(phi, off, prob.L[idx], prob.y[idx], prob.f, prob.ridge, prob.blocks)


def report_nonconvergence(res: LMResult, on_fail: str) -> None:
    """Warn about or raise on non-converged problems, with the worst residual and gradient norms."""
    bad = int((~res.converged).sum())
    if bad == 0 or on_fail == "ignore":
        return
    msg = (
        f"{bad}/{res.converged.numel()} Levenberg-Marquardt solves did not converge "
        f"(max residual norm {res.residual_norm[~res.converged].max().item():.3e}, "
        f"max ||J^T r|| {res.grad_norm[~res.converged].max().item():.3e})"
    )
    if on_fail == "raise":
        raise PhysicsError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
