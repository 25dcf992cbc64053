"""Small reference architectures used by tests, benchmarks and examples."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``sizes = [in, h1, ..., out]``: Linear layers with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 3, image: int = 32, classes: int = 10) -> nn.Sequential:
    """Conv 3->4 k4 s2 p1, ReLU, Conv 4->4 k4 s2 p1, ReLU, Linear 256->32, ReLU, Linear 32->10."""
    side = image // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * side * side, 32), nn.ReLU(), nn.Linear(32, classes))


# ------------------------------------------------------------------------------------------------------------
# The certified-training zoo: small MLPs and CNNs of the IBP / CROWN-IBP literature, sized for a CPU.

MODELS = ("mlp-small", "cnn-tiny", "cnn-small", "cnn-medium")


def _conv_stack(specs: Sequence[tuple[int, int, int, int]], in_channels: int) -> list[nn.Module]:
    """``specs`` of ``(out_channels, kernel, stride, padding)``: Conv2d-ReLU pairs."""
    layers: list[nn.Module] = []
    c = in_channels
    for out, k, s, p in specs:
        layers += [nn.Conv2d(c, out, k, stride=s, padding=p), nn.ReLU()]
        c = out
    return layers


def _flat_size(features: nn.Sequential, input_shape: tuple[int, ...], name: str) -> int:
    # A dry run gives the flattened width for any input size (digits 8x8, MNIST 28x28, ...) and rejects
    # inputs that the convolutions shrink to nothing.
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError as e:
        raise ValueError(f"model {name!r} cannot take inputs of shape {tuple(input_shape)}: "
                         f"{' '.join(str(e).split())}") from None
    if out.numel() == 0:
        raise ValueError(f"model {name!r} cannot take inputs of shape {tuple(input_shape)}")
    return out.numel()


def build_model(name: str, input_shape: tuple[int, ...], classes: int, *, seed: int | None = None) -> nn.Sequential:
    """A fresh ``nn.Sequential`` of architecture ``name`` (one of ``MODELS``) for per-sample ``input_shape``.

    - ``mlp-small``: Flatten, d-256-256-classes with ReLU.
    - ``cnn-tiny``: Conv 4 4x4/2, Conv 8 4x4/2, FC 32 (fast tests, DDP and resume checks).
    - ``cnn-small``: CROWN-IBP's small 2-layer CNN (``model_cnn_2layer`` width 4, linear 100 as in Gowal et al.'s
      DM-small): Conv 16 4x4/2 pad 1, Conv 32 4x4/2 pad 1, FC 100, FC classes. (Gowal et al.'s DM-small uses
      stride 1, no padding in the second conv; stride 2 halves the cost on a CPU.)
    - ``cnn-medium``: DM-medium-like, CROWN-IBP's ``model_cnn_4layer`` at half its width (width 4 instead of 8,
      linear 256 instead of 512): Conv 16 3x3/1 pad 1, Conv 16 4x4/2 pad 1, Conv 32 3x3/1 pad 1, Conv 32 4x4/2
      pad 1, FC 256, FC 256, FC classes. Halved because full CROWN through the 28x28 conv layers costs the
      engine memory quadratic in their width (width 8 does not fit in 24 GB; width 4 takes ~10 GB, ~17 s per
      point); IBP and CROWN-IBP bounds are cheap at any width.

    All layers are ones the engine's torch frontend and ``models.onnx_export`` support. The flattened width
    comes from a dry run, so any ``(C, H, W)`` with ``H, W >= 2`` works. ``seed`` fixes the initialisation
    without touching the global torch generator. Unknown names and unusable shapes raise ``ValueError``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    shape = tuple(int(d) for d in input_shape)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}")
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"bad input shape {tuple(input_shape)}")
    if name != "mlp-small" and len(shape) != 3:
        raise ValueError(f"model {name!r} needs a (channels, height, width) input shape, got {shape}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _build(name, shape, classes)


def _build(name: str, shape: tuple[int, ...], classes: int) -> nn.Sequential:
    if name == "mlp-small":
        return nn.Sequential(nn.Flatten(), *mlp([math.prod(shape), 256, 256, classes]))
    convs, hidden = {
        "cnn-tiny": ([(4, 4, 2, 1), (8, 4, 2, 1)], [32]),
        "cnn-small": ([(16, 4, 2, 1), (32, 4, 2, 1)], [100]),
        "cnn-medium": ([(16, 3, 1, 1), (16, 4, 2, 1), (32, 3, 1, 1), (32, 4, 2, 1)], [256, 256]),
    }[name]
    features = nn.Sequential(*_conv_stack(convs, shape[0]), nn.Flatten())
    flat = _flat_size(features, shape, name)
    return nn.Sequential(*features, *mlp([flat, *hidden, classes]))
