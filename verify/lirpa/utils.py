"""``auto_LiRPA.utils`` names that example scripts import."""

from __future__ import annotations

from torch import nn


class Flatten(nn.Flatten):
    """``x.view(x.size(0), -1)`` as a module (auto_LiRPA's ``utils.Flatten``)."""

    def __init__(self) -> None:
        super().__init__(start_dim=1)
