"""Attacks on regressors in an l_inf ball: FGSM, PGD and uniform random search.

FGSM (Goodfellow et al., ICLR 2015) for regression: ``x' = x + eps sign grad_x (h(x) - y)^2``; PGD (Madry et al.,
ICLR 2018) iterates signed steps from a uniform start and projects on the threat box after every step. Both take an
``objective`` (per-example value to maximise from the prediction), so the same code attacks the squared error
(RMSE under attack) or pushes the prediction up or down (the worst case a certified band must contain). Every point
stays in :func:`robust_train.apgd.threat_box` (the ball, rounded towards x, intersected with the input domain).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robust_train.apgd import threat_box

Objective = Callable[[Tensor], Tensor]  # prediction [B, 1] -> per-example value [B] to maximise
DOMAIN_NONE = (-float("inf"), float("inf"))


def squared_error(y: Tensor) -> Objective:
    """``(h(x') - y)^2`` summed over the outputs."""
    return lambda pred: (pred - y).square().reshape(pred.shape[0], -1).sum(1)


def push(sign: float) -> Objective:
    """``sign * h(x')``: +1 drives the prediction up, -1 down."""
    return lambda pred: sign * pred.reshape(pred.shape[0], -1).sum(1)


def _inside(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(x, low), high)  # low + u (high - low) may round past high


def _grad(model: nn.Module, x: Tensor, objective: Objective) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(objective(model(x)).sum(), x)
    return g


def fgsm(model: nn.Module, x: Tensor, objective: Objective, eps: float,
         domain: tuple[float, float] = DOMAIN_NONE) -> Tensor:
    """One signed step of size eps from x, clipped to the threat box."""
    low, high = threat_box(x, eps, *domain)
    if eps == 0:
        return x.clone()
    return _inside(x + eps * _grad(model, x, objective).sign(), low, high).detach()


def pgd(model: nn.Module, x: Tensor, objective: Objective, eps: float, *, steps: int = 20,
        step_size: float | None = None, domain: tuple[float, float] = DOMAIN_NONE,
        generator: torch.Generator | None = None, restarts: int = 1) -> Tensor:
    """``steps`` signed steps (default size 2.5 eps / steps) from a uniform start in the box; the best iterate of
    ``restarts`` runs per example (the highest objective) is returned."""
    low, high = threat_box(x, eps, *domain)
    if eps == 0:
        return x.clone()
    size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    best = x.clone()
    with torch.no_grad():
        best_val = objective(model(x))
    for _ in range(restarts):
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        cur = _inside(low + u * (high - low), low, high)
        for _ in range(steps):
            cur = cur + size * _grad(model, cur, objective).sign()
            cur = _inside(cur, low, high).detach()
            with torch.no_grad():
                val = objective(model(cur))
            better = val > best_val
            best[better], best_val[better] = cur[better], val[better]
    return best.detach()


def random_search(model: nn.Module, x: Tensor, objective: Objective, eps: float, *, samples: int = 32,
                  domain: tuple[float, float] = DOMAIN_NONE, generator: torch.Generator | None = None) -> Tensor:
    """The best of ``samples`` uniform points of the box (corners included with probability 1/2 per coordinate)."""
    low, high = threat_box(x, eps, *domain)
    best = x.clone()
    with torch.no_grad():
        best_val = objective(model(x))
        for k in range(samples):
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            if k % 2:  # half the draws on the box's vertices, where ReLU networks often peak
                u = (u > 0.5).to(x.dtype)
            cur = _inside(low + u * (high - low), low, high)
            val = objective(model(cur))
            better = val > best_val
            best[better], best_val[better] = cur[better], val[better]
    return best
