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
    """d-dimensional spectral convolution keeping ``modes[i]`` frequencies per axis (rfft on the last).

    The kept modes are computed by truncated DFTs, one small dense real matmul per axis, instead of full FFTs of
    every line followed by discarding all but 2m of the n outputs (the same transform up to rounding; several
    times faster on CPU, where e.g. 41 time frames is a prime FFT length). Complex values are carried as real
    (..., 2) pairs: autograd through real matmuls avoids the per-batch conjugate copies of complex bmm.
    """

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
        grid = x.shape[-self.d :]
        kept = [min(self.modes[a], grid[a] // 2) for a in range(self.d - 1)]
        m_last = min(self.modes[-1], grid[-1] // 2 + 1)
        dev, dt = x.device, x.dtype
        # rfft along the last axis (modes 0..m_last-1), then the full DFT axes (modes 0..m-1 and n-m..n-1).
        z = (x @ _dft_matrix("rfft", grid[-1], m_last, dt, dev)).unflatten(-1, (m_last, 2))
        for a, m in enumerate(kept):
            z = _along(z, 2 + a, _dft_matrix("fft", grid[a], m, dt, dev))
        z = torch.einsum("bi...s,io...st->bo...t", z, self._block_weight(kept, m_last, dt))
        for a, m in enumerate(kept):
            z = _along(z, 2 + a, _dft_matrix("ifft", grid[a], m, dt, dev))
        return z.flatten(-2) @ _dft_matrix("irfft", grid[-1], m_last, dt, dev)

    def _block_weight(self, kept: list[int], m_last: int, dtype: torch.dtype) -> Tensor:
        """(c_in, c_out, 2 m_1, ..., m_last, 2, 2): the corner weights joined in the truncated mode order, as real
        2 x 2 blocks [[wr, wi], [-wi, wr]] so that (zr, zi) @ block = (zr wr - zi wi, zr wi + zi wr)."""
        w = self.weight.to(dtype)
        crop = (slice(None), slice(None), *[slice(0, m) for m in kept], slice(0, m_last))
        blocks = {corner: w[c][crop] for c, corner in enumerate(self.corners)}

        def join(prefix: tuple[int, ...]) -> Tensor:  # bit 0 = the lowest modes, bit 1 = the highest (negative)
            if len(prefix) == self.d - 1:
                return blocks[prefix]
            return torch.cat([join((*prefix, 0)), join((*prefix, 1))], dim=2 + len(prefix))

        full = join(())
        wr, wi = full[..., 0], full[..., 1]
        return torch.stack([torch.stack([wr, wi], -1), torch.stack([-wi, wr], -1)], -2)


def _along(z: Tensor, dim: int, mat: Tensor) -> Tensor:
    """Apply a complex matrix, given as its real (2n, 2p) block form, to axis ``dim`` of z (..., 2)."""
    moved = z.movedim(dim, -2)  # (..., n, 2)
    out = moved.flatten(-2) @ mat
    return out.unflatten(-1, (-1, 2)).movedim(-2, dim)


_DFT_CACHE: dict[tuple, Tensor] = {}


def _dft_matrix(kind: str, n: int, m: int, dtype: torch.dtype, device) -> Tensor:
    """Real matrices of the truncated transforms on n points (complex values as interleaved (re, im) pairs).

    rfft (n, 2m): modes 0..m-1 of a real signal.  irfft (2m, n): the inverse real FFT from modes 0..m-1 (the
    others zero); mode k counts twice (for its conjugate -k) except k = 0 and k = n/2, whose imaginary parts it
    ignores, exactly as irfft.  fft (2n, 4m) / ifft (4m, 2n, with 1/n): complex DFT restricted to the modes
    0..m-1, n-m..n-1, in real block form.
    """
    key = (kind, n, m, dtype, device)
    if key in _DFT_CACHE:
        return _DFT_CACHE[key]
    f64 = torch.float64
    # Built on the host in float64, then cast and moved once per (kind, size, dtype, device).
    cols = torch.arange(n, device="cpu")[None, :]
    if kind in ("rfft", "irfft"):
        k = torch.arange(m, device="cpu")
        ph = 2.0 * math.pi * torch.remainder(k[:, None] * cols, n).to(f64) / n  # (m, n)
        if kind == "rfft":
            mat = torch.stack([torch.cos(ph).T, -torch.sin(ph).T], dim=-1).reshape(n, 2 * m)
        else:
            c = torch.where((k == 0) | (2 * k == n), 1.0, 2.0).to(f64)[:, None] / n
            mat = torch.stack([c * torch.cos(ph), -c * torch.sin(ph)], dim=1).reshape(2 * m, n)
    else:
        k = torch.cat([torch.arange(m, device="cpu"), torch.arange(n - m, n, device="cpu")])
        ph = 2.0 * math.pi * torch.remainder(k[:, None] * cols, n).to(f64) / n  # (2m, n)
        if kind == "fft":  # A[t, k] = exp(-i ph): z_out = z_in @ A
            ar, ai = torch.cos(ph).T, -torch.sin(ph).T
        else:  # A[k, t] = exp(+i ph) / n
            ar, ai = torch.cos(ph) / n, torch.sin(ph) / n
        # (zr, zi) @ [[ar, ai], [-ai, ar]] per entry, rows (t, re/im) and columns (k, re/im) interleaved.
        blk = torch.stack([torch.stack([ar, ai], -1), torch.stack([-ai, ar], -1)], -2)  # (rows, cols, 2, 2)
        mat = blk.permute(0, 2, 1, 3).reshape(2 * ar.shape[0], 2 * ar.shape[1])
    _DFT_CACHE[key] = mat.to(dtype=dtype, device=device)
    return _DFT_CACHE[key]


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
