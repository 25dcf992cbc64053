"""Shared pieces of the branch-and-bound loops: outcome type, deadlines, counterexample callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

# Receives candidate points [N, n] (float tensor); returns a validated counterexample (float64) or None.
CexCheck = Callable[[Tensor], np.ndarray | None]


@dataclass
class BabResult:
    status: str  # "unsat" | "sat" | "timeout" | "unknown"
    x: np.ndarray | None = None
    domains: int = 0
    stats: dict = field(default_factory=dict)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def passed(self) -> bool:
        return time.perf_counter() >= self.end
