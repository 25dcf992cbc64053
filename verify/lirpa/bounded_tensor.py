"""``BoundedTensor``: a tensor that carries its perturbation (auto_LiRPA's name and constructor)."""

from __future__ import annotations

import torch
from torch import Tensor

from verify.lirpa.perturbations import PerturbationLpNorm


class BoundedTensor(Tensor):
    """``BoundedTensor(x, ptb)``: ``x`` with ``.ptb``; arithmetic on it gives plain tensors."""

    ptb: PerturbationLpNorm | None

    @staticmethod
    def __new__(cls, x: Tensor, ptb: PerturbationLpNorm | None = None):
        t = Tensor._make_subclass(cls, torch.as_tensor(x), bool(getattr(x, "requires_grad", False)))
        t.ptb = ptb
        return t

    def __init__(self, x: Tensor, ptb: PerturbationLpNorm | None = None):
        pass

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"BoundedTensor({Tensor.__repr__(self.as_subclass(Tensor))}, ptb={self.ptb})"
