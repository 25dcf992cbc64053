"""PNG plots of a training run and of an evaluation (matplotlib, Agg backend: no display needed).

* :func:`plot_training_curves`: every numeric column of a run's ``metrics.csv`` (or a chosen subset) against
  ``epoch``; columns whose names mention accuracy, loss or time share a panel, any other column gets its own.
* :func:`plot_band_widths` / :func:`plot_information_plane`: regression robustness (certified band width vs
  eps) and the CS-IB information plane over training.
* :func:`plot_per_class`: grouped bars of per-class clean / robust / certified accuracy from an
  :func:`robust_train.evaluate.evaluate` report, the RA-Tail-30 classes marked.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display, safe in CI and worker processes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plot_band_widths", "plot_information_plane", "plot_per_class", "plot_training_curves", "read_metrics"]

_PANELS = (("accuracy", ("acc",)), ("loss", ("loss",)), ("seconds", ("second", "time")))


def read_metrics(path: str | os.PathLike) -> dict[str, list[float]]:
    """The numeric columns of a CSV file with a header: ``{name: values}`` in row order. A cell that is empty or
    not a number reads as NaN; a column with no number at all (e.g. a text column) is left out."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    out: dict[str, list[float]] = {}
    for name in rows[0]:
        if name is None:
            continue
        vals = [_number(r.get(name)) for r in rows]
        if any(not math.isnan(v) for v in vals):
            out[name] = vals
    return out


def _number(cell: str | None) -> float:
    try:
        return float(cell) if cell not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _panel(name: str) -> str:
    low = name.lower()
    for panel, keys in _PANELS:
        if any(k in low for k in keys):
            return panel
    return name


def plot_training_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike,
                         columns: Sequence[str] | None = None, x: str = "epoch",
                         title: str | None = None) -> Path:
    """Plot ``columns`` (default: every numeric column except ``x``) of ``metrics_csv`` against column ``x``
    (the row number when the file has no such column) into ``out_png``. Returns the PNG path."""
    data = read_metrics(metrics_csv)
    n = len(next(iter(data.values()))) if data else 0
    xs = data.get(x, [float(i) for i in range(n)])
    names = [c for c in data if c != x] if columns is None else list(columns)
    missing = [c for c in names if c not in data]
    if missing:
        raise ValueError(f"{metrics_csv}: no numeric column {', '.join(map(repr, missing))} "
                         f"(numeric columns: {', '.join(data)})")
    if not names:
        raise ValueError(f"{metrics_csv}: nothing to plot besides {x!r}")
    panels: dict[str, list[str]] = {}
    for c in names:
        panels.setdefault(_panel(c), []).append(c)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (panel, members) in zip(axes.flat, panels.items(), strict=False):
        for c in members:
            ax.plot(xs, data[c], marker="o" if n <= 30 else None, ms=3, label=c)
        ax.set_xlabel(x if x in data else "row")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if len(members) > 1 or members[0] != panel:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_per_class(report: Mapping[str, Any], out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped bars of per-class clean, robust (worst case over the attacks) and certified accuracy from an
    ``evaluate()`` report; a class with no point is left blank, the RA-Tail-30 classes carry a '*'."""
    pc = report["per_class"]
    series = [(k, pc.get(k)) for k in ("clean", "robust", "certified") if pc.get(k) is not None]
    classes = len(pc["clean"])
    names = list(report.get("class_names") or [str(c) for c in range(classes)])
    tail = set(report.get("ra_tail_30_classes") or [])
    labels = [f"{nm}*" if c in tail else nm for c, nm in enumerate(names)]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * classes + 2), 3.8))
    for s, (key, vals) in enumerate(series):
        xs = [c + (s - (len(series) - 1) / 2) * width for c in range(classes)]
        ax.bar(xs, [math.nan if v is None else 100 * v for v in vals], width, label=_legend(key, report))
    ax.set_xticks(range(classes), labels, rotation=30 if max(map(len, labels)) > 4 else 0, ha="right"
                  if max(map(len, labels)) > 4 else "center", fontsize=8)
    ax.set_ylim(0, 115)  # headroom above 100 % for the legend, so it never hides a bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=len(series), frameon=False)
    eps = report.get("eps")
    ax.set_title(title or (f"per-class accuracy, eps = {eps:g}" if isinstance(eps, int | float) else
                           "per-class accuracy") + ("  (* RA-Tail-30 classes)" if tail else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _legend(key: str, report: Mapping[str, Any]) -> str:
    total = {"clean": report.get("clean_accuracy"), "robust": report.get("robust_accuracy"),
             "certified": report.get("certified_accuracy")}.get(key)
    return key if total is None else f"{key} ({100 * total:.1f}%)"


def _save(fig, out_png: str | os.PathLike) -> Path:
    """Write the figure via a temporary file and a rename (a reader never sees half a PNG) and close it."""
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_band_widths(reports: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                     title: str = "certified error band vs eps") -> Path:
    """Mean certified band width against eps, one line per (label, band method), from
    :func:`robust_train.regression_eval.evaluate_regressor` reports keyed by label (e.g. the training method)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"crown": "-", "alpha-crown": "--", "lipschitz": ":"}
    for k, (label, rep) in enumerate(reports.items()):
        color = f"C{k}"
        for method in rep.get("bands", []):
            key = f"band_{method.replace('-', '_')}"
            pts = [(r["eps"], r[key]) for r in rep["rows"] if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), styles.get(method, "-"), color=color, marker="o", ms=3,
                        label=f"{label} {method}")
    ax.set_xlabel("eps (l_inf radius; standardised inputs, pixels for images)")
    ax.set_ylabel("mean band width (standardised target)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_information_plane(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                           title: str = "information plane (I_CS, nats; one estimator for all methods)") -> Path:
    """``I_CS(y; t)`` against ``I_CS(x; t)`` over training, one trajectory per label; ``curves[label]`` holds the
    ``i_xt`` and ``i_yt`` columns of a regression run's metrics (:func:`read_metrics`)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, (label, cols) in enumerate(curves.items()):
        pts = [(a, b) for a, b in zip(cols.get("i_xt", []), cols.get("i_yt", []), strict=False)
               if math.isfinite(a) and math.isfinite(b)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "-", color=f"C{k}", alpha=0.6, label=label)
        ax.scatter(xs, ys, c=range(len(xs)), cmap="viridis", s=10, zorder=3)
        ax.plot(xs[-1], ys[-1], "s", color=f"C{k}", ms=7)
    ax.set_xlabel("I_CS(x; t)")
    ax.set_ylabel("I_CS(y; t)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)

