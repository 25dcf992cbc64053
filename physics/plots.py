"""PNG plots of predicted vs reference fields, their pointwise error, and the error by block and frame
(matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display on CI machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str) -> Path:
    """Title, tight layout, write the PNG (parents created), close the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_field_plots(
    pred: np.ndarray, ref: np.ndarray, path: Path, title: str = "", extent=None, labels: tuple[str, str] = ("x", "t")
) -> Path:
    """One row per sample: prediction, reference, |error|; fields shaped (S, rows, cols), e.g. (S, nt, nx) with t
    on the vertical axis; ``labels`` names the horizontal and vertical axes."""
    plt = _pyplot()
    s = pred.shape[0]
    fig, axes = plt.subplots(s, 3, figsize=(10, 2.6 * s), squeeze=False)
    for i in range(s):
        vmin, vmax = float(ref[i].min()), float(ref[i].max())
        for j, (field, name) in enumerate(((pred[i], "prediction"), (ref[i], "reference"))):
            im = axes[i, j].imshow(field, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, extent=extent)
            axes[i, j].set_title(f"{name} #{i}")
            fig.colorbar(im, ax=axes[i, j])
        err = np.abs(pred[i] - ref[i])
        im = axes[i, 2].imshow(err, origin="lower", aspect="auto", cmap="magma", extent=extent)
        rel = np.linalg.norm(pred[i] - ref[i]) / np.linalg.norm(ref[i])
        axes[i, 2].set_title(f"|error| (rel. L2 {100 * rel:.2f}%)")
        fig.colorbar(im, ax=axes[i, 2])
        for ax in axes[i]:
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
    return _save(fig, path, title)


def save_error_map(
    u: Tensor, ref: Tensor, block_of: Tensor, breakdown: dict, path: Path, title: str = "", t_max: float = 1.0
) -> Path:
    """PNG for a (t, x) grid: mean |u - u*| over the samples with the block edges drawn, the relative L2 of
    every block and of every frame."""
    plt = _pyplot()
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
    return _save(fig, path, title)
