"""Small reference architectures used by tests, benchmarks and examples."""

from __future__ import annotations

from collections.abc import Sequence

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
