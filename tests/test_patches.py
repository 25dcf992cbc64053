"""Patch-form CROWN (``verify.bounds.patches``): the same bounds as the dense pass on convolutional networks, and
they contain the exact (float64) network value with zero tolerance; its transposed-convolution kernel choices
agree with torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import verify.bounds.crown as crown
from models.onnx_export import sequential_to_onnx
from tests.helpers import assert_box_contains, count_calls
from verify import bound, from_torch
from verify.frontends.onnx_frontend import from_onnx_model
from verify.ops.linear import conv_adjoint


def _conv_net(seed: int) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """2-3 convolutions with random kernel, stride, padding, dilation and groups; ReLU, LeakyReLU, sigmoid or tanh;
    an eval-mode BatchNorm; an average pool in the middle for some seeds (the pass then ends in dense form)."""
    g = torch.Generator().manual_seed(seed)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    torch.manual_seed(seed)
    c, side = ri(1, 3), ri(9, 13)
    acts = [nn.ReLU, nn.Sigmoid, nn.Tanh, lambda: nn.LeakyReLU(0.2)]
    layers: list[nn.Module] = []
    ch, size = c, side
    for i in range(ri(2, 3)):
        out = 2 * ri(1, 3)
        k, s, p = ri(2, 4), ri(1, 2), ri(0, 2)
        d = 2 if (seed + i) % 5 == 0 and size > 6 else 1
        groups = 2 if ch % 2 == 0 and (seed + i) % 3 == 0 else 1
        if (size + 2 * p - d * (k - 1) - 1) // s + 1 < 2:
            k, s, p, d = 2, 1, 1, 1
        layers.append(nn.Conv2d(ch, out, k, stride=s, padding=p, dilation=d, groups=groups))
        size = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if i == 1:
            bn = nn.BatchNorm2d(out)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 2)
            layers.append(bn)
        layers.append(acts[(seed + i) % 4]())
        if i == 0 and seed % 4 == 3 and size >= 4:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        ch = out
    layers += [nn.Flatten(), nn.Linear(ch * size * size, 3)]
    return nn.Sequential(*layers).eval(), (c, side, side)


@pytest.mark.parametrize("seed", range(16))
def test_patch_bounds_equal_dense_bounds_and_contain_the_exact_value(seed, monkeypatch):
    net, shape = _conv_net(seed)
    graph = from_torch(net, shape)
    torch.manual_seed(100 + seed)
    x = torch.rand(2, *shape)
    lo, hi = x - 0.1, x + 0.1
    for precision in ("float64", "model"):
        calls = count_calls(monkeypatch, crown, "patch_pass")
        lower, upper = bound(graph, lo, hi, method="crown", precision=precision)
        assert calls, "the patch pass was not used"
        monkeypatch.setattr(crown, "USE_PATCHES", False)
        d_lower, d_upper = bound(graph, lo, hi, method="crown", precision=precision)
        monkeypatch.setattr(crown, "USE_PATCHES", True)
        width = (d_upper - d_lower).detach().abs().max()
        # the same products and sums, perhaps summed in another order (float64 kappa): equal to round-off
        assert torch.allclose(lower, d_lower, rtol=0, atol=1e-5 * float(width) + 1e-30), f"{precision}"
        assert torch.allclose(upper, d_upper, rtol=0, atol=1e-5 * float(width) + 1e-30), f"{precision}"
        assert_box_contains(net, lo, hi, lower, upper, f"seed {seed} {precision}")


def test_onnx_feature_maps_with_a_batch_axis_take_the_patch_pass(monkeypatch):
    """ONNX graphs carry the model's batch axis of 1 in every shape; the windows must ignore it."""
    net, shape = _conv_net(1)
    net = nn.Sequential(*[m for m in net if not isinstance(m, nn.BatchNorm2d | nn.LeakyReLU)])
    graph = from_onnx_model(sequential_to_onnx(net, shape))
    assert graph.input_shape[0] == 1
    x = torch.rand(1, *graph.input_shape)
    calls = count_calls(monkeypatch, crown, "patch_pass")
    lower, upper = bound(graph, x - 0.05, x + 0.05, method="crown")
    assert calls
    monkeypatch.setattr(crown, "USE_PATCHES", False)
    d_lower, d_upper = bound(graph, x - 0.05, x + 0.05, method="crown")
    assert torch.allclose(lower, d_lower, atol=1e-9) and torch.allclose(upper, d_upper, atol=1e-9)
    assert_box_contains(net, (x - 0.05).reshape(1, *shape), (x + 0.05).reshape(1, *shape), lower, upper, "onnx")


def test_linear_functions_kept_for_sub_boxes_equal_the_dense_ones(monkeypatch):
    """Input-split search keeps each intermediate row's ``(Lambda_x, kappa)``: the patch pass hands over the same
    dense coefficients."""
    net, shape = _conv_net(2)
    graph = from_torch(net, shape).with_dtype(torch.float64)
    x = torch.rand(1, *shape, dtype=torch.float64)
    got, want = {}, {}
    crown.intermediate_bounds(graph, x - 0.05, x + 0.05, functions=got)
    monkeypatch.setattr(crown, "USE_PATCHES", False)
    crown.intermediate_bounds(graph, x - 0.05, x + 0.05, functions=want)
    assert got.keys() == want.keys() and got
    for name in got:
        for (r1, lam1, k1), (r2, lam2, k2) in zip(got[name], want[name], strict=True):
            assert torch.equal(r1, r2)
            assert torch.allclose(lam1, lam2, atol=1e-12)
            assert torch.allclose(k1, k2, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(12))
def test_conv_adjoint_equals_the_transposed_convolution(case, dtype):
    rng = np.random.default_rng(case)
    c_in = int(rng.integers(1, 6))
    c_out, k, s, p, d = int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 3)), \
        int(rng.integers(0, 3)), int(rng.integers(1, 3))
    h = int(rng.integers(d * (k - 1) + 1, 16))
    h_out = (h + 2 * p - d * (k - 1) - 1) // s + 1
    if h_out < 1:
        pytest.skip("empty output")
    w = torch.randn(c_out, c_in, k, k, dtype=dtype)
    lam = torch.randn(7, c_out, h_out, h_out, dtype=dtype)
    x = torch.randn(7, c_in, h, h, dtype=dtype, requires_grad=True)
    (want,) = torch.autograd.grad(F.conv2d(x, w, None, s, p, d), x, lam)  # the adjoint, by definition
    got = conv_adjoint(lam, w, (h, h), (s, s), (p, p), (d, d), 1)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=tol * float(want.abs().max() + 1))
