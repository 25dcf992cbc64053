"""alpha-CROWN with optimised intermediate slopes (``optimize_intermediate=True``): every intermediate pass's
slopes must move, including passes whose first bounds came from another route (the patch form behind
convolutions), and the tightened bounds stay sound."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tests.helpers import extreme_points
from verify import bound, from_torch
from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import _GradientOf, intermediate_bounds
from verify.ops.activation import Relu


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 8, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_gradient_of_keeps_the_value_and_passes_the_sources_gradient():
    value = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).nextafter(torch.tensor(9.0, dtype=torch.float64))
    source = torch.tensor([0.5, 2.5, -1.0], dtype=torch.float64, requires_grad=True)
    out = _GradientOf.apply(value, source)
    assert torch.equal(out, value)  # bit for bit: the value is a sound bound, nothing may round it
    (grad,) = torch.autograd.grad((out * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)).sum(), source)
    assert grad.tolist() == [1.0, -2.0, 3.0]


@pytest.mark.parametrize("seed", range(3))
def test_every_intermediate_pass_is_optimised_behind_convolutions(seed):
    """The second convolution's CROWN bounds come from the patch pass; the alpha passes recompute them densely,
    a rounding apart. Intersected with the tighter one, a pass got no gradient at all and its slopes never moved:
    the conv layer kept its CROWN bounds through every iteration (issue 15's CNN). Now it tightens."""
    net = _cnn(seed)
    graph = from_torch(net, (1, 12, 12)).with_dtype(torch.float64)
    x = torch.rand(1, *graph.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lo, hi = x - 0.08, x + 0.08
    crown = intermediate_bounds(graph, lo, hi, "crown")
    lam = torch.eye(4, dtype=torch.float64).reshape(1, 4, *graph.output_shape)
    lam = torch.cat([lam, -lam], dim=1)
    _, tuned = alpha_crown_lower(graph, lo, hi, lam, iterations=10, optimize_intermediate=True, bounds=crown,
                                 return_bounds=True)
    conv2 = [n.inputs[0] for n in graph.nodes if isinstance(n.op, Relu)][1]
    c_lo, c_hi = crown[conv2]
    t_lo, t_hi = tuned[conv2]
    unstable = (c_lo < 0) & (c_hi > 0)
    assert int(unstable.sum()) >= 5
    assert bool((t_lo >= c_lo).all() and (t_hi <= c_hi).all())  # intersected: never looser
    assert float((t_hi - t_lo)[unstable].sum()) < float((c_hi - c_lo)[unstable].sum()) * (1 - 1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_optimised_intermediate_slopes_are_tighter_and_sound(seed):
    net = _cnn(seed)
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    lo, hi = x - 0.08, x + 0.08
    crown = bound(net, lo, hi, method="crown")
    fixed = bound(net, lo, hi, method="alpha-crown", iterations=10)
    tuned = bound(net, lo, hi, method="alpha-crown", iterations=10, optimize_intermediate=True)
    width = [float((u - low).sum()) for low, u in (crown, fixed, tuned)]
    assert width[2] < width[1] <= width[0]
    pts = torch.cat([lo.reshape(1, -1) + torch.rand(512, lo.numel()) * (hi - lo).reshape(1, -1),
                     extreme_points(net, lo[0], hi[0], 4)])
    with torch.no_grad():
        y = net.double()(pts.double().reshape(-1, 1, 12, 12))
    low, up = tuned
    assert bool((y >= low.double()).all() and (y <= up.double()).all())


@pytest.mark.parametrize("seed", range(2))
def test_window_slopes_equal_dense_slopes(monkeypatch, seed):
    """A row's slopes outside its receptive field get no gradient, so slopes kept on the windows (patch passes) are
    the dense per-row slopes by another name: the same bounds after the same Adam steps, up to round-off."""
    import verify.bounds.crown as crown

    net = _cnn(seed)
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    lo, hi = x - 0.08, x + 0.08
    with_slopes, real = [], crown.patch_pass

    def counted(*args):
        with_slopes.append(args[6] is not None)
        return real(*args)

    monkeypatch.setattr(crown, "patch_pass", counted)
    windows = bound(net, lo, hi, method="alpha-crown", iterations=8, optimize_intermediate=True)
    assert sum(with_slopes) >= 8  # the conv layer's alpha passes took the patch form, every iteration
    monkeypatch.setattr(crown, "USE_PATCHES", False)
    dense = bound(net, lo, hi, method="alpha-crown", iterations=8, optimize_intermediate=True)
    for a, b in zip(windows, dense, strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-6)


def test_other_activations_behind_convolutions_keep_dense_slopes():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Sigmoid(), nn.Conv2d(3, 4, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, 10, 10)
    lo, hi = x - 0.2, x + 0.2
    low, up = bound(net, lo, hi, method="alpha-crown", iterations=5, optimize_intermediate=True)
    pts = torch.cat([lo.reshape(1, -1) + torch.rand(512, 100) * (hi - lo).reshape(1, -1),
                     extreme_points(net, lo[0], hi[0], 3)])
    with torch.no_grad():
        y = copy.deepcopy(net).double()(pts.double().reshape(-1, 1, 10, 10))
    assert bool((y >= low.double()).all() and (y <= up.double()).all())
