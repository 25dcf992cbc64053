"""Python API: ``bound(model, x_lo, x_hi, C=None, method=...) -> (lower, upper)`` on a batch of boxes."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import intermediate_bounds, lower_bound
from verify.errors import ShapeError
from verify.graph import Graph

METHODS = ("ibp", "crown", "alpha-crown")


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


def _box(graph: Graph, x_lo, x_hi) -> tuple[Tensor, Tensor]:
    dtype = graph.dtype
    lo = graph.prepare_input(torch.as_tensor(np.asarray(x_lo) if not isinstance(x_lo, Tensor) else x_lo)).to(dtype)
    hi = graph.prepare_input(torch.as_tensor(np.asarray(x_hi) if not isinstance(x_hi, Tensor) else x_hi)).to(dtype)
    if lo.shape != hi.shape:
        raise ShapeError(f"box bounds have different shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ShapeError("box bounds must be finite")
    if bool((lo > hi).any()):
        i = int((lo > hi).reshape(lo.shape[0], -1).any(0).nonzero()[0])
        raise ShapeError(f"empty input box: lower > upper at input index {i}")
    return lo, hi


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
          optimize_intermediate: bool = False) -> tuple[Tensor, Tensor]:
    """Sound bounds ``lower <= C f(x) <= upper`` for all ``x`` in ``[x_lo, x_hi]``.

    ``x_lo``/``x_hi``: ``[B, *input_shape]`` (or flattened ``[B, n]``, or one sample). ``C``: ``[S, K]`` or
    ``[B, S, K]`` over the flattened outputs (default: identity). Returns two ``[B, S]`` tensors.
    Differentiable w.r.t. a torch model's parameters for ``ibp`` and ``crown``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(model, torch.nn.Module):
        x_t = torch.as_tensor(x_lo)
        model = as_graph(model, tuple(x_t.shape[1:]))
    graph = as_graph(model)
    lo, hi = _box(graph, x_lo, x_hi)
    b = lo.shape[0]
    C = _spec(graph, C, b, lo.dtype)
    if method == "ibp":
        return _interval_spec(intermediate_bounds(graph, lo, hi, method="ibp")[graph.output], C)
    s = C.shape[1]
    lam = torch.cat([C, -C], dim=1).reshape(b, 2 * s, *graph.output_shape)
    bounds = intermediate_bounds(graph, lo, hi, "crown")
    if method == "crown":
        res = lower_bound(graph, graph.output, lam, bounds)
    else:
        res = alpha_crown_lower(graph, lo, hi, lam, iterations=iterations, lr=lr,
                                optimize_intermediate=optimize_intermediate, bounds=bounds)
    # Both are sound, so the final answer is their intersection (CROWN alone can lose to IBP).
    ilo, ihi = _interval_spec(bounds[graph.output], C)
    return torch.maximum(res[:, :s], ilo), torch.minimum(-res[:, s:], ihi)


def _interval_spec(out_bounds: tuple[Tensor, Tensor], C: Tensor) -> tuple[Tensor, Tensor]:
    """Interval arithmetic for ``C y`` with ``y`` in ``[lo, hi]``."""
    b = C.shape[0]
    out_lo, out_hi = out_bounds[0].reshape(b, -1, 1), out_bounds[1].reshape(b, -1, 1)
    cp, cn = C.clamp(min=0), C.clamp(max=0)
    return (cp @ out_lo + cn @ out_hi).squeeze(-1), (cp @ out_hi + cn @ out_lo).squeeze(-1)
