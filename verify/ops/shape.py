"""Shape operators: Reshape (Flatten, Squeeze, Unsqueeze), Transpose, constant Pad, Concat.

All are linear with non-negative 0/1 coefficients, so IBP maps ``lo -> lo`` and ``hi -> hi`` and
the CROWN/Jacobian step is the inverse data movement. Nothing rounds except the float64 dot of ``Lambda``
with inserted constants (Pad values, Concat pieces).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.ops.base import LinearOp, unbroadcast
from verify.rounding import gamma


class _DataMovement(LinearOp):
    monotone = True
    interval_exact = True

    def error_radius(self, mags):
        return self.offset_error(self.offset())


class Reshape(_DataMovement):
    kind = "reshape"

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def offset(self):
        return None

    def adjoint(self, lam):
        return [lam.reshape(*lam.shape[:2], *self.in_shapes[0])]

    def __repr__(self):
        return f"Reshape{self.shape}"


class Transpose(_DataMovement):
    """Permutes per-sample axes; ``perm`` is given over the per-sample axes."""

    kind = "transpose"

    def __init__(self, perm: Sequence[int]):
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x):
        return x.permute(0, *[p + 1 for p in self.perm])

    def offset(self):
        return None

    def adjoint(self, lam):
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        return [lam.permute(0, 1, *[p + 2 for p in inv])]

    def __repr__(self):
        return f"Transpose{self.perm}"


class Pad(_DataMovement):
    """Constant padding; ``pads`` in torch order (last axis first: left, right, top, bottom, ...)."""

    kind = "pad"

    def __init__(self, pads: Sequence[int], value: float = 0.0):
        self.pads, self.value = tuple(int(p) for p in pads), float(value)

    def forward(self, x):
        return F.pad(x, self.pads, mode="constant", value=self.value)

    def offset(self):
        return None if self.value == 0.0 else super().offset()

    def adjoint(self, lam):
        idx = [slice(None), slice(None)] + [slice(None)] * (lam.dim() - 2)
        for i in range(len(self.pads) // 2):
            axis = lam.dim() - 1 - i
            lo, hi = self.pads[2 * i], self.pads[2 * i + 1]
            idx[axis] = slice(lo, lam.shape[axis] - hi)
        return [lam[tuple(idx)]]

    def __repr__(self):
        return f"Pad{self.pads}"


class Concat(_DataMovement):
    """Concatenation of variables (and constant pieces) along a per-sample axis."""

    kind = "concat"

    def __init__(self, axis: int, n_vars: int, constants: dict[int, Tensor] | None = None,
                 errors: dict[int, Tensor] | None = None):
        # constants: position in the concatenation -> constant piece (per-sample shape); errors: bounds on the
        # distance of a computed (folded) constant from its exact value, which the interval rule and the allowance
        # then cover
        self.axis, self.n_vars = int(axis), int(n_vars)
        self.constants = dict(constants or {})
        self.errors = dict(errors or {})
        if self.errors:
            self.interval_exact = False

    def tensors(self):
        return {f"const{k}": v for k, v in self.constants.items()}

    def cast(self, dtype):
        self.constants = {k: v.to(dtype) for k, v in self.constants.items()}
        self.errors = {k: v.to(dtype) for k, v in self.errors.items()}

    def error_radius(self, mags):
        e = super().error_radius(mags)
        if not self.errors:
            return e
        with torch.no_grad():
            pieces, it = [], iter(mags)
            for pos in range(self.n_vars + len(self.constants)):
                if pos in self.constants:
                    c = self.errors.get(pos, torch.zeros_like(self.constants[pos]))
                    pieces.append(c.to(mags[0].dtype).expand(mags[0].shape[0], *c.shape))
                else:
                    pieces.append(torch.zeros_like(next(it)))
            own = torch.cat(pieces, dim=self.axis + 1)
        return own if e is None else e + own

    def _pieces(self, xs):
        pieces, it = [], iter(xs)
        for pos in range(self.n_vars + len(self.constants)):
            if pos in self.constants:
                c = self.constants[pos]
                pieces.append(c.to(xs[0].dtype).expand(xs[0].shape[0], *c.shape))
            else:
                pieces.append(next(it))
        return pieces

    def forward(self, *xs):
        return torch.cat(self._pieces(xs), dim=self.axis + 1)

    def offset(self):
        return None if not self.constants else super().offset()

    def adjoint(self, lam):
        sizes, it = [], iter(self.in_shapes)
        for pos in range(self.n_vars + len(self.constants)):
            sizes.append(self.constants[pos].shape[self.axis] if pos in self.constants else next(it)[self.axis])
        parts = torch.split(lam, sizes, dim=self.axis + 2)
        return [p for pos, p in enumerate(parts) if pos not in self.constants]

    def __repr__(self):
        return f"Concat(axis={self.axis})"


class Slice(_DataMovement):
    """``x[s_1, ..., s_r]`` with one python slice (positive step) per per-sample axis (ONNX Slice, Split)."""

    kind = "slice"

    def __init__(self, slices: Sequence[slice]):
        self.slices = tuple(slice(s.start, s.stop, s.step) for s in slices)

    def forward(self, x):
        return x[(slice(None), *self.slices)]

    def offset(self):
        return None

    def adjoint(self, lam):
        out = lam.new_zeros(*lam.shape[:2], *self.in_shapes[0])
        out[(slice(None), slice(None), *self.slices)] = lam
        return [out]

    def __repr__(self):
        return f"Slice{tuple((s.start, s.stop, s.step) for s in self.slices)}"


class Gather(_DataMovement):
    """``y = x`` indexed along per-sample ``axis`` by constant ``indices`` (any shape; ONNX Gather). An index may
    repeat (ml4acopf's line-end buses): the adjoint then sums the copies of each input, within ``gamma_m`` of the
    exact sum for ``m`` the largest count of one index, so the allowance and the absolute map grow as for
    :class:`_Copies`; with distinct indices the adjoint is a scatter without sums, and nothing rounds."""

    kind = "gather"

    def __init__(self, axis: int, indices: Tensor):
        self.axis = int(axis)
        self.indices = indices.to(torch.long)
        flat = self.indices.reshape(-1)
        self.copies = int(torch.bincount(flat).max()) if flat.numel() else 1

    def tensors(self):
        return {}  # integer positions: no dtype cast, no NaN check

    def forward(self, x):
        flat = torch.index_select(x, self.axis + 1, self.indices.reshape(-1))
        shape = (*x.shape[: self.axis + 1], *self.indices.shape, *x.shape[self.axis + 2:])
        return flat.reshape(shape)

    def offset(self):
        return None

    def adjoint(self, lam):
        lead = lam.shape[:2]
        k = self.indices.dim()
        flat = lam.reshape(*lead, *lam.shape[2: 2 + self.axis], -1, *lam.shape[2 + self.axis + k:])
        out = lam.new_zeros(*lead, *self.in_shapes[0])
        if self.copies == 1:
            out.index_copy_(self.axis + 2, self.indices.reshape(-1), flat)
        else:
            out.index_add_(self.axis + 2, self.indices.reshape(-1), flat)
        return [out]

    def abs_forward(self, ts):
        y = self.forward(ts[0])
        return y if self.copies == 1 else (1 + 2 * gamma(self.copies, y.dtype)) * y

    def error_radius(self, mags):
        if self.copies == 1:
            return None
        with torch.no_grad():
            return gamma(self.copies, mags[0].dtype) * self.forward(mags[0].detach())

    def __repr__(self):
        return f"Gather(axis={self.axis}, {tuple(self.indices.shape)})"


class _Copies(LinearOp):
    """Ops that copy each input value ``m`` times (upsampling, broadcasting). Monotone, exact forward and intervals;
    the adjoint sums the copies, within ``gamma_m`` of the exact sum, so the allowance is ``gamma_m`` times the copied
    magnitudes, and the absolute map grows by as much."""

    monotone = True
    interval_exact = True

    def copies(self) -> int:
        raise NotImplementedError

    def offset(self):
        return None

    def abs_forward(self, ts):
        return (1 + 2 * gamma(self.copies(), ts[0].dtype)) * self.forward(ts[0])

    def error_radius(self, mags):
        if self.copies() == 1:
            return None
        with torch.no_grad():
            return gamma(self.copies(), mags[0].dtype) * self.forward(mags[0].detach())


class UpsampleNearest(_Copies):
    """Nearest-neighbour upsampling by integer factors (ONNX Upsample, Resize 'nearest'): ``y[i] = x[i // s]`` per
    axis; ``m = prod(s)`` copies."""

    kind = "upsample"

    def __init__(self, factors: Sequence[int]):
        self.factors = tuple(int(f) for f in factors)

    def copies(self) -> int:
        return int(torch.Size(self.factors).numel())

    def forward(self, x):
        for axis, f in enumerate(self.factors):
            if f > 1:
                x = x.repeat_interleave(f, dim=axis + 1)
        return x

    def adjoint(self, lam):
        g = lam
        lead = 2
        for axis, f in enumerate(self.factors):
            if f > 1:
                d = axis + lead
                shape = (*g.shape[:d], g.shape[d] // f, f, *g.shape[d + 1:])
                g = g.reshape(shape).sum(dim=d + 1)
        return [g]

    def __repr__(self):
        return f"UpsampleNearest{self.factors}"


class Expand(_Copies):
    """A variable broadcast to a larger per-sample shape (ONNX Expand, or a constant operand that broadcasts it)."""

    kind = "expand"

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(d) for d in shape)

    def copies(self) -> int:
        return self.out_numel() // max(1, int(torch.Size(self.in_shapes[0]).numel()))

    def forward(self, x):
        rank = len(self.shape) - (x.dim() - 1)
        return x.reshape(x.shape[0], *([1] * rank), *x.shape[1:]).expand(x.shape[0], *self.shape)

    def adjoint(self, lam):
        return [unbroadcast(lam, self.in_shapes[0])]

    def __repr__(self):
        return f"Expand{self.shape}"
