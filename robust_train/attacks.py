"""l_inf PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).

``x_{k+1} = Pi_{B(x, eps) cap [lo, hi]}(x_k + alpha * sign(grad_x loss(f(x_k), y)))`` from a random start in the
ball (TRADES' inner maximisation starts at ``x + 0.001 N(0, I)`` instead). Every iterate stays inside the ball and
the box: the projection box (``robust_train.apgd.threat_box``) is computed once, rounded towards x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_train.apgd import threat_box

LOSSES = ("ce", "kl")


def default_step_size(eps: float, steps: int) -> float:
    """Madry's rule of thumb ``alpha = 2.5 eps / steps`` (2/255 for 10 steps at 8/255)."""
    return 2.5 * eps / max(steps, 1)


def per_example_loss(loss: str | Callable, logits: Tensor, y: Tensor, p_clean: Tensor | None) -> Tensor:
    """The attack objective per example: CE, KL(p_clean || softmax(logits)) (TRADES), or a callable."""
    if callable(loss):
        return loss(logits, y)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)
    raise ValueError(f"unknown attack loss {loss!r}; choose ce, kl or a callable")


def start_noise(x: Tensor, eps: float, loss: str | Callable, generator: torch.Generator | None) -> Tensor:
    """The random start offset: U(-eps, eps) for CE / callables, 0.001 N(0, I) for TRADES' KL.
    Drawn on the generator's device (CPU by default) so a seed gives the same start on every device."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if loss == "kl":
        noise = 0.001 * torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
    else:
        noise = (2 * torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype) - 1) * eps
    return noise.to(x.device)


def pgd_from(model, x: Tensor, y: Tensor, eps: float, noise: Tensor | None, *, steps: int = 10,
             step_size: float | None = None, loss: str | Callable = "ce", lo: float = 0.0, hi: float = 1.0,
             track_correct: bool = False) -> tuple[Tensor, Tensor | None]:
    """PGD from ``x + noise`` (``noise`` None: from x). With ``track_correct``, also the number of iterates
    ``x_0 .. x_{K-1}`` that the model classifies correctly (GAIRAT's kappa). The trainer calls this with noise
    drawn for the global batch, so a data-parallel shard attacks exactly as one process would."""
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got eps={eps}, steps={steps}")
    x = x.detach()
    alpha = default_step_size(eps, steps) if step_size is None else step_size
    low, high = threat_box(x, eps, lo, hi)
    p_clean = None
    if loss == "kl":
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
    x_adv = x.clone() if noise is None else torch.minimum(torch.maximum(x + noise, low), high)
    correct = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if track_correct else None
    if eps == 0:
        steps = steps if track_correct else 0  # nothing to search; kappa still counts the K iterates
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            objective = per_example_loss(loss, logits, y, p_clean).sum()
            (grad,) = torch.autograd.grad(objective, x_adv)
        if correct is not None:
            correct += (logits.detach().argmax(1) == y).long()
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, low), high)
    return x_adv.detach(), correct


def pgd(model, x: Tensor, y: Tensor, eps: float, *, steps: int = 10, step_size: float | None = None,
        loss: str | Callable = "ce", random_start: bool = True, lo: float = 0.0, hi: float = 1.0,
        generator: torch.Generator | None = None) -> Tensor:
    """l_inf PGD-K (Madry et al. 2018): ``K`` signed-gradient ascent steps of size ``step_size`` (default
    ``2.5 eps / K``) on ``loss`` ("ce"; "kl": KL(f(x) || f(x')) as in TRADES; or ``callable(logits, y)`` giving a
    per-example loss), projected onto ``{|x' - x|_inf <= eps} cap [lo, hi]``. Returns the detached x'; the model's
    mode (train/eval) and its parameter gradients are left untouched."""
    noise = start_noise(x, eps, loss, generator) if random_start and eps > 0 else None
    return pgd_from(model, x, y, eps, noise, steps=steps, step_size=step_size, loss=loss, lo=lo, hi=hi)[0]
