"""Reductions over per-sample axes: ReduceSum (``y = sum_{i in axes} x_i``), ReduceMean (the sum times ``1/n``).

Linear with non-negative coefficients, so IBP maps ``lo -> lo``, ``hi -> hi`` and the CROWN / Jacobian step
broadcasts ``Lambda`` back over the reduced axes (times ``1/n`` for the mean). Rounding: a float sum of ``n`` terms
is within ``gamma_{n-1} sum |x_i|`` of the exact one; the mean's division adds one rounding (``gamma_{n+1}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from verify.ops.base import LinearOp
from verify.rounding import down, gamma, magnitude, tiny, up


class ReduceSum(LinearOp):
    """``y = sum_{axes} x`` (per-sample axes; ``keepdims`` as ONNX); ``mean=True`` divides by the count."""

    kind = "reducesum"
    monotone = True
    interval_rigorous = True  # interval() below

    def __init__(self, axes: Sequence[int], keepdims: bool = True, mean: bool = False):
        self.axes, self.keepdims, self.mean = tuple(sorted(int(a) for a in axes)), bool(keepdims), bool(mean)

    def count(self) -> int:
        return int(torch.Size([self.in_shapes[0][a] for a in self.axes]).numel())

    def forward(self, x):
        dims = tuple(a + 1 for a in self.axes)
        return x.mean(dim=dims, keepdim=self.keepdims) if self.mean else x.sum(dim=dims, keepdim=self.keepdims)

    def offset(self):
        return None

    def adjoint(self, lam):
        g = lam
        if not self.keepdims:
            for a in self.axes:
                g = g.unsqueeze(a + 2)
        g = g.expand(*lam.shape[:2], *self.in_shapes[0])
        return [g / self.count() if self.mean else g]

    def _gamma(self, dtype: torch.dtype) -> float:
        return gamma(self.count() + (1 if self.mean else 0), dtype)

    def interval(self, bounds):
        """The sums of the ends, widened by ``2 gamma`` of the terms' magnitudes (the model's float sum and this one);
        a lower end whose terms are all >= 0 only by ``2 gamma`` of itself (a float sum of non-negative terms is within
        ``gamma`` of it, relatively), so sums of exponentials keep a positive lower bound next to huge upper ones."""
        lo, hi = bounds
        g = 2 * self._gamma(lo.dtype)
        s_lo, s_hi = self.forward(lo), self.forward(hi)
        mag = self.forward(magnitude(lo, hi))
        nonneg = self.forward((lo < 0).to(lo.dtype)) == 0
        rad_lo = torch.where(nonneg, g * s_lo.abs(), g * mag) + tiny(lo.dtype)
        return down(s_lo - rad_lo), up(s_hi + g * mag + tiny(lo.dtype))

    def error_radius(self, mags):
        # the float evaluation, the interval rule (the op on l and u) and the adjoint's division (mean)
        with torch.no_grad():
            s = self.forward(mags[0]).abs()
            return 2 * self._gamma(s.dtype) * s

    def abs_forward(self, ts):
        with torch.no_grad():
            y = self.forward(ts[0])
            return (1 + 2 * self._gamma(y.dtype)) * y

    def __repr__(self):
        return f"{'ReduceMean' if self.mean else 'ReduceSum'}(axes={self.axes}, keepdims={self.keepdims})"
