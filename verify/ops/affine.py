"""Element-wise affine maps and sums of variables: ``y = w * x + b`` (Mul/Div/Add/Sub by constants,
eval-mode BatchNorm) and ``y = sum_i s_i x_i`` (residual Add, Sub of two variables)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from verify.ops.base import LinearOp


class Scale(LinearOp):
    """``y = w * x + b`` with constant ``w``, ``b`` broadcastable to the input shape."""

    kind = "scale"

    def __init__(self, weight: Tensor | None = None, bias: Tensor | None = None):
        self.weight, self.bias = weight, bias

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
        out = []
        for s, shape in zip(self.signs, self.in_shapes, strict=True):
            g = lam * s
            # Undo broadcasting: sum over the axes this input was expanded along.
            if tuple(g.shape[2:]) != shape:
                extra = g.dim() - 2 - len(shape)
                g = g.sum(dim=tuple(range(2, 2 + extra))) if extra > 0 else g
                dims = tuple(i + 2 for i, d in enumerate(shape) if d == 1 and g.shape[i + 2] != 1)
                if dims:
                    g = g.sum(dim=dims, keepdim=True)
            out.append(g)
        return out

    def __repr__(self):
        return f"AddVars({self.signs})"
