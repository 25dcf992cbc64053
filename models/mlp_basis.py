"""Pointwise MLP basis network: the same MLP maps each grid point's input channels to N basis values.

    b_n(x) = [W_L s(... s(W_1 [x; a(x)] + c_1) ...) + c_L]_n,   x = coordinates, a(x) = PDE parameters at x
(a coordinate network, Chalapathi et al., ICLR 2024, App. C). Channel-first (B, C, *grid) like the FNO.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPBasis(nn.Module):
    """``depth`` hidden layers of ``width`` tanh units applied pointwise over the grid."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        depth: int = 3,
        final_activation: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.Tanh()]
            c = width
        layers.append(nn.Linear(c, out_channels))
        self.net = nn.Sequential(*layers)
        self.final_activation = final_activation

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x.movedim(1, -1)).movedim(-1, 1)
        return nn.functional.gelu(out) if self.final_activation else out
