"""The run directory: config.json, metrics.csv, per-epoch checkpoints (written atomically), final weights.

Layout::

    RUN/config.json                 TrainConfig
    RUN/metrics.csv                 one row per epoch (METRIC_COLUMNS)
    RUN/checkpoints/epoch-0003.pt   torch.save dict after 3 epochs: model, optimizer, scheduler, RNG, method state
    RUN/model/                      final weights: weights.safetensors + model.json (models.checkpoint.load_model)
    RUN/model.onnx                  the trained network for ``clarke verify``
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robust_train.config import ConfigError, TrainConfig, load_config

METRIC_COLUMNS = ("epoch", "lr", "eps", "kappa", "beta", "train_loss", "train_acc", "train_robust_acc",
                  "val_clean_acc", "val_pgd_acc", "val_ibp_certified_acc", "log_u", "seconds", "val_seconds")
# regression runs (mse / vib / csib): RMSE in standardised target units, information-plane coordinates in nats
REGRESSION_COLUMNS = ("epoch", "lr", "eps", "ib_beta", "train_loss", "train_rmse", "val_rmse", "val_pgd_rmse",
                      "i_xt", "i_yt", "seconds", "val_seconds")


def metric_columns(cfg: TrainConfig) -> tuple[str, ...]:
    return REGRESSION_COLUMNS if cfg.task == "regression" else METRIC_COLUMNS
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
_CKPT = re.compile(r"^epoch-(\d+)\.pt$")


def prepare(out: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool, write: bool) -> None:
    """Check (every rank) and, where ``write`` (rank 0), create the run directory. An existing non-empty
    directory is refused unless ``resume`` (its config must match) or ``overwrite`` (only a run directory, one
    with config.json, is deleted)."""
    exists = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if exists and out.is_file():
        raise ConfigError(f"run directory {out} is a file")
    if exists and resume:
        saved = load_config(out)
        diff = saved.differences(cfg)
        if diff:
            raise ConfigError(f"cannot resume {out}: config differs in {', '.join(diff)}")
        return
    if exists and not overwrite:
        raise ConfigError(f"run directory {out} exists and is not empty (resume or overwrite it)")
    if exists and not (out / "config.json").is_file():
        raise ConfigError(f"refusing to overwrite {out}: not a training run directory (no config.json)")
    if write:
        if exists:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", cfg.to_json())
        with open(out / "metrics.csv", "w", newline="") as f:
            csv.writer(f).writerow(metric_columns(cfg))


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    """Global RNG states (the trainer's randomness comes from keyed generators; these are saved so code that
    uses the global RNGs, e.g. a model's dropout, also resumes)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list | tuple) else v


def save_checkpoint(out: Path, epoch: int, state: dict) -> Path:
    """``checkpoints/epoch-NNNN.pt`` via a temporary file and an atomic rename (a crash never leaves a torn
    checkpoint under the final name)."""
    folder = out / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch-{epoch:04d}.pt"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint dict; a ConfigError naming the file when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "scheduler"} <= set(state):
            raise ValueError("missing entries")
        return state
    except Exception as e:  # a truncated or foreign file: torch raises several kinds
        raise ConfigError(f"{path}: corrupt checkpoint ({' '.join(str(e).split())[:200]})") from None


def _header(out: Path) -> list[str]:
    with open(out / "metrics.csv", newline="") as f:
        return next(csv.reader(f), None) or list(METRIC_COLUMNS)


def append_metrics(out: Path, row: dict) -> None:
    columns = _header(out)  # the run's own columns (classification or regression)
    with open(out / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow([_fmt(row.get(c)) for c in columns])


def truncate_metrics(out: Path, epochs: int) -> None:
    """Keep the rows of the first ``epochs`` epochs (a run stopped between its metrics row and its checkpoint
    is resumed from the checkpoint, and that epoch's row is written again)."""
    path = out / "metrics.csv"
    rows = list(csv.reader(open(path, newline=""))) if path.is_file() else []
    keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs]
    header = rows[0] if rows else list(metric_columns(load_config(out)))
    text = [header, *keep]
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".metrics.")
    with os.fdopen(fd, "w", newline="") as f:
        csv.writer(f).writerows(text)
    os.replace(tmp, path)


def read_metrics(out: Path) -> list[dict]:
    with open(Path(out) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def save_final(out: Path, model: nn.Module, cfg: TrainConfig, input_shape: tuple[int, ...], classes: int,
               class_names: list[str] | None, zoo: bool = True, selected_epoch: int | None = None) -> None:
    """The trained weights with their config in ``RUN/model`` (``models.checkpoint.save_model``: loads back with
    ``load_model``) and ``RUN/model.onnx``. A network that is not the zoo architecture ``cfg.model`` (``zoo``
    False) is written in the same layout by safetensors directly."""
    meta = {"model": cfg.model, "input_shape": list(input_shape), "classes": classes,
            "class_names": list(class_names) if class_names is not None else None, "method": cfg.method,
            "eps": cfg.eps, "train_config": json.loads(cfg.to_json())}
    if selected_epoch is not None:  # regression: the weights of the best validation epoch
        meta["selected_epoch"] = selected_epoch
    model = model.cpu()
    from models import checkpoint as ck
    if zoo:
        ck.save_model(out / MODEL_DIR, model, meta)
    else:
        from safetensors.torch import save_file
        (out / MODEL_DIR).mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                  str(out / MODEL_DIR / ck.WEIGHTS))
        atomic_write_text(out / MODEL_DIR / ck.CONFIG, json.dumps({**meta, "custom": True}, indent=2))
    deterministic = getattr(model, "deterministic", None)  # a stochastic regressor: its evaluation path
    if deterministic is not None:
        ck.export_onnx(deterministic(), tuple(input_shape), out / "model.onnx")
    elif isinstance(model, nn.Sequential):
        ck.export_onnx(model, tuple(input_shape), out / "model.onnx")
