"""Where the engine computes: ``auto`` (the first CUDA device when there is one, else the CPU), ``cpu``, ``cuda``,
``cuda:N``. Every tensor of a bound computation follows the input box's device; ``Graph.to`` moves a model."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from verify.errors import InputError

DEVICE_HELP = "auto (a CUDA GPU when present, else the CPU; the default), cpu, cuda or cuda:N"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for a device name; one line naming the problem for a malformed or absent device."""
    if isinstance(name, torch.device):
        return name
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text[5:]
        if index and not index.isdigit():
            raise InputError(f"device {name!r}: the GPU index must be a number (cuda:0, cuda:1, ...)")
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA GPU is available here (use cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
        return torch.device(text)
    raise InputError(f"unknown device {name!r}; choose {DEVICE_CHOICES}")


def device_or_cpu(name: str | torch.device | None) -> torch.device:
    """:func:`resolve_device` for an optional argument whose default is the CPU (``verify``, ``lipschitz``)."""
    return torch.device("cpu") if name is None else resolve_device(name)


def device_arg(text: str) -> str:
    """argparse ``type=`` for ``--device``: the name's form is checked here, its availability when the command runs."""
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose {DEVICE_CHOICES}")


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """On CUDA, float32 matrix products and convolutions in full float32 (no TF32, whose 10-bit mantissa the
    rounding allowances do not cover) for the duration; a no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
