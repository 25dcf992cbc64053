"""Constants of a model with a rigorous bound on their error.

A model's constants are what it stores; when the frontend computes new ones from them (``1 / c`` for a Div
by a constant, BatchNorm folded into ``w x + b``, constant subgraphs such as ``W1 @ W2``), the result is
rounded, and the network the engine bounds would differ from the stored one. Every such value is computed
in float64 and carries an absolute error bound ``err`` (first-order-free interval reasoning: each operation
adds its own rounding, ``u |result|`` or ``gamma_n |a| |b|`` for products, to the propagated errors), and the
cast to the model's precision adds ``|cast - value|``. Ops add ``err`` to their rounding allowance.
"""

from __future__ import annotations

import numpy as np
import torch

from verify.rounding import gamma, unit_roundoff

U64 = unit_roundoff(torch.float64)


class Errors:
    """Absolute error bounds of folded constants, by array identity (absent: the array is exact)."""

    def __init__(self) -> None:
        self._table: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        hit = self._table.get(id(a))
        return hit[1] if hit is not None and hit[0] is a else None

    def zero_or(self, a: np.ndarray) -> np.ndarray:
        e = self.get(a)
        return np.zeros(np.shape(a)) if e is None else e

    def set(self, a: np.ndarray, err: np.ndarray | None) -> np.ndarray:
        if err is not None and np.any(err != 0):
            self._table[id(a)] = (a, np.broadcast_to(np.asarray(err, dtype=np.float64), np.shape(a)).copy())
        return a


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def add(a, ea, b, eb, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    r = _f64(a) + sign * _f64(b)
    return r, ea + eb + U64 * np.abs(r)


def mul(a, ea, b, eb) -> tuple[np.ndarray, np.ndarray]:
    a, b = _f64(a), _f64(b)
    r = a * b
    return r, np.abs(a) * eb + np.abs(b) * ea + ea * eb + U64 * np.abs(r)


def div(a, ea, b, eb) -> tuple[np.ndarray, np.ndarray]:
    """``a / b``; infinite error where ``b`` is not bounded away from zero."""
    a, b = _f64(a), _f64(b)
    r = a / b
    margin = np.abs(b) - eb
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(margin > 0, (ea + np.abs(r) * eb) / np.where(margin > 0, margin, 1.0), np.inf)
    return r, e + U64 * np.abs(r)


def sqrt(a, ea) -> tuple[np.ndarray, np.ndarray]:
    a = _f64(a)
    r = np.sqrt(a)
    lo = np.sqrt(np.maximum(a - ea, 0.0))
    hi = np.sqrt(a + ea)
    return r, np.maximum(r - lo, hi - r) * (1 + 4 * U64) + U64 * np.abs(r)


def matmul(a, ea, b, eb) -> tuple[np.ndarray, np.ndarray]:
    a, b = _f64(a), _f64(b)
    r = a @ b
    k = a.shape[-1] if a.ndim else 1
    e = np.abs(a) @ eb + ea @ np.abs(b) + ea @ eb + gamma(k, torch.float64) * (np.abs(a) @ np.abs(b))
    return r, e


def cast_error(value: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """``|stored - value|``, exact (the difference of two nearby doubles is exact, Sterbenz)."""
    return np.abs(_f64(stored) - _f64(value))
