"""Where a surrogate's error lives: relative L2 by expert block and by time frame, pooled over test samples.

For a region A of the grid, rel_A = ||u - u*||_A / ||u*||_A and share_A = ||u - u*||_A^2 / ||u - u*||^2, the norms
summed over all test samples. An expert-boundary artefact of PI-HC-MoE shows as one block holding most of the
error (e.g. a front that stops at an interface), a training or time-stepping defect as growth over the frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def save_error_map(
    u: Tensor, ref: Tensor, block_of: Tensor, breakdown: dict, path: Path, title: str = "", t_max: float = 1.0
) -> Path:
    """PNG for a (t, x) grid: mean |u - u*| over the samples with the block edges drawn, the relative L2 of
    every block and of every frame."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    err = (u.double() - ref.double()).abs().mean(0).numpy()  # (nt, nx)
    nt, nx = err.shape
    blocks = block_of.reshape(nt, nx)[0].numpy()
    edges = (np.nonzero(np.diff(blocks))[0] + 1) / nx
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    im = axes[0].imshow(err, origin="lower", aspect="auto", cmap="magma", extent=(0.0, 1.0, 0.0, t_max))
    for e in edges:
        axes[0].axvline(e, color="cyan", lw=0.8, ls="--")
    axes[0].set(title="mean |error| (dashed: expert edges)", xlabel="x", ylabel="t")
    fig.colorbar(im, ax=axes[0])
    rel = breakdown["block_rel_l2_pct"]
    axes[1].bar(range(len(rel)), rel)
    for i, share in enumerate(breakdown["block_error_share"]):
        axes[1].text(i, rel[i], f"{100 * share:.0f}%", ha="center", va="bottom", fontsize=8)
    axes[1].set(title="rel. L2 by block (label: share of error)", xlabel="block", ylabel="%")
    frames = np.linspace(0.0, t_max, nt)
    axes[2].plot(frames, breakdown["frame_rel_l2_pct"], marker=".")
    axes[2].set(title="rel. L2 by frame", xlabel="t", ylabel="%")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
