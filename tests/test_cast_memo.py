"""``Graph.with_dtype`` reuses its last cast while the source tensors are the same objects, unchanged: a bound after
any change of the weights (in place, replaced, a torch module's optimiser step) is the bound of the new weights,
never of a stale copy. Casts that autograd needs are never reused, and the cache is never pickled."""

from __future__ import annotations

import copy
import pickle

import torch
import torch.nn as nn

from verify import bound, from_torch


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _fresh_bounds(graph, lo, hi, method):
    """The same graph's bounds with no cast kept (a deep copy drops the cache)."""
    return bound(copy.deepcopy(graph), lo, hi, method=method)


def test_an_unchanged_graph_reuses_its_cast():
    graph = from_torch(_net(), (4,))
    assert graph.with_dtype(torch.float64) is graph.with_dtype(torch.float64)


def test_in_place_and_replaced_weights_are_seen():
    graph = from_torch(_net(), (4,))
    x = torch.rand(2, 4)
    lo, hi = x - 0.2, x + 0.2
    for method in ("ibp", "crown"):
        before = bound(graph, lo, hi, method=method)
        op = graph.nodes[2].op
        op.weight.mul_(1.5)  # in place: the version counter moves
        after = bound(graph, lo, hi, method=method)
        assert not torch.equal(before[0], after[0])
        want = _fresh_bounds(graph, lo, hi, method)
        assert torch.equal(after[0], want[0]) and torch.equal(after[1], want[1])
        op.weight = op.weight * 0.5  # a new tensor object
        after = bound(graph, lo, hi, method=method)
        want = _fresh_bounds(graph, lo, hi, method)
        assert torch.equal(after[0], want[0]) and torch.equal(after[1], want[1])


def test_a_torch_module_stepped_in_place_is_seen():
    net = _net()
    graph = from_torch(net, (4,))
    x = torch.rand(1, 4)
    first = bound(graph, x - 0.1, x + 0.1, method="crown")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05)
    second = bound(graph, x - 0.1, x + 0.1, method="crown")
    want = bound(from_torch(net, (4,)), x - 0.1, x + 0.1, method="crown")
    assert not torch.equal(first[0], second[0])
    assert torch.equal(second[0], want[0]) and torch.equal(second[1], want[1])


def test_casts_autograd_needs_are_not_kept_and_gradients_flow():
    net = _net()
    for p in net.parameters():
        p.requires_grad_(True)
    graph = from_torch(net, (4,))
    assert graph.with_dtype(torch.float64) is not graph.with_dtype(torch.float64)
    x = torch.rand(1, 4)
    for _ in range(2):  # a second backward through a kept cast would fail
        lower, _ = bound(graph, x - 0.1, x + 0.1, method="ibp")
        lower.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_cache_is_not_pickled():
    graph = from_torch(_net(), (4,))
    graph.with_dtype(torch.float64)
    assert graph._cast_memo is not None
    assert pickle.loads(pickle.dumps(graph))._cast_memo is None
    assert copy.deepcopy(graph)._cast_memo is None
