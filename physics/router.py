"""Fixed domain decomposition ("router") of a space-time grid into K = prod_d k_d uniform blocks.

There is no learned gating: expert k owns block Omega_k and solves its own w_k from m points sampled in
Omega_k (Chalapathi et al., ICLR 2024, Sec. 3.2). Sampling is seeded by (seed, step, sample id, expert id),
so the points, and therefore the results, do not depend on the batch split or the number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from physics.errors import PhysicsError


def normalise_experts(experts: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """An int K means K blocks along the last (spatial) axis, as the paper's diffusion-sorption (1, 4); on a
    (t, x, y) grid a near-square spatial split a x b = K, a <= b, as the paper's Navier-Stokes (1, 2, 2)."""
    if isinstance(experts, int):
        if ndim == 3:
            a = max(d for d in range(1, math.isqrt(experts) + 1) if experts % d == 0)
            return (1, a, experts // a)
        return (1,) * (ndim - 1) + (experts,)
    if len(experts) != ndim:
        raise PhysicsError(f"experts {experts} must give one count per grid axis ({ndim})")
    return tuple(experts)


class Router:
    """Partition of a grid (t, x[, y]) into blocks; block ids per point and seeded per-expert sampling."""

    def __init__(self, grid: tuple[int, ...], experts: int | tuple[int, ...], mask: Tensor, min_points: int = 1):
        self.grid = tuple(grid)
        self.experts = normalise_experts(experts, len(grid))
        for k, n in zip(self.experts, self.grid, strict=True):
            if k < 1 or k > n:
                raise PhysicsError(f"experts {self.experts} too large for grid {self.grid}: need 1 <= k_d <= size_d")
        self.K = math.prod(self.experts)
        # Block index along each axis: array_split-style uniform bands.
        axes = [
            torch.as_tensor(np.repeat(np.arange(k), [len(a) for a in np.array_split(np.arange(n), k)]))
            for k, n in zip(self.experts, self.grid, strict=True)
        ]
        mesh = torch.meshgrid(*axes, indexing="ij")
        block = torch.zeros(self.grid, dtype=torch.long)
        for a, k in zip(mesh, self.experts, strict=True):
            block = block * k + a
        self.block_of = block.reshape(-1)  # (G,) expert id of every grid point
        self.points = [torch.nonzero(mask & (self.block_of == k)).squeeze(-1) for k in range(self.K)]
        counts = [len(p) for p in self.points]
        if min(counts) < min_points:
            raise PhysicsError(
                f"K={self.K} experts {self.experts} too large for grid {self.grid}: "
                f"a block has {min(counts)} "
                f"collocation points, fewer than the {min_points} basis functions"
            )

    def interface_pairs(self) -> Tensor:
        """(R, 3) rows (grid point, its expert, neighbouring expert) for both sides of every block interface."""
        ids = self.block_of.reshape(self.grid)
        flat = torch.arange(ids.numel()).reshape(self.grid)
        rows = []
        for d in range(len(self.grid)):
            a, b = ids.narrow(d, 0, self.grid[d] - 1), ids.narrow(d, 1, self.grid[d] - 1)
            pa, pb = flat.narrow(d, 0, self.grid[d] - 1), flat.narrow(d, 1, self.grid[d] - 1)
            cut = a != b
            rows.append(torch.stack([pa[cut], a[cut], b[cut]], 1))  # left side of the edge
            rows.append(torch.stack([pb[cut], b[cut], a[cut]], 1))  # right side
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)

    def block_size(self) -> int:
        """Collocation points in the smallest block (the most any expert can sample)."""
        return min(len(p) for p in self.points)

    def sample(self, m: int, step: int, sample_ids: list[int], seed: int = 0) -> Tensor:
        """Global point indices (B, K, m'), m' = min(m, smallest block), drawn without replacement."""
        mm = min(m, self.block_size())
        # Host-side by design: the points must not depend on the device (or its random generator).
        out = torch.empty(len(sample_ids), self.K, mm, dtype=torch.long, device="cpu")
        for i, sid in enumerate(sample_ids):
            for k in range(self.K):
                out[i, k] = self.points[k][sample_points(len(self.points[k]), mm, seed, step, sid, k)]
        return out


def sample_points(n: int, m: int, seed: int, step: int, sample_id: int, expert: int) -> Tensor:
    """m of n indices, a deterministic function of (seed, step, sample id, expert id) only."""
    if m >= n:
        return torch.arange(n, device="cpu")
    key = np.random.SeedSequence([seed, step, sample_id, expert]).generate_state(2)
    g = torch.Generator(device="cpu").manual_seed(int(key[0]) << 32 | int(key[1]))
    return torch.sort(torch.randperm(n, generator=g, device="cpu")[:m]).values
