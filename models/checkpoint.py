"""Model checkpoints (a directory: ``weights.safetensors`` + ``model.json``) and ONNX export of zoo models.

A checkpoint is rebuilt from its config with ``models.zoo.build_model(config["model"], config["input_shape"],
config["classes"])`` (``models.regressor.build_regressor`` for a regressor) and then filled with the stored
tensors, so no pickled code is ever executed on load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models.onnx_export import sequential_to_onnx
from models.regressor import REGRESSION_MODELS, build_regressor
from models.zoo import MODELS, build_model

ALL_MODELS = (*MODELS, *REGRESSION_MODELS)

WEIGHTS = "weights.safetensors"
CONFIG = "model.json"
_REQUIRED = ("model", "input_shape", "classes")


def _check_config(config: dict, where: str) -> tuple[str, tuple[int, ...], int]:
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{where}: config lacks {', '.join(missing)}")
    name, shape, classes = config["model"], config["input_shape"], config["classes"]
    if name not in ALL_MODELS:
        raise ValueError(f"{where}: unknown model {name!r} (choose from {', '.join(ALL_MODELS)})")
    if (not isinstance(shape, list | tuple) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"{where}: input_shape must be a list of positive integers, got {shape!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"{where}: classes must be a positive integer, got {classes!r}")
    return name, tuple(shape), classes


def build_any(name: str, shape: tuple[int, ...], classes: int) -> nn.Module:
    """A zoo classifier or (``REGRESSION_MODELS``, one output) an IB regressor, seeded so that building one
    leaves the global generator alone."""
    if name in REGRESSION_MODELS:
        if classes != 1:
            raise ValueError(f"regression model {name!r} has one output, not {classes}")
        return build_regressor(name, shape, seed=0)
    return build_model(name, shape, classes, seed=0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage; clone() guarantees both.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _match(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    if set(expected) != set(got):
        extra, lack = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise ValueError(f"{where}: tensors do not match the architecture (unexpected {extra[:3]}, missing {lack[:3]})")
    for k, v in expected.items():
        if tuple(v.shape) != tuple(got[k].shape):
            raise ValueError(f"{where}: tensor {k} has shape {tuple(got[k].shape)}, the architecture needs "
                             f"{tuple(v.shape)}")


def save_model(path: str | os.PathLike, model: nn.Module, config: dict) -> None:
    """Write ``model`` to the directory ``path`` as ``weights.safetensors`` plus ``model.json`` (= ``config``).

    ``config`` needs ``model`` (a name in ``models.zoo.MODELS``), ``input_shape`` and ``classes``; the model must
    have that architecture's tensors (checked here, so every saved checkpoint loads). The directory is written
    beside ``path`` and renamed into place, so a reader never sees half a checkpoint; an existing one is replaced.
    """
    path = Path(path)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # the wrapper's state_dict prefixes every key with "module."
    name, shape, classes = _check_config(config, str(path / CONFIG))
    state = _state(model)
    # seed= keeps the global torch generator untouched: saving must not change a training run's random stream.
    _match(_state(build_any(name, shape, classes)), state, str(path))
    try:  # serialise before touching the disk: an unserialisable config leaves nothing behind
        text = json.dumps({**config, "input_shape": list(shape)}, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG}: config is not JSON-serialisable ({e})") from None
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(text)
        for f in (WEIGHTS, CONFIG):  # on disk before the rename makes them visible
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            # A directory cannot be replaced atomically while it has files: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "ckpt")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by ``save_model`` in ``path``; returns ``(model in eval mode, config)``.

    The model gets the stored precision (a float64 checkpoint loads as float64). A missing or corrupt file, or
    tensors that do not fit the architecture, raise a one-line ``ValueError`` naming the file."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ValueError(f"{p}: no such checkpoint file")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path}: corrupt checkpoint config ({' '.join(str(e).split())})") from None
    name, shape, classes = _check_config(config, str(cfg_path))
    config["input_shape"] = list(shape)
    from safetensors.torch import load

    try:
        tensors = load(w_path.read_bytes())  # bytes, not mmap: the file may be replaced by the next save
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on damaged files
        raise ValueError(f"{w_path}: corrupt checkpoint weights ({' '.join(str(e).split())})") from None
    model = build_any(name, shape, classes)
    _match(_state(model), tensors, str(w_path))
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise ValueError(f"{w_path}: checkpoint weights hold NaN or infinite values")
    model.load_state_dict(tensors)
    return model.eval(), config


def export_onnx(model: nn.Sequential, input_shape: Sequence[int], path: str | os.PathLike) -> None:
    """Write ``model`` (eval-mode semantics, in its own precision) as an ONNX file for ``clarke verify``.

    The graph takes one sample ``[1, *input_shape]``. Written to a temporary file and renamed into place."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"export_onnx needs an nn.Sequential, got {type(model).__name__}")
    shape = [int(d) for d in input_shape]
    if not shape or any(d < 1 or not math.isfinite(d) for d in shape):
        raise ValueError(f"bad input shape {tuple(input_shape)}")
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics, as in the exported graph
    try:
        proto = sequential_to_onnx(model, shape)
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
