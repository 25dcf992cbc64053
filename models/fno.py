"""Fourier neural operators in 1D, 2D and 3D (Li et al., ICLR 2021).

A spectral layer is v -> IFFT(W_k . FFT(v)_k) on the lowest ``modes`` frequencies plus a pointwise skip:
    v_{l+1} = act( K_l v_l + W_l v_l ),   (K v)^_k = R_k v^_k for |k_d| < modes_d.
Inputs and outputs are channel-first, (B, C, *grid).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn


class SpectralConv(nn.Module):
    """d-dimensional spectral convolution keeping ``modes[i]`` frequencies per axis (rfft on the last)."""

    def __init__(self, c_in: int, c_out: int, modes: tuple[int, ...]):
        super().__init__()
        self.modes = tuple(modes)
        self.d = len(modes)
        # One weight block per sign combination of the full-FFT axes (the rfft axis has only k >= 0).
        self.corners = list(itertools.product((0, 1), repeat=self.d - 1))
        scale = 1.0 / (c_in * c_out)
        # Stored as real (..., 2) so optimisers, DDP and dtype casts treat them like any real parameter.
        self.weight = nn.Parameter(scale * torch.rand(len(self.corners), c_in, c_out, *self.modes, 2))

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(-self.d, 0))
        xf = torch.fft.rfftn(x, dim=dims)
        out = torch.zeros(x.shape[0], self.weight.shape[2], *xf.shape[2:], dtype=xf.dtype, device=x.device)
        w = torch.view_as_complex(self.weight.to(x.dtype))
        for c, corner in enumerate(self.corners):
            sl = [slice(None), slice(None)]
            for axis, sign in enumerate(corner):
                n, m = x.shape[2 + axis], min(self.modes[axis], x.shape[2 + axis] // 2)
                sl.append(slice(0, m) if sign == 0 else slice(n - m, n))
            m_last = min(self.modes[-1], xf.shape[-1])
            sl.append(slice(0, m_last))
            wc = w[c][(slice(None), slice(None), *[slice(0, s.stop - s.start) for s in sl[2:]])]
            out[tuple(sl)] = torch.einsum("bi...,io...->bo...", xf[tuple(sl)], wc)
        return torch.fft.irfftn(out, s=x.shape[-self.d :], dim=dims)


class FNO(nn.Module):
    """Lift -> L x (spectral conv + 1x1 conv, GELU) -> projection; works for d = 1, 2, 3.

    ``final_activation`` applies GELU to the output, as the paper's hard-constraint basis (N channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: tuple[int, ...],
        width: int = 32,
        layers: int = 4,
        fc: int = 128,
        final_activation: bool = False,
    ):
        super().__init__()
        d = len(modes)
        if d not in (1, 2, 3):
            raise ValueError(f"FNO supports 1, 2 or 3 dimensions, got modes={modes}")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d]
        self.lift = conv(in_channels, width, 1)
        self.spectral = nn.ModuleList(SpectralConv(width, width, modes) for _ in range(layers))
        self.skip = nn.ModuleList(conv(width, width, 1) for _ in range(layers))
        self.proj1 = conv(width, fc, 1)
        self.proj2 = conv(fc, out_channels, 1)
        self.final_activation = final_activation

    def forward(self, x: Tensor) -> Tensor:
        v = self.lift(x)
        for i, (sc, sk) in enumerate(zip(self.spectral, self.skip, strict=True)):
            v = sc(v) + sk(v)
            if i < len(self.spectral) - 1:
                v = nn.functional.gelu(v)
        out = self.proj2(nn.functional.gelu(self.proj1(v)))
        return nn.functional.gelu(out) if self.final_activation else out


def FNO1d(in_channels: int, out_channels: int, modes: int = 16, **kw) -> FNO:  # noqa: N802
    """1D FNO over (B, C, n)."""
    return FNO(in_channels, out_channels, (modes,), **kw)


def FNO2d(in_channels: int, out_channels: int, modes: tuple[int, int] = (8, 8), **kw) -> FNO:  # noqa: N802
    """2D FNO over (B, C, n1, n2), e.g. (t, x) for diffusion-sorption."""
    return FNO(in_channels, out_channels, modes, **kw)


def FNO3d(in_channels: int, out_channels: int, modes: tuple[int, int, int] = (8, 8, 8), **kw) -> FNO:  # noqa: N802
    """3D FNO over (B, C, n1, n2, n3), e.g. (t, x, y) for Navier-Stokes."""
    return FNO(in_channels, out_channels, modes, **kw)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (a complex weight counts twice)."""
    return sum(math.prod(p.shape) for p in model.parameters() if p.requires_grad)
