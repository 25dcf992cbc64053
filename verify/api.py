"""Python API: ``bound(model, x_lo, x_hi, C=None, method=...) -> (lower, upper)`` on a batch of boxes.

The bounds are rigorous in real arithmetic (``verify.rounding``): they contain the exact value of the network
as stored, and its floating-point evaluation in its own precision, for every input in the box."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import intermediate_bounds, lower_bound
from verify.errors import InputError, ShapeError
from verify.graph import Graph
from verify.rounding import F64, bound_dtype, cast_box, cast_down, cast_up, down, gamma, up

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
"""``crown-ibp``: interval intermediate bounds and one CROWN pass from the spec (Zhang et al., ICLR 2020)."""


def as_graph(model: Any, input_shape: tuple[int, ...] | None = None) -> Graph:
    """A Graph from a Graph, an ONNX path, or a torch module (``input_shape`` per sample, no batch)."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, str | os.PathLike):
        from verify.frontends.onnx_frontend import load_onnx
        return load_onnx(model)
    if isinstance(model, torch.nn.Module):
        from verify.frontends.torch_frontend import from_torch
        if input_shape is None:
            raise ShapeError("a torch module needs the input shape (pass boxes shaped [B, *input_shape])")
        return from_torch(model, input_shape)
    raise TypeError(f"cannot build a graph from {type(model).__name__}")


def _as_tensor(x) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def _box(graph: Graph, x_lo, x_hi) -> tuple[Tensor, Tensor]:
    """The box ``[B, *input_shape]`` in the graph's precision, rounded outward where the cast is inexact."""
    lo, hi = _as_tensor(x_lo), _as_tensor(x_hi)
    if lo.shape != hi.shape:
        raise ShapeError(f"box bounds have different shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputError("box bounds must be finite (found NaN or inf)")
    lo, hi = graph.prepare_input(lo), graph.prepare_input(hi)
    if bool((lo > hi).any()):
        i = int((lo > hi).reshape(lo.shape[0], -1).any(0).nonzero()[0])
        raise InputError(f"empty input box: lower > upper at input index {i}")
    return cast_box(lo, hi, graph.dtype)


def _spec(graph: Graph, C, b: int, dtype) -> Tensor:
    k = graph.output_numel
    if C is None:
        C = torch.eye(k, dtype=dtype)
    C = torch.as_tensor(C, dtype=dtype)
    if C.dim() == 1:
        C = C.unsqueeze(0)
    if C.shape[-1] != k:
        raise ShapeError(f"spec matrix C has {C.shape[-1]} columns but the model has {k} outputs")
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(b, *C.shape)
    if C.dim() != 3 or C.shape[0] != b:
        raise ShapeError(f"spec matrix C must be [S, {k}] or [B, S, {k}], got {tuple(C.shape)}")
    return C


def bound(model: Any, x_lo, x_hi, C=None, method: str = "crown", *, iterations: int = 20, lr: float = 0.5,
          optimize_intermediate: bool = False, input_shape: tuple[int, ...] | None = None,
          precision: str = "float64", bound_upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Sound bounds ``lower <= C f(x) <= upper`` for all ``x`` in ``[x_lo, x_hi]``.

    ``x_lo``/``x_hi``: ``[B, *input_shape]`` (or flattened ``[B, n]``, or one sample). ``C``: ``[S, K]`` or
    ``[B, S, K]`` over the flattened outputs (default: identity). Returns two ``[B, S]`` tensors in the model's
    precision, rounded outward. Differentiable w.r.t. a torch model's parameters for ``ibp``, ``crown-ibp`` and
    ``crown``.
    A torch module is traced for ``input_shape`` (per sample); without it, for ``x_lo.shape[1:]`` (a batch) or,
    if the module does not take that, for ``x_lo.shape`` (one sample). ``precision``: ``float64`` (default) or
    ``model`` (see ``verify.rounding.PRECISIONS``); the bounds are rigorous either way. ``bound_upper=False``
    (auto_LiRPA's name) returns ``(lower, None)``: the CROWN passes carry half the rows (certified training).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    for name, v in (("iterations", iterations), ("lr", lr)):
        if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite non-negative number, got {v!r}")
    if isinstance(model, torch.nn.Module):
        model = _trace(model, _as_tensor(x_lo).shape, input_shape)
    model_dtype = as_graph(model).dtype
    graph = as_graph(model).with_dtype(bound_dtype(model_dtype, precision))
    lo, hi = _box(graph, x_lo, x_hi)
    b = lo.shape[0]
    C = _spec(graph, C, b, lo.dtype)
    chunk = boxes_per_pass(graph, method, C.shape[1])
    parts = [_bound_boxes(graph, lo[i:i + chunk], hi[i:i + chunk], C[i:i + chunk], method, model_dtype,
                          iterations, lr, optimize_intermediate, bound_upper) for i in range(0, b, chunk)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if bound_upper else None


MEMORY_BUDGET_GIB = 4.0
"""Memory one bound pass may plan for (``CLARKE_BOUND_MEMORY_GB`` overrides): larger batches are split."""


def boxes_per_pass(graph: Graph, method: str, spec_rows: int) -> int:
    """How many boxes one pass may bound at once. CROWN's linear coefficients of an n-neuron node over an earlier
    m-value node take ``n m`` floats per box (``2 S m`` for the spec's S rows under ``crown-ibp``); a pass keeps
    a few such tensors alive (coefficients, their positive and negative parts, a product), so a box is planned
    at ``6 * 8 n m`` bytes with n, m the largest node sizes. Independent boxes split without changing a bound."""
    if method == "ibp":
        return 1 << 30
    try:
        budget = float(os.environ.get("CLARKE_BOUND_MEMORY_GB", MEMORY_BUDGET_GIB))
    except ValueError:
        budget = MEMORY_BUDGET_GIB
    sizes = [graph.input_numel] + [int(torch.Size(n.shape).numel()) for n in graph.nodes]
    widest = max(sizes)
    rows = widest if method in ("crown", "alpha-crown") else 2 * spec_rows
    per_box = 6 * 8 * rows * widest
    return max(1, int(budget * 2**30 // per_box))


def _bound_boxes(graph: Graph, lo: Tensor, hi: Tensor, C: Tensor, method: str, model_dtype: torch.dtype,
                 iterations: int, lr: float, optimize_intermediate: bool, bound_upper: bool = True
                 ) -> tuple[Tensor, Tensor | None]:
    """:func:`bound` on prepared boxes ``[B, *input_shape]`` and spec ``[B, S, K]`` (one pass)."""
    b = lo.shape[0]
    if method == "ibp":
        lower, upper = _interval_spec(intermediate_bounds(graph, lo, hi, method="ibp")[graph.output], C, model_dtype)
        return lower, upper if bound_upper else None
    s = C.shape[1]
    rows = torch.cat([C, -C], dim=1) if bound_upper else C
    lam = rows.reshape(b, rows.shape[1], *graph.output_shape)
    bounds = intermediate_bounds(graph, lo, hi, "ibp" if method == "crown-ibp" else "crown")
    if method in ("crown", "crown-ibp"):
        res = lower_bound(graph, graph.output, lam, bounds)
    else:
        res = alpha_crown_lower(graph, lo, hi, lam, iterations=iterations, lr=lr,
                                optimize_intermediate=optimize_intermediate, bounds=bounds)
    # Both are sound, so the final answer is their intersection (CROWN alone can lose to IBP).
    ilo, ihi = _interval_spec(bounds[graph.output], C, model_dtype)
    lower = torch.maximum(cast_down(res[:, :s], model_dtype), ilo)
    return lower, torch.minimum(cast_up(-res[:, s:], model_dtype), ihi) if bound_upper else None


def _trace(module: torch.nn.Module, shape: torch.Size, input_shape: tuple[int, ...] | None) -> Graph:
    if input_shape is not None:
        return as_graph(module, tuple(input_shape))
    try:
        return as_graph(module, tuple(shape[1:]))
    except (ShapeError, RuntimeError) as batched:
        try:  # one unbatched sample
            return as_graph(module, tuple(shape))
        except (ShapeError, RuntimeError):
            raise batched from None


def _interval_spec(out_bounds: tuple[Tensor, Tensor], C: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Interval arithmetic for ``C y`` with ``y`` in ``[lo, hi]``, in float64 with its rounding paid, returned
    in ``dtype`` rounded outward."""
    b = C.shape[0]
    out_lo, out_hi = out_bounds[0].reshape(b, -1, 1).to(F64), out_bounds[1].reshape(b, -1, 1).to(F64)
    C64 = C.to(F64)
    cp, cn = C64.clamp(min=0), C64.clamp(max=0)
    lower = (cp @ out_lo + cn @ out_hi).squeeze(-1)
    upper = (cp @ out_hi + cn @ out_lo).squeeze(-1)
    slack = gamma(C.shape[-1] + 2, F64) * (C64.abs() @ torch.maximum(out_lo.abs(), out_hi.abs())).squeeze(-1)
    return cast_down(down(lower - slack), dtype), cast_up(up(upper + slack), dtype)


class BoundedModule:
    """A torch module traced once for per-sample inputs of ``input_shape`` (the name auto_LiRPA users know); every
    call reads the module's current parameters, so bounds stay differentiable in them (certified training).

    ``precision``: ``model`` by default here (float32 arithmetic for a float32 module: training speed; the
    bounds are rigorous either way, ``float64`` is tighter)."""

    def __init__(self, module: torch.nn.Module, input_shape: tuple[int, ...], precision: str = "model"):
        from verify.frontends.torch_frontend import from_torch
        self.module, self.precision = module, precision
        self.graph = from_torch(module, tuple(input_shape))

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)

    def compute_bounds(self, x_lo, x_hi, C=None, method: str = "crown", **options) -> tuple[Tensor, Tensor | None]:
        """:func:`bound` on the traced graph: ``lower <= C f(x) <= upper`` over the boxes, ``[B, S]`` each
        (``bound_upper=False``: ``(lower, None)`` at about half the cost of a CROWN pass)."""
        options.setdefault("precision", self.precision)
        return bound(self.graph, x_lo, x_hi, C=C, method=method, **options)
