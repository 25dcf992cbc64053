"""auto_LiRPA's interface on Clarke's engine: scripts written for auto_LiRPA run with the import changed.

    from verify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm    # was: from auto_LiRPA import ...

``BoundedModule(model, global_input)``, ``BoundedTensor(x, PerturbationLpNorm(norm=np.inf, eps=...))`` and
``compute_bounds(x=(x,), method="IBP" | "CROWN-IBP" | "CROWN" | "alpha-CROWN", C=..., return_A=...)`` take and
return what auto_LiRPA's do (shapes ``[B, K]`` or ``[B, S]``), computed by ``verify.bound``: rigorous in real
arithmetic, so they may differ from auto_LiRPA's float32 results in the last bits. ``docs/migrating_from_auto_lirpa.md``
lists what is and is not covered."""

from verify.lirpa import perturbations, utils
from verify.lirpa.bounded_module import BoundedModule
from verify.lirpa.bounded_tensor import BoundedTensor
from verify.lirpa.perturbations import PerturbationLpNorm

__all__ = ["BoundedModule", "BoundedTensor", "PerturbationLpNorm", "perturbations", "utils"]
