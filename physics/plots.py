"""PNG plots of predicted vs reference fields and their pointwise error (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_field_plots(
    pred: np.ndarray, ref: np.ndarray, path: Path, title: str = "", extent=None, labels: tuple[str, str] = ("x", "t")
) -> Path:
    """One row per sample: prediction, reference, |error|; fields shaped (S, rows, cols), e.g. (S, nt, nx) with t
    on the vertical axis; ``labels`` names the horizontal and vertical axes."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
