"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020): APGD-CE and the targeted APGD-T with the DLR loss, l_inf threat model.

Algorithm (maximise a per-example loss f over S = B_inf(x, eps) ∩ [lo, hi]^d, N iterations, one gradient each):

* x^(0): a random point of S (x itself without ``random_start``); step η = 2·eps.
* x^(1) = P_S(x^(0) + η sign ∇f(x^(0))); for k >= 1, with momentum α = 0.75,
  z^(k+1) = P_S(x^(k) + η sign ∇f(x^(k))),  x^(k+1) = P_S(x^(k) + α (z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1))).
* Checkpoints w_j = ⌈p_j N⌉ with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). At w_j the
  step is halved (per example) and the iterate restarts from the best point x_max found so far when
  (1) fewer than ρ = 0.75 of the steps since w_{j−1} increased f, or (2) η was not halved at w_{j−1} and the best
  loss f_max did not improve since w_{j−1}.

Losses: CE; DLR(x, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3); targeted DLR-T(x, y, t) = −(z_y − z_t) /
(z_π1 − (z_π3 + z_π4)/2), π sorting the logits z in decreasing order. APGD-T (AutoAttack, standard version) runs
APGD with DLR-T once per target t ∈ {2nd, ..., 10th largest clean logit} (9 targets), each run only on the points
not yet fooled.

A point counts as fooled when max_{j≠y} z_j >= z_y (the counterexample set of the margin specification the
verifier proves empty). The returned points always lie in S: projection is a clamp onto the float box
:func:`threat_box`, which evaluation also certifies, so an attack point never falls outside a certified box by a
rounding ulp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apgd", "apgd_targeted", "checkpoints", "dlr_loss", "dlr_targeted_loss", "fooled", "threat_box"]

_TINY = 1e-12  # keeps the DLR denominator positive when the top logits tie (as AutoAttack does)


def threat_box(x: Tensor, eps: float, lo: float = 0.0, hi: float = 1.0) -> tuple[Tensor, Tensor]:
    """``[max(x − eps, lo), min(x + eps, hi)]`` in ``x``'s dtype, with ``x ∓ eps`` rounded *towards* x.

    Each bound is the float of x's dtype nearest to ``x ∓ eps`` (computed in float64), moved one ulp towards x
    while it lies outside the real ball, so ``|x' − x| <= eps`` holds exactly for every point of the box, and
    the box holds every float of the ball. (Rounding ``x − eps`` in float32 instead is off by many ulps when
    ``x − eps`` is small: float32(eps) itself differs from eps by up to 3e-8.)"""
    xd = x.double()
    low, high = (xd - eps).to(x.dtype), (xd + eps).to(x.dtype)
    for _ in range(3):  # one step suffices after round-to-nearest; the loop guards double-rounding ties
        low = torch.where(xd - low.double() > eps, torch.nextafter(low, x), low)
        high = torch.where(high.double() - xd > eps, torch.nextafter(high, x), high)
    low, high = low.clamp(min=lo), high.clamp(max=hi)
    return low, torch.maximum(high, low)


def fooled(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j≠y} z_j >= z_y`` per row: the margin specification ``z_y − z_j > 0 ∀ j≠y`` fails."""
    zy = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf"))
    return other.max(1).values >= zy


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example DLR = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3) (Croce & Hein 2020, Eq. 4).

    With fewer than 3 classes the denominator is 1 (the plain margin)."""
    zy = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    s = logits.sort(dim=1, descending=True).values
    den = s[:, 0] - s[:, 2] + _TINY if logits.shape[1] >= 3 else torch.ones_like(zy)
    return -(zy - other) / den


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-example targeted DLR-T = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2) (Croce & Hein 2020, Sec. 4).

    With 3 classes the denominator is z_π1 − z_π3, with 2 it is 1."""
    zy = logits.gather(1, y[:, None])[:, 0]
    zt = logits.gather(1, target[:, None])[:, 0]
    s = logits.sort(dim=1, descending=True).values
    k = logits.shape[1]
    if k >= 4:
        den = s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + _TINY
    elif k == 3:
        den = s[:, 0] - s[:, 2] + _TINY
    else:
        den = torch.ones_like(zy)
    return -(zy - zt) / den


def checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ⌈p_j N⌉`` (j >= 1) at which APGD may halve its step, strictly inside ``(0, N)``."""
    # Exact rationals: in floats 0.22 * 100 is 22.000000000000004, whose ceiling would be 23.
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    out: list[int] = []
    for pj in p[1:]:
        w = math.ceil(pj * steps)
        if 0 < w < steps and (not out or w > out[-1]):
            out.append(w)
    return out


def _resolve_loss(loss: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda z, y: F.cross_entropy(z, y, reduction="none")
    if loss == "dlr":
        return dlr_loss
    raise ValueError(f"unknown APGD loss {loss!r}; choose 'ce', 'dlr' or a callable (logits, y) -> per-example loss")


def _check(x: Tensor, y: Tensor, eps: float, steps: int) -> None:
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")


def _loss_and_grad(model: torch.nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example loss, its input gradient and the fooled mask at ``x`` (one forward and backward pass)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y)
        grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach(), fooled(logits.detach(), y)


def _bshape(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def apgd(model: torch.nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 100,
         loss: str | Callable[[Tensor, Tensor], Tensor] = "ce", random_start: bool = True, lo: float = 0.0,
         hi: float = 1.0, rho: float = 0.75, momentum: float = 0.75,
         generator: torch.Generator | None = None) -> Tensor:
    """Untargeted APGD (module docstring) maximising ``loss`` ('ce', 'dlr' or ``(logits, y) -> [B]``).

    Returns, per example, the first iterate that fools the model if any, else the iterate of highest loss; every
    returned point lies in :func:`threat_box` ``(x, eps, lo, hi)``. The model's mode
    and parameters are untouched."""
    _check(x, y, eps, steps)
    return _apgd(model, x.detach(), y, eps, steps, _resolve_loss(loss), random_start, lo, hi, rho, momentum,
                 generator)


def apgd_targeted(model: torch.nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 100,
                  n_targets: int = 9, random_start: bool = True, lo: float = 0.0, hi: float = 1.0,
                  rho: float = 0.75, momentum: float = 0.75, generator: torch.Generator | None = None) -> Tensor:
    """APGD-T: APGD with DLR-T towards the 2nd, 3rd, ... largest clean logits (``n_targets`` of them, at most
    classes − 1; AutoAttack's standard version uses 9 with 100 iterations each). A run only attacks the points
    that earlier targets did not fool. Returns points in :func:`threat_box`
    ``(x, eps, lo, hi)``."""
    _check(x, y, eps, steps)
    x = x.detach()
    with torch.no_grad():
        order = model(x).sort(dim=1, descending=True).indices
    n_targets = min(n_targets, order.shape[1] - 1)
    out = x.clone()
    open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for t in range(1, n_targets + 1):
        idx = open_.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        target = order[idx, t]

        def loss_fn(z: Tensor, yy: Tensor, target: Tensor = target) -> Tensor:
            return dlr_targeted_loss(z, yy, target)

        adv = _apgd(model, x[idx], y[idx], eps, steps, loss_fn, random_start, lo, hi, rho, momentum, generator)
        with torch.no_grad():
            hit = fooled(model(adv), y[idx])
        # Keep the highest-loss point of the first run for points no target fools (any point of S is valid).
        keep = hit | (t == 1)
        out[idx[keep]] = adv[keep]
        open_[idx[hit]] = False
    return out


def _apgd(model, x, y, eps, steps, loss_fn, random_start, lo, hi, rho, alpha, generator) -> Tensor:
    b = x.shape[0]
    if b == 0:
        return x.clone()
    box_lo, box_hi = threat_box(x, eps, lo, hi)

    def proj(v: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(v, box_lo), box_hi)

    if random_start:
        # AutoAttack's start: a uniform direction scaled so its largest coordinate reaches the sphere.
        t = 2 * torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device) - 1
        t = t / t.reshape(b, -1).abs().amax(1).clamp(min=_TINY).reshape(-1, *([1] * (x.dim() - 1)))
        x_cur = proj(x + eps * t)
    else:
        x_cur = proj(x.clone())
    eta = torch.full((b,), 2.0 * eps, dtype=x.dtype, device=x.device)
    f_cur, g_cur, hit = _loss_and_grad(model, x_cur, y, loss_fn)

    x_best, f_best, g_best = x_cur.clone(), f_cur.clone(), g_cur.clone()
    x_adv = x_cur.clone()  # first fooling iterate, or x_best for points never fooled
    found = hit.clone()
    x_adv[found] = x_cur[found]

    marks = set(checkpoints(steps))
    last_mark = 0
    increases = torch.zeros(b, dtype=torch.long, device=x.device)
    f_best_at_mark = f_best.clone()
    halved_at_mark = torch.zeros(b, dtype=torch.bool, device=x.device)
    x_prev = x_cur.clone()
    for k in range(steps):
        a = alpha if k > 0 else 1.0  # x^(1) is a plain projected step
        z = proj(x_cur + _bshape(eta, x) * g_cur.sign())
        x_next = proj(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
        x_prev = x_cur
        f_next, g_next, hit = _loss_and_grad(model, x_next, y, loss_fn)

        new_hit = hit & ~found
        x_adv[new_hit] = x_next[new_hit]
        found |= hit
        increases += (f_next > f_cur).long()
        better = f_next > f_best
        x_best[better], f_best[better], g_best[better] = x_next[better], f_next[better], g_next[better]
        x_cur, f_cur, g_cur = x_next, f_next, g_next

        if k + 1 in marks:
            w = k + 1
            cond1 = increases < rho * (w - last_mark)
            cond2 = ~halved_at_mark & (f_best <= f_best_at_mark)
            halve = cond1 | cond2
            eta = torch.where(halve, eta / 2, eta)
            # Restart from the best point (and its gradient) where the step was halved.
            x_cur = torch.where(_bshape(halve, x), x_best, x_cur)
            g_cur = torch.where(_bshape(halve, x), g_best, g_cur)
            f_cur = torch.where(halve, f_best, f_cur)
            halved_at_mark, f_best_at_mark = halve, f_best.clone()
            increases.zero_()
            last_mark = w
    x_adv[~found] = x_best[~found]
    return proj(x_adv).detach()
