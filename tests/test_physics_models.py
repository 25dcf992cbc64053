"""FNO (1D/2D/3D spectral convolutions) and the pointwise MLP basis network."""

import pytest
import torch

from models.fno import FNO, FNO1d, FNO2d, FNO3d, SpectralConv
from models.mlp_basis import MLPBasis


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: FNO1d(3, 5, modes=4, width=8, layers=2), (2, 3, 16)),
        (lambda: FNO2d(3, 5, modes=(4, 4), width=8, layers=2), (2, 3, 12, 16)),
        (lambda: FNO3d(3, 5, modes=(3, 3, 3), width=8, layers=2), (2, 3, 8, 8, 8)),
    ],
)
def test_fno_shapes_gradients_and_resolution_independence(make, shape):
    torch.manual_seed(0)
    net = make()
    x = torch.randn(*shape)
    y = net(x)
    assert y.shape == (shape[0], 5, *shape[2:])
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # The same weights apply to a finer grid (a neural operator).
    finer = torch.randn(shape[0], shape[1], *[2 * s for s in shape[2:]])
    assert net(finer).shape == (shape[0], 5, *[2 * s for s in shape[2:]])


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spectral_conv_is_shift_equivariant_and_low_pass(d):
    torch.manual_seed(1)
    conv = SpectralConv(2, 3, (3,) * d).double()
    n = 12
    x = torch.randn(1, 2, *([n] * d), dtype=torch.float64)
    dims = tuple(range(2, 2 + d))
    shifted = torch.roll(x, shifts=(2,) * d, dims=dims)
    assert torch.allclose(conv(shifted), torch.roll(conv(x), shifts=(2,) * d, dims=dims), atol=1e-12)
    # A pure high-frequency input (wavenumber 5 > modes) is annihilated.
    grid = torch.arange(n, dtype=torch.float64)
    wave = torch.cos(2 * torch.pi * 5 * grid / n).reshape(*([1] * (d - 1)), n).expand(*([n] * d))
    hf = wave.expand(1, 2, *([n] * d)).clone()
    assert conv(hf).abs().max() < 1e-12


def test_fno_final_activation_and_dtype():
    net = FNO(3, 4, (4, 4), width=8, layers=1, final_activation=True).double()
    y = net(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.min() >= -0.17  # GELU's minimum is about -0.17
    with pytest.raises(ValueError, match="1, 2 or 3"):
        FNO(3, 4, (4, 4, 4, 4))


def test_mlp_basis_is_pointwise():
    torch.manual_seed(0)
    net = MLPBasis(3, 6, width=16, depth=2)
    x = torch.randn(2, 3, 5, 7)
    y = net(x)
    assert y.shape == (2, 6, 5, 7)
    perm = torch.randperm(7)
    assert torch.allclose(net(x[..., perm]), y[..., perm], atol=1e-6)
    assert torch.allclose(net(x[:, :, 2:3, 4:5]), y[:, :, 2:3, 4:5], atol=1e-6)
