"""Information-bottleneck regressors: a stochastic encoder (mean and log-variance heads) and a decoder.

``t = mu(x) + exp(logvar(x) / 2) * xi`` with ``xi ~ N(0, I)`` while training (the reparameterisation of VIB, Alemi et
al., ICLR 2017, and of CS-IB, Yu et al., ICLR 2024); ``forward`` is the deterministic path ``x -> mu(x) -> decoder``
used at evaluation, and :meth:`IBRegressor.deterministic` is that path as an ``nn.Sequential`` sharing the
parameters, the network the engine bounds and ``model.onnx`` holds. The MSE baseline trains the same architecture
on ``mu`` alone, so every method is compared on the same function class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.zoo import mlp

# name -> (encoder hidden widths, latent width, decoder hidden widths)
REGRESSION_MODELS: dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]] = {
    # the reference recipe's template (artemyk/nonlinearIB) at CPU size: d-128-128, heads 32, decoder 32-128-1
    "ib-mlp": ((128, 128), 32, (128,)),
    "ib-mlp-small": ((64,), 16, (32,)),
}


class IBRegressor(nn.Module):
    """``encoder`` (Flatten, MLP with ReLU after every layer), heads ``mean`` / ``logvar`` to the code ``t``,
    ``decoder`` (MLP from t to one output)."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], latent: int, decoder_hidden: Sequence[int]):
        super().__init__()
        d = math.prod(int(s) for s in input_shape)
        enc = mlp([d, *hidden]) if hidden else nn.Sequential()
        self.encoder = nn.Sequential(nn.Flatten(), *enc, *( [nn.ReLU()] if hidden else []))
        width = hidden[-1] if hidden else d
        self.mean = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)
        self.decoder = mlp([latent, *decoder_hidden, 1])
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent = latent

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of ``q(t | x)``, each ``[B, latent]``."""
        h = self.encoder(x)
        return self.mean(h), self.logvar(h)

    def sample(self, mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The reparameterised code ``mu + exp(logvar / 2) * xi`` (``xi`` from ``generator`` when given)."""
        xi = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        return mu + torch.exp(0.5 * logvar) * xi

    def forward(self, x: Tensor) -> Tensor:
        """The deterministic prediction ``decoder(mu(x))``, ``[B, 1]``."""
        return self.decoder(self.encode(x)[0])

    def deterministic(self) -> nn.Sequential:
        """``x -> mu(x) -> decoder`` as one ``nn.Sequential`` of this module's layers (shared parameters)."""
        return nn.Sequential(*self.encoder, self.mean, *self.decoder)


def build_regressor(name: str, input_shape: Sequence[int], *, seed: int | None = None) -> IBRegressor:
    """A fresh regressor of architecture ``name`` (one of ``REGRESSION_MODELS``) for per-sample ``input_shape``;
    ``seed`` fixes the initialisation without touching the global generator."""
    if name not in REGRESSION_MODELS:
        raise ValueError(f"unknown regression model {name!r} (choose from {', '.join(REGRESSION_MODELS)})")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"bad input shape {tuple(input_shape)}")
    hidden, latent, dec = REGRESSION_MODELS[name]
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return IBRegressor(shape, hidden, latent, dec)
