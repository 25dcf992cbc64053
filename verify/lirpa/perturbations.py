"""Input perturbations (auto_LiRPA's ``perturbations``): an l_p ball around the clean input, intersected with
optional per-element limits ``x_L``/``x_U``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from verify.errors import InputError

NORMS = (1.0, 2.0, math.inf)


class PerturbationLpNorm:
    """``{x' : ||x' - x||_p <= eps, x_L <= x' <= x_U}`` for ``p`` in 1, 2, inf. With ``x_L``/``x_U`` and no
    ``eps`` (l_inf), the box ``[x_L, x_U]`` itself."""

    def __init__(self, eps: float | None = None, norm: float = np.inf, x_L: Tensor | None = None,
                 x_U: Tensor | None = None, eps_min: float = 0.0):
        norm = float(norm)
        if norm not in NORMS:
            raise InputError(f"norm must be 1, 2 or inf, got {norm!r}")
        if eps is None and (x_L is None or x_U is None):
            raise InputError("a perturbation needs eps, or both x_L and x_U")
        if eps is not None and not (np.isfinite(float(eps)) and float(eps) >= 0):
            raise InputError(f"eps must be a finite non-negative number, got {eps!r}")
        if norm != math.inf and eps is None:
            raise InputError(f"an l_{norm:g} perturbation needs eps")
        self.eps, self.norm, self.x_L, self.x_U, self.eps_min = eps, norm, x_L, x_U, eps_min

    def box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The smallest box holding the perturbation set around ``x`` (an l_p ball lies in the l_inf ball)."""
        lo, hi = (x - self.eps, x + self.eps) if self.eps is not None else (self.x_L, self.x_U)
        if self.x_L is not None:
            lo = torch.maximum(lo, torch.as_tensor(self.x_L, dtype=x.dtype))
        if self.x_U is not None:
            hi = torch.minimum(hi, torch.as_tensor(self.x_U, dtype=x.dtype))
        return lo, hi

    def __repr__(self) -> str:
        return f"PerturbationLpNorm(norm={self.norm:g}, eps={self.eps})"
