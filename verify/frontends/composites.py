"""Piecewise-linear ops written with ReLUs, for both frontends: ``clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)``,
``max(x, c) = c + relu(x - c)``, ``min(x, c) = x - relu(x - c)``, ``|x| = relu(x) + relu(-x)``.

Each identity is exact in real arithmetic, and the model's own float evaluation of clamp / max / min / abs rounds
nothing, so bounds of the composition (whose Scale and sum nodes carry their rounding allowances) hold for the model.
Their CROWN relaxations are ReLU triangles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from verify.errors import UnsupportedOperator
from verify.graph import GraphBuilder
from verify.ops import AddVars, Relu, Scale

Constant = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]
"""A float64 constant -> (the constant in the model's precision, the bound on its cast error or None)."""


def _shift(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``x - c``."""
    v, err = const(-np.asarray(c, dtype=np.float64))
    return b.add(b.fresh(name), Scale(None, v, bias_err=err), [x])


def _relu_minus(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``relu(x - c)``."""
    return b.add(b.fresh(f"{name}_relu"), Relu(), [_shift(b, f"{name}_shift", x, c, const)])


def clamp(b: GraphBuilder, name: str, x: str, lo: np.ndarray | None, hi: np.ndarray | None, const: Constant) -> str:
    """``min(max(x, lo), hi)`` (either limit may be None)."""
    if lo is not None and hi is not None and bool(np.any(np.asarray(lo) > np.asarray(hi))):
        raise UnsupportedOperator("clamp", name, None, "a lower limit above the upper limit")
    if lo is None and hi is None:
        return x
    if hi is None:
        return maximum(b, name, x, lo, const)
    if lo is None:
        return minimum(b, name, x, hi, const)
    diff = b.add(b.fresh(f"{name}_diff"), AddVars([1.0, -1.0]),
                 [_relu_minus(b, f"{name}_min", x, lo, const), _relu_minus(b, f"{name}_max", x, hi, const)])
    return _shift(b, name, diff, -np.asarray(lo, dtype=np.float64), const)


def maximum(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``max(x, c) = c + relu(x - c)``."""
    return _shift(b, name, _relu_minus(b, name, x, c, const), -np.asarray(c, dtype=np.float64), const)


def minimum(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``min(x, c) = x - relu(x - c)``."""
    return b.add(b.fresh(name), AddVars([1.0, -1.0]), [x, _relu_minus(b, name, x, c, const)])


def absolute(b: GraphBuilder, name: str, x: str, dtype: torch.dtype) -> str:
    """``|x| = relu(x) + relu(-x)``."""
    neg = b.add(b.fresh(f"{name}_neg"), Scale(torch.tensor(-1.0, dtype=dtype, device="cpu")), [x])
    parts = [b.add(b.fresh(f"{name}_pos_relu"), Relu(), [x]), b.add(b.fresh(f"{name}_neg_relu"), Relu(), [neg])]
    return b.add(b.fresh(name), AddVars([1.0, 1.0]), parts)
