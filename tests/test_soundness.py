"""Randomised soundness harness: for random networks of every supported op and random boxes, sampled
points (uniform, corners, PGD towards each bound) must satisfy lower <= f(x) <= upper with zero tolerance
(f evaluated in float64, i.e. the real value to ~1e-15), for IBP, CROWN and alpha-CROWN. Also: CROWN no
looser than IBP, alpha-CROWN no looser than CROWN, eps=0 tight."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import box_corners, extreme_points, random_network
from verify import bound, from_torch

N_NETWORKS = 200
EPS_CHOICES = (1e-3, 0.02, 0.1, 0.5, 2.0)


def _check_points(net, shape, lo, hi, lower, upper, label):
    k = lower.shape[-1]
    pts = torch.cat([
        lo.reshape(1, -1) + torch.rand(512, lo.numel()) * (hi - lo).reshape(1, -1),
        box_corners(lo, hi), extreme_points(net, lo, hi, k)])
    with torch.no_grad():
        y = copy.deepcopy(net).double()(pts.reshape(-1, *shape).double()).reshape(pts.shape[0], -1)
    lower, upper = lower.double(), upper.double()
    below = y < lower
    above = y > upper
    assert not below.any(), f"{label}: f(x) below the lower bound by {(lower - y)[below].max():.3g}"
    assert not above.any(), f"{label}: f(x) above the upper bound by {(y - upper)[above].max():.3g}"


@pytest.mark.parametrize("seed", range(N_NETWORKS))
def test_random_network_bounds_contain_samples(seed):
    net, shape, desc = random_network(seed)
    graph = from_torch(net, shape)
    g = torch.Generator().manual_seed(1000 + seed)
    eps = EPS_CHOICES[int(torch.randint(0, len(EPS_CHOICES), (1,), generator=g))]
    x0 = torch.rand(1, *shape, generator=g) * 2 - 1
    lo, hi = x0 - eps, x0 + eps
    widths = {}
    with torch.no_grad():
        assert torch.allclose(graph(x0).reshape(1, -1), net(x0).reshape(1, -1), atol=1e-5)
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = bound(graph, lo, hi, method=method)
        lower, upper = lower.detach()[0], upper.detach()[0]
        assert (lower <= upper + 1e-6).all()
        _check_points(net, shape, lo[0], hi[0], lower, upper, f"seed {seed} {desc} eps={eps} {method}")
        widths[method] = (lower, upper)
    # Tightness ordering (final bounds are intersected with IBP; alpha starts from CROWN).
    (il, iu), (cl, cu), (al, au) = widths["ibp"], widths["crown"], widths["alpha-crown"]
    assert (cl >= il - 1e-6).all() and (cu <= iu + 1e-6).all()
    assert (al >= cl - 1e-6).all() and (au <= cu + 1e-6).all()


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_zero_radius_box_is_exact(seed):
    net, shape, _ = random_network(seed)
    x0 = torch.rand(2, *shape) * 2 - 1
    with torch.no_grad():
        y = net(x0).reshape(2, -1)
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = bound(net, x0, x0.clone(), method=method)
        assert torch.allclose(lower.detach(), y, atol=1e-6, rtol=1e-6), method
        assert torch.allclose(upper.detach(), y, atol=1e-6, rtol=1e-6), method


def test_spec_matrix_bounds_contain_margins():
    net, shape, _ = random_network(8)
    x0 = torch.rand(1, *shape)
    k = net(x0).numel()
    C = torch.randn(5, k)
    lower, upper = bound(net, x0 - 0.1, x0 + 0.1, C=C, method="alpha-crown")
    pts = x0 - 0.1 + 0.2 * torch.rand(2000, *shape)
    with torch.no_grad():
        m = copy.deepcopy(net).double()(pts.double()).reshape(2000, -1) @ C.T.double()
    assert (m >= lower.detach().double()).all() and (m <= upper.detach().double()).all()


def test_batch_of_boxes_equals_boxes_one_by_one():
    net, shape, _ = random_network(12)
    x0 = torch.rand(3, *shape)
    lower, upper = bound(net, x0 - 0.05, x0 + 0.05, method="crown")
    for i in range(3):
        li, ui = bound(net, x0[i:i + 1] - 0.05, x0[i:i + 1] + 0.05, method="crown")
        assert torch.allclose(li, lower[i:i + 1], atol=1e-5) and torch.allclose(ui, upper[i:i + 1], atol=1e-5)


def test_alpha_crown_tightens_relu_mlp_on_average():
    torch.manual_seed(0)
    from models.zoo import mlp
    net = mlp([20, 32, 32, 5]).eval()
    x0 = torch.rand(4, 20)
    cl, cu = bound(net, x0 - 0.1, x0 + 0.1, method="crown")
    al, au = bound(net, x0 - 0.1, x0 + 0.1, method="alpha-crown")
    assert ((au - al).mean() < (cu - cl).mean() - 1e-4)


def test_optimized_intermediate_bounds_are_sound_and_no_looser():
    torch.manual_seed(3)
    from models.zoo import mlp
    net = mlp([6, 16, 16, 16, 4]).eval()
    x0 = torch.rand(1, 6)
    al, au = bound(net, x0 - 0.2, x0 + 0.2, method="alpha-crown")
    ol, ou = bound(net, x0 - 0.2, x0 + 0.2, method="alpha-crown", optimize_intermediate=True)
    assert (ol >= al - 1e-4).all() or (ou - ol).mean() <= (au - al).mean()
    _check_points(net, (6,), (x0 - 0.2)[0], (x0 + 0.2)[0], ol.detach()[0], ou.detach()[0], "opt-intermediate")
