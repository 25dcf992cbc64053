"""Lipschitz BaB with input-box bisection (``input_split_above``) and ``split_search``: sound against sampled and
exact values, and converging to the LipMIP value on deep nets with few inputs."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import assert_converged_to_lipmip, random_relu_mlp
from verify.lipschitz.api import _prepare
from verify.lipschitz.bab import Objective, bab, split_search
from verify.lipschitz.lipmip import lipmip

F64 = torch.float64


def _box(net, d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.rand(d, generator=g, dtype=F64) - 1
    return _prepare(net, x0 - eps, x0 + eps, (d,))


def _sampled_max(net, lo, hi, n=4000, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = (lo.reshape(-1) + (hi - lo).reshape(-1) * torch.rand(n, lo.numel(), generator=g, dtype=F64))
    x.requires_grad_(True)
    net(x).sum().backward()
    return float(x.grad.abs().sum(1).max())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("above", [2, 8])
def test_input_and_relu_splits_converge_to_the_exact_value(seed, above):
    d = 3
    net = random_relu_mlp(d, [12, 10, 8], seed)
    graph, lo, hi = _box(net, d, 0.4, seed)
    res = bab(graph, lo, hi, [0], Objective("l1"), timeout=60, input_split_above=above)
    exact = lipmip(graph, lo, hi, [0], timeout=120)
    assert res.status == "converged"
    assert_converged_to_lipmip(float(res.upper[0]), exact, net, _sampled_max(net, lo, hi))


@pytest.mark.parametrize("seed", range(3))
def test_a_stopped_search_stays_above_every_sampled_gradient(seed):
    d = 6
    net = random_relu_mlp(d, [24, 24, 16], 10 + seed)
    graph, lo, hi = _box(net, d, 0.5, seed)
    res = split_search(graph, lo, hi, [0], timeout=1.0)
    assert float(res.upper[0]) >= _sampled_max(net, lo, hi, seed=seed)
    if math.isfinite(float(res.lower[0])):
        assert float(res.lower[0]) <= float(res.upper[0])


def test_split_search_bisects_only_deep_nets_on_few_inputs(monkeypatch):
    from verify.lipschitz import bab as bab_module

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["input_split_above"])
        return bab(*args, **kwargs)

    monkeypatch.setattr(bab_module, "bab", spy)
    for d, hidden in ((4, [8, 8]), (4, [8]), (16, [8, 8])):
        graph, lo, hi = _box(random_relu_mlp(d, hidden, 0), d, 0.1, 0)
        bab_module.split_search(graph, lo, hi, [0], timeout=0.5)
    assert seen == [bab_module.INPUT_SPLIT_ABOVE, None, None]
