"""Where a surrogate's error lives: relative L2 by expert block and by time frame, pooled over test samples
(drawn by physics.plots.save_error_map).

For a region A of the grid, rel_A = ||u - u*||_A / ||u*||_A and share_A = ||u - u*||_A^2 / ||u - u*||^2, the norms
summed over all test samples. An expert-boundary artefact of PI-HC-MoE shows as one block holding most of the
error (e.g. a front that stops at an interface), a training or time-stepping defect as growth over the frames.
"""

from __future__ import annotations

import torch
from torch import Tensor


def error_breakdown(u: Tensor, ref: Tensor, block_of: Tensor) -> dict[str, list[float]]:
    """Pooled relative L2 (%) and error share per block (``block_of`` (G,): the block of every grid point) and
    relative L2 (%) per time frame, for fields u, ref shaped (S, nt, *space)."""
    s, nt = ref.shape[0], ref.shape[1]
    err2 = ((u.double() - ref.double()) ** 2).reshape(s, -1).sum(0)  # (G,)
    ref2 = (ref.double() ** 2).reshape(s, -1).sum(0)
    k = int(block_of.max()) + 1
    e_blk = torch.zeros(k, dtype=torch.float64).index_add_(0, block_of, err2)
    r_blk = torch.zeros(k, dtype=torch.float64).index_add_(0, block_of, ref2)
    e_t, r_t = err2.reshape(nt, -1).sum(1), ref2.reshape(nt, -1).sum(1)
    return {
        "block_rel_l2_pct": (100 * (e_blk / r_blk).sqrt()).tolist(),
        "block_error_share": (e_blk / err2.sum()).tolist(),
        "frame_rel_l2_pct": (100 * (e_t / r_t).sqrt()).tolist(),
    }
