"""How far a floating-point evaluation of a network can stray from its exact value over a box.

``E_N = e_N + |op_N|(E_inputs)`` (``verify.bounds.crown.accumulated_error``) with each op's allowance ``e_N`` taken in
the *model's* precision (e.g. ``2 gamma_n (|W| a + |b|)`` for an affine layer, Higham, *Accuracy and Stability of
Numerical Algorithms*, section 3) on interval magnitudes ``a`` of the box: ``|fl(f)(x) - f(x)| <= E`` for every x of
the box, any summation order. Certificates stated for the exact function (a Lipschitz bound) pay ``E`` to cover
the values a float32 model really computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from verify.api import _as_tensor, _box, _trace, as_graph
from verify.bounds.crown import RoundingCache, accumulated_error, intermediate_bounds
from verify.rounding import F64


def evaluation_error(model: Any, x_lo, x_hi, *, input_shape: tuple[int, ...] | None = None) -> Tensor:
    """``[B, K]`` float64 bounds on ``|fl(f)(x) - f(x)|`` over each box ``[x_lo, x_hi]`` (``[B, *input_shape]``),
    ``fl`` the evaluation in the model's own precision. ``model``: Graph, ONNX path or torch module."""
    if isinstance(model, torch.nn.Module):
        model = _trace(model, _as_tensor(x_lo).shape, input_shape)
    graph = as_graph(model)
    lo, hi = _box(graph, x_lo, x_hi)
    b = lo.shape[0]
    with torch.no_grad():
        bounds = intermediate_bounds(graph, lo, hi, "crown")  # tighter magnitudes than IBP
        e = accumulated_error(graph, graph.output, bounds, RoundingCache())
    if e is None:
        return torch.zeros(b, graph.output_numel, dtype=F64)
    return e.reshape(b, -1).to(F64)
