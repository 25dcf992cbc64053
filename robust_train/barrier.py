"""DONE's log-barrier inner problem with an implicit hypergradient (Sow et al., ICLR 2024, Eq. 7; the exact form
is [unverified]: we had the reviews, not the PDF).

The attacker minimises ``phi_i(theta, d) = -l_i(theta, d) - c sum_k [log(hi_k - d_k) + log(d_k - lo_k)]`` over the
interior of the threat box ``[lo, hi] = [max(-eps, lo - x), min(eps, hi - x)]``; at a stationary point d* the
implicit function theorem gives ``h_i = grad_theta l_i - grad2_theta,d phi_i [grad2_d,d phi_i]^{-1} grad_d l_i``.
The inverse-Hessian-vector product is solved per example by conjugate gradients on Hessian-vector products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_train.apgd import threat_box


def _box(x: Tensor, eps: float, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """The threat box in perturbation coordinates ``d = x' - x``."""
    low, high = threat_box(x, eps, lo, hi)
    return low - x, high - x


def barrier(d: Tensor, lo: Tensor, hi: Tensor, c: float) -> Tensor:
    """``-c sum_k [log(hi_k - d_k) + log(d_k - lo_k)]`` per example (+inf outside the open box)."""
    b = d.shape[0]
    return -c * (torch.log(hi - d) + torch.log(d - lo)).reshape(b, -1).sum(1)


def objective(model, x: Tensor, y: Tensor, d: Tensor, lo: Tensor, hi: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """``(phi_i, l_i)`` per example: the attacker's barrier objective and the training loss at x + d."""
    loss = F.cross_entropy(model(x + d), y, reduction="none")
    return -loss + barrier(d, lo, hi, c), loss


def solve_inner(model, x: Tensor, y: Tensor, eps: float, *, c: float, steps: int, step_size: float,
                lo: float = 0.0, hi: float = 1.0, noise: Tensor | None = None) -> Tensor:
    """Approximate minimiser d* of phi: ``steps`` signed-gradient steps from ``noise`` (or 0), each projected into
    the box shrunk by 1 % of its width (Algorithm 1 projects every step, as the reviewers note) so the barrier
    stays finite. Returns d* detached; model parameters' gradients untouched."""
    low, high = _box(x, eps, lo, hi)
    margin = 0.01 * (high - low)
    inner_lo, inner_hi = low + margin, high - margin
    d = torch.zeros_like(x) if noise is None else noise.clone()
    d = torch.minimum(torch.maximum(d, inner_lo), inner_hi)
    for _ in range(steps):
        d.requires_grad_(True)
        with torch.enable_grad():
            phi, _ = objective(model, x, y, d, low, high, c)
            (g,) = torch.autograd.grad(phi.sum(), d)
        d = torch.minimum(torch.maximum(d.detach() - step_size * g.sign(), inner_lo), inner_hi)
    return d.detach()


def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def implicit_losses(model, x: Tensor, y: Tensor, d_star: Tensor, eps: float, *, c: float, cg_iters: int = 10,
                    damping: float = 0.0, lo: float = 0.0, hi: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-example ``(l_i, s_i)`` at d*, differentiable in the parameters, such that ``grad_theta (l_i + s_i)`` is
    the implicit hypergradient ``h_i`` while ``s_i`` is 0 in value. ``v_i = (H_i + damping I)^{-1} grad_d l_i`` by
    CG per example (an example stops at non-positive curvature: H is only PSD near a local minimiser)."""
    low, high = _box(x, eps, lo, hi)
    d = d_star.detach().requires_grad_(True)
    with torch.enable_grad():
        phi, loss = objective(model, x, y, d, low, high, c)
        grad_phi = torch.autograd.grad(phi.sum(), d, create_graph=True)[0]  # depends on theta and d
        grad_l = torch.autograd.grad(loss.sum(), d, retain_graph=True)[0].detach()

        def hvp(v: Tensor) -> Tensor:
            return torch.autograd.grad(grad_phi, d, grad_outputs=v, retain_graph=True)[0].detach() + damping * v

        v = torch.zeros_like(grad_l)
        res = grad_l.clone()
        p = res.clone()
        rr = _batched_dot(res, res)
        active = rr > 0
        shape = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(cg_iters):
            if not bool(active.any()):
                break
            hp = hvp(p)
            curv = _batched_dot(p, hp)
            active = active & (curv > 0)
            alpha = torch.where(active, rr / torch.where(active, curv, torch.ones_like(curv)), torch.zeros_like(rr))
            v = v + alpha.reshape(shape) * p
            res = res - alpha.reshape(shape) * hp
            rr_new = _batched_dot(res, res)
            beta = torch.where(active, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
            p = res + beta.reshape(shape) * p
            rr = rr_new
            active = active & (rr > 0)
        # grad_theta <grad_d phi_i, v_i> = grad2_theta,d phi_i v_i; subtracting it gives h_i. The value of s is 0.
        corr = _batched_dot(grad_phi, v.detach())
    return loss, -(corr - corr.detach())
