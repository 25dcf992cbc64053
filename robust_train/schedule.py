"""Schedules as functions of training time t in epochs (fractional: ``epoch + step / steps_per_epoch``).

eps / kappa / beta (Gowal et al. 2018; Zhang et al. 2020, huanzhang12/CROWN-IBP): ``warmup`` epochs at eps = 0,
then over ``ramp`` epochs the progress p goes linearly 0 -> 1 and ``eps_t = p eps``, ``kappa_t = 1 + p (kappa_final
- 1)``, ``beta_t = 1 + p (beta_final - 1)``. The learning rate is ``lr * factor(step)``: constant, cosine to 0, or
step decay (x0.1 at 50 % and 75 % of the steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class RampSchedule:
    eps: float
    warmup: float = 0.0
    ramp: float = 0.0
    kappa_final: float = 0.5
    beta_final: float = 0.0

    def progress(self, t: float) -> float:
        """0 during the warm-up, linear over the ramp, 1 after (a step at the warm-up's end if ramp = 0)."""
        if t < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (t - self.warmup) / self.ramp)

    def eps_at(self, t: float) -> float:
        return self.eps * self.progress(t)

    def kappa_at(self, t: float) -> float:
        return 1.0 + self.progress(t) * (self.kappa_final - 1.0)

    def beta_at(self, t: float) -> float:
        return 1.0 + self.progress(t) * (self.beta_final - 1.0)


def lr_factor(kind: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` of ``total_steps``."""
    frac = step / max(total_steps, 1)
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    if kind == "step":
        return 0.01 if frac >= 0.75 else 0.1 if frac >= 0.5 else 1.0
    raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(LR_SCHEDULES)}")
