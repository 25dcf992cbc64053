"""Operator interface of the graph IR.

Every operator holds its constant parameters and implements, for a leading batch of boxes ``B``
(and a spec dimension ``S`` in backward passes):

* ``forward(*xs)``: concrete evaluation, tensors ``[B, *shape]``;
* ``interval(*bounds)``: IBP, ``[(lo, hi), ...] -> (lo, hi)``;
* ``backward(lam, in_bounds, alpha)``: one CROWN back-substitution step. ``lam`` has shape
  ``[B, S, *out_shape]`` and stands for the linear function ``<lam, y>``; the op returns the
  coefficients on each input and a float64 constant ``kappa [B, S]`` such that
  ``<lam, y> >= sum_i <lam_i, x_i> + kappa`` for all inputs inside ``in_bounds``
  (Zhang et al., NeurIPS 2018; Xu et al., NeurIPS 2020), up to rounding;
* ``error_radius(mags)``: the rounding allowance of the op (``verify.rounding``): from the magnitudes
  ``a_i = max(|l_i|, |u_i|)`` of its inputs, a per-neuron bound ``e`` on the deviation of a floating-point
  evaluation of the op, of its rounded interval rule, and (as ``<|lam|, e>``) of its rounded backward step,
  from the exact values. ``None`` when all three are exact. ``interval_exact`` ops need no widening.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from verify.rounding import dot64, gamma

Bounds = tuple[Tensor, Tensor]


def merge_leading(t: Tensor, n_trailing: int) -> tuple[Tensor, tuple[int, ...]]:
    """Flatten all leading dims (batch, spec) into one so per-sample torch ops can run on them."""
    lead = tuple(t.shape[: t.dim() - n_trailing])
    return t.reshape(-1, *t.shape[t.dim() - n_trailing:]), lead


def unbroadcast(g: Tensor, shape: Sequence[int]) -> Tensor:
    """``g [B, S, *out]`` summed over the axes along which an input of per-sample ``shape`` was broadcast to ``out``
    (leading axes it lacked, and its size-1 axes): the adjoint of broadcasting."""
    shape = tuple(shape)
    if tuple(g.shape[2:]) == shape:
        return g
    extra = g.dim() - 2 - len(shape)
    if extra > 0:
        g = g.sum(dim=tuple(range(2, 2 + extra)))
    dims = tuple(i + 2 for i, d in enumerate(shape) if d == 1 and g.shape[i + 2] != 1)
    return g.sum(dim=dims, keepdim=True) if dims else g


class Op:
    """Base class. ``in_shapes`` / ``out_shape`` are per-sample shapes, set by :meth:`bind`."""

    kind: str = "op"
    linear: bool = False  # affine in (all of) its inputs jointly
    needs_input_bounds: bool = False  # its relaxation needs [l, u] of its input(s)
    interval_exact: bool = False  # interval() rounds nothing (data movement, max, ReLU)
    interval_rigorous: bool = False  # interval() is already an outward-rounded enclosure, evaluation error included
    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shape: tuple[int, ...] = ()

    @property
    def display_name(self) -> str:
        """What messages to users call the op (its class name unless an op says otherwise)."""
        return type(self).__name__

    def bind(self, in_shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """Record input shapes and infer the output shape by evaluating on zeros."""
        self.in_shapes = tuple(tuple(int(d) for d in s) for s in in_shapes)
        with torch.no_grad():
            xs = [torch.zeros(1, *s, dtype=self.dtype(), device=self.device()) for s in self.in_shapes]
            self.out_shape = tuple(self.forward(*xs).shape[1:])
        return self.out_shape

    def dtype(self) -> torch.dtype:
        for t in self.tensors().values():
            return t.dtype
        return torch.get_default_dtype()

    def tensors(self) -> dict[str, Tensor]:
        """Named constant tensors (weights); used for dtype casts and NaN checks."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def cast(self, dtype: torch.dtype) -> None:
        for k, v in self.tensors().items():
            if v.is_floating_point():
                setattr(self, k, v.to(dtype))
        if dtype == torch.float64:  # constants the frontend also has in float64 (with their own error bound)
            for k, (v64, err64) in getattr(self, "precise", {}).items():
                device = getattr(self, k).device
                setattr(self, k, v64.to(device))
                setattr(self, f"{k}_err", None if err64 is None else err64.to(device))

    def to_device(self, device: torch.device) -> None:
        """Move every tensor the op holds (weights, constants, indices; also inside dicts and lists) to ``device``."""
        for k, v in list(vars(self).items()):
            if isinstance(v, Tensor):
                setattr(self, k, v.to(device))
            elif isinstance(v, dict) and any(isinstance(t, Tensor) for t in v.values()):
                setattr(self, k, {a: t.to(device) if isinstance(t, Tensor) else t for a, t in v.items()})
            elif isinstance(v, list | tuple) and any(isinstance(t, Tensor) for t in v):
                setattr(self, k, type(v)(t.to(device) if isinstance(t, Tensor) else t for t in v))

    def device(self) -> torch.device:
        for t in self.tensors().values():
            return t.device
        return torch.device("cpu")

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def interval(self, *bounds: Bounds) -> Bounds:
        raise NotImplementedError

    def backward(
        self, lam: Tensor, in_bounds: Sequence[Bounds | None], alpha: Tensor | None = None
    ) -> tuple[list[Tensor | None], Tensor | None]:
        raise NotImplementedError

    def error_radius(self, mags: Sequence[Tensor]) -> Tensor | None:
        """Rounding allowance ``e [B, *out_shape]`` (module docstring); every op must state it."""
        raise NotImplementedError(f"{type(self).__name__} states no rounding error bound")

    def interval_radius(self, mags: Sequence[Tensor]) -> Tensor | None:
        """Allowance for the interval rule plus a floating-point evaluation (default: ``error_radius``)."""
        return self.error_radius(mags)

    def abs_forward(self, ts: Sequence[Tensor]) -> Tensor:
        """For non-negative ``t_i [B, *in_shape_i]``: a ``T [B, *out_shape]`` with ``sum_i <|lam_i|, t_i> <=
        <|lam|, T>`` for the backward step's computed ``lam_i`` from any ``lam`` -- the op's linear part with
        absolute coefficients (slopes bounded by 1), times the rounding growth of the step. It carries rounding
        allowances of upstream nodes forward to where ``Lambda`` is known (``verify.bounds.crown``)."""
        raise NotImplementedError(f"{type(self).__name__} has no absolute forward map")

    def out_numel(self) -> int:
        return int(torch.Size(self.out_shape).numel())

    def offset_error(self, c: Tensor | None) -> Tensor | None:
        """Allowance of the float64 dot ``<lam, c>`` with a constant over the whole output."""
        return None if c is None else gamma(self.out_numel(), torch.float64) * c.detach().abs()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearOp(Op):
    """An affine op ``y = L(x_1..x_n) + c``. CROWN and Jacobian steps are both the adjoint ``L^T``.

    Subclasses give ``adjoint`` explicitly where cheap; the default uses autograd (a vjp of the op
    at zero input), which is exact for any affine op and keeps gradients w.r.t. parameters.
    """

    linear = True
    monotone = False  # True when all coefficients of L are >= 0 (IBP then maps lo->lo, hi->hi)

    def offset(self) -> Tensor | None:
        """``c = y(0)``, per-sample shape, or None when the op has no constant term."""
        xs = [torch.zeros(1, *s, dtype=self.dtype(), device=self.device()) for s in self.in_shapes]
        return self.forward(*xs)[0]

    def adjoint(self, lam: Tensor) -> list[Tensor | None]:
        lam_flat, lead = merge_leading(lam, len(self.out_shape))
        with torch.enable_grad():
            xs = [
                torch.zeros(lam_flat.shape[0], *s, dtype=lam.dtype, device=lam.device, requires_grad=True)
                for s in self.in_shapes
            ]
            y = self.forward(*xs)
            grads = torch.autograd.grad(y, xs, lam_flat, create_graph=lam.requires_grad, allow_unused=True)
        return [None if g is None else g.reshape(*lead, *s) for g, s in zip(grads, self.in_shapes, strict=True)]

    def backward(self, lam, in_bounds, alpha=None):
        c = self.offset()
        kappa = None if c is None else dot64(lam, c)
        return self.adjoint(lam), kappa

    def abs_forward(self, ts):
        if not self.monotone:
            raise NotImplementedError(f"{type(self).__name__} has no absolute forward map")
        # non-negative coefficients: the op itself, with its constants cancelled exactly
        y = self.forward(*ts)
        c = self.offset()
        y = y if c is None else y - c
        return y if self.interval_exact else (1 + 2 * gamma(self.out_numel(), y.dtype)) * y

    def interval(self, *bounds: Bounds) -> Bounds:
        if not self.monotone:
            raise NotImplementedError(f"{type(self).__name__} needs an explicit interval rule")
        lo = self.forward(*[b[0] for b in bounds])
        hi = self.forward(*[b[1] for b in bounds])
        return lo, hi
