"""Element-wise affine maps and sums of variables: ``y = w * x + b`` (Mul/Div/Add/Sub by constants,
eval-mode BatchNorm) and ``y = sum_i s_i x_i`` (residual Add, Sub of two variables).

Rounding allowances (``verify.rounding``; one gamma for a float evaluation, one for the interval rule or the
adjoint): ``2 gamma_2 (|w| a + |b|)`` for the two rounded operations of ``w x + b``; ``2 gamma_{k+m} sum_i |s_i| a_i``
for a sum of ``k`` variables whose adjoint also sums over ``m`` broadcast copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from verify.ops.base import LinearOp, unbroadcast
from verify.rounding import gamma


class Scale(LinearOp):
    """``y = w * x + b`` with constant ``w``, ``b`` broadcastable to the input shape."""

    kind = "scale"

    def __init__(self, weight: Tensor | None = None, bias: Tensor | None = None, weight_err: Tensor | None = None,
                 bias_err: Tensor | None = None):
        self.weight, self.bias = weight, bias
        # bounds on |stored - exact| of parameters the frontend computed (verify.frontends.constants)
        self.weight_err, self.bias_err = weight_err, bias_err

    def forward(self, x):
        y = x if self.weight is None else x * self.weight
        return y if self.bias is None else y + self.bias

    def interval(self, bounds):
        lo, hi = bounds
        if self.weight is None:
            return self.forward(lo), self.forward(hi)
        a, b = self.forward(lo), self.forward(hi)
        return torch.minimum(a, b), torch.maximum(a, b)

    def offset(self):
        return None if self.bias is None else self.bias.expand(self.out_shape)

    def adjoint(self, lam):
        return [lam if self.weight is None else (lam * self.weight).expand_as(lam)]

    def abs_forward(self, ts):
        with torch.no_grad():
            t = ts[0] if self.weight is None else (1 + 2 * gamma(1, ts[0].dtype)) * (ts[0] * self.weight.abs())
            return t.expand(*ts[0].shape[:1], *self.out_shape)

    def error_radius(self, mags):
        with torch.no_grad():
            a = mags[0] if self.weight is None else mags[0] * self.weight.abs()
            if self.bias is not None:
                a = a + self.bias.abs()
            e = 2 * gamma(2, a.dtype) * a
            if self.weight_err is not None:
                e = e + 1.01 * self.weight_err * mags[0]
            if self.bias_err is not None:
                e = e + 1.01 * self.bias_err
            extra = self.offset_error(self.offset())
            return e if extra is None else e + extra

    def __repr__(self):
        return "Scale()"


class AddVars(LinearOp):
    """``y = sum_i sign_i x_i`` over variables of one shape (residual connections)."""

    kind = "add"
    monotone = False

    def __init__(self, signs: Sequence[float]):
        self.signs = tuple(float(s) for s in signs)

    def forward(self, *xs):
        out = xs[0] * self.signs[0]
        for s, x in zip(self.signs[1:], xs[1:], strict=True):
            out = out + s * x
        return out

    def interval(self, *bounds):
        lo = sum((b[0] if s > 0 else b[1]) * s for s, b in zip(self.signs, bounds, strict=True))
        hi = sum((b[1] if s > 0 else b[0]) * s for s, b in zip(self.signs, bounds, strict=True))
        return lo, hi

    def offset(self):
        return None

    def adjoint(self, lam):
        return [unbroadcast(lam * s, shape) for s, shape in zip(self.signs, self.in_shapes, strict=True)]

    def abs_forward(self, ts):
        with torch.no_grad():
            total = sum(abs(s) * t for s, t in zip(self.signs, ts, strict=True))
            m = max(self.out_numel() // max(1, int(torch.Size(s).numel())) for s in self.in_shapes)
            return (1 + 2 * gamma(len(self.signs) + m, total.dtype)) * total

    def error_radius(self, mags):
        with torch.no_grad():
            total = sum(abs(s) * a for s, a in zip(self.signs, mags, strict=True))
            m = max(self.out_numel() // max(1, int(torch.Size(s).numel())) for s in self.in_shapes)
            return 2 * gamma(len(self.signs) + m, total.dtype) * total

    def __repr__(self):
        return f"AddVars({self.signs})"
