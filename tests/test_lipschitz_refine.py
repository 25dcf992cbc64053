"""MIP refinement of the forward bounds behind the Jacobian (``verify.lipschitz.refine``): sound against sampled
pre-activations, within CROWN's bounds, tighter Jacobian bounds, and a BaB below them that still meets the exact
LipMIP value."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_converged_to_lipmip, random_relu_mlp
from verify import mip
from verify.lipschitz.api import _prepare
from verify.lipschitz.bab import Objective, bab, split_search
from verify.lipschitz.bounds import forward_bounds, jacobian_bounds
from verify.lipschitz.jacobian import JacobianGraph
from verify.lipschitz.lipmip import lipmip
from verify.lipschitz.refine import mip_refined_bounds, unstable_count
from verify.ops.activation import Relu

F64 = torch.float64
pytestmark = pytest.mark.skipif(not mip.installed_backends(), reason="no MIP solver installed")


def _box(net, d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.rand(d, generator=g, dtype=F64) - 1
    return _prepare(net, x0 - eps, x0 + eps, (d,))


def _pre_activations(net, x):
    """Inputs of every ReLU of a Sequential at the points ``x``."""
    out = []
    for m in net:
        if isinstance(m, torch.nn.ReLU):
            out.append(x)
        x = m(x)
    return out


def _sampled_max(net, lo, hi, n=4000, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = lo.reshape(-1) + (hi - lo).reshape(-1) * torch.rand(n, lo.numel(), generator=g, dtype=F64)
    x.requires_grad_(True)
    net(x).sum().backward()
    return float(x.grad.abs().sum(1).max())


@pytest.mark.parametrize("seed", range(4))
def test_refined_bounds_hold_at_sampled_points_and_tighten_crown(seed):
    d = 12
    net = random_relu_mlp(d, [20, 16, 12], seed)
    graph, lo, hi = _box(net, d, 0.3, seed)
    crown = forward_bounds(graph, lo, hi, "crown")
    res = mip_refined_bounds(graph, lo, hi, seconds=30)
    assert res.stopped == "done" and res.solves > 0
    relu_inputs = [n.inputs[0] for n in graph.nodes if isinstance(n.op, Relu)]
    g = torch.Generator().manual_seed(seed)
    corners = torch.where(torch.rand(3000, d, generator=g, dtype=F64) < 0.5, lo.reshape(-1), hi.reshape(-1))
    inside = lo.reshape(-1) + (hi - lo).reshape(-1) * torch.rand(3000, d, generator=g, dtype=F64)
    with torch.no_grad():
        zs = _pre_activations(net, torch.cat([corners, inside]))
    for name, z in zip(relu_inputs, zs, strict=True):
        rlo, rhi = (t.reshape(-1) for t in res.bounds[name])
        clo, chi = (t.reshape(-1) for t in crown[name])
        assert bool((rlo >= clo).all() and (rhi <= chi).all())  # within CROWN's
        assert bool((z >= rlo).all() and (z <= rhi).all())  # and still sound
    assert res.unstable_after <= res.unstable_before == unstable_count(graph, crown)
    jg = JacobianGraph(graph)
    before, _ = jacobian_bounds(jg, crown, [0])
    after, _ = jacobian_bounds(jg, res.bounds, [0])
    assert float(after.max()) <= float(before.max())
    assert float(after.max()) >= _sampled_max(net, lo, hi, seed=seed)


def test_refinement_makes_neurons_stable_on_a_deep_net():
    net = random_relu_mlp(23, [48, 43], 13)
    graph, lo, hi = _box(net, 23, 0.145, 1)
    res = mip_refined_bounds(graph, lo, hi, seconds=30)
    assert res.unstable_after < res.unstable_before
    jg = JacobianGraph(graph)
    before, _ = jacobian_bounds(jg, forward_bounds(graph, lo, hi, "crown"), [0])
    after, _ = jacobian_bounds(jg, res.bounds, [0])
    assert float(after.max()) < 0.95 * float(before.max())


def test_an_expired_deadline_returns_crown_bounds():
    net = random_relu_mlp(12, [16, 16], 0)
    graph, lo, hi = _box(net, 12, 0.3, 0)
    res = mip_refined_bounds(graph, lo, hi, seconds=0.0)
    crown = forward_bounds(graph, lo, hi, "crown")
    assert res.solves == 0 and res.unstable_after == res.unstable_before
    for k, (a, b) in crown.items():
        assert torch.equal(res.bounds[k][0], a) and torch.equal(res.bounds[k][1], b)


@pytest.mark.parametrize("seed", range(2))
def test_a_search_below_refined_bounds_converges_to_the_exact_value(seed):
    d = 12
    net = random_relu_mlp(d, [14, 10], 20 + seed)
    graph, lo, hi = _box(net, d, 0.3, seed)
    ref = mip_refined_bounds(graph, lo, hi, seconds=30)
    res = bab(graph, lo, hi, [0], Objective("l1"), timeout=60, reference=ref.bounds)
    exact = lipmip(graph, lo, hi, [0], timeout=120)
    assert res.status == "converged"
    assert_converged_to_lipmip(float(res.upper[0]), exact, net, _sampled_max(net, lo, hi))


def test_split_search_refines_only_deep_nets_without_input_splits(monkeypatch):
    from verify.lipschitz import refine as refine_module

    calls = []
    real = refine_module.mip_refined_bounds

    def spy(*a, **k):
        calls.append(a[0].input_numel)
        return real(*a, **k)

    monkeypatch.setattr(refine_module, "mip_refined_bounds", spy)
    for d, hidden in ((12, [10, 8]), (12, [10]), (4, [10, 8])):
        net = random_relu_mlp(d, hidden, 0)
        graph, lo, hi = _box(net, d, 0.2, 0)
        split_search(graph, lo, hi, [0], timeout=1.0)
    assert calls == [12]  # deep and more than MAX_INPUTS inputs; not one hidden layer, not 4 inputs

