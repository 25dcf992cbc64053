"""Local Lipschitz constants and monotonicity via bounds on the Clarke Jacobian (Shi et al., NeurIPS 2022),
with branch and bound that converges to the exact (LipMIP) value, plus LipMIP, LipSDP, naive and PGD
references. Entry points: :func:`lipschitz`, :func:`lipschitz_batch` (many boxes in one call),
:func:`monotonicity`."""

import sys
import types

from verify.lipschitz.api import METHODS, LipschitzResult, MonotonicityResult, lipschitz, monotonicity
from verify.lipschitz.batch import BatchLipschitzResult, lipschitz_batch

__all__ = ["METHODS", "BatchLipschitzResult", "LipschitzResult", "MonotonicityResult", "lipschitz",
           "lipschitz_batch", "monotonicity"]


class _CallableModule(types.ModuleType):
    """Lets ``verify.lipschitz(model, x_lo, x_hi, ...)`` call :func:`lipschitz` (the issue's API) while
    ``verify.lipschitz`` stays the package (``verify.lipschitz.monotonicity`` etc.)."""

    def __call__(self, *args, **kwargs) -> LipschitzResult:
        return lipschitz(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
