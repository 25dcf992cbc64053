"""Forward linear bounds and the input-split re-use of ancestor CROWN bounds must contain every sampled
value of every node (randomised soundness, like the main harness)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import random_network
from verify import from_torch
from verify.bab.input_split import _concretize_functions, _dense_functions
from verify.bounds.crown import intermediate_bounds
from verify.bounds.forward import forward_bounds


def _samples_inside(graph, bounds, lo, hi, n=400):
    b = lo.shape[0]
    xs = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(b, n, *lo.shape[1:])
    with torch.no_grad():
        vals = graph.forward_all(xs.reshape(b * n, *lo.shape[1:]))
    for name, (l, u) in bounds.items():
        v = vals[name].reshape(b, n, -1)
        tol = 1e-5 * (1 + v.abs())
        assert (v >= l.reshape(b, 1, -1) - tol).all(), f"{name}: below forward lower bound"
        assert (v <= u.reshape(b, 1, -1) + tol).all(), f"{name}: above forward upper bound"


@pytest.mark.parametrize("seed", range(0, 200, 4))
def test_forward_bounds_contain_samples(seed):
    net, shape, _ = random_network(seed)
    graph = from_torch(net, shape)
    eps = (1e-3, 0.05, 0.5)[seed % 3]
    x0 = torch.rand(2, *graph.input_shape) * 2 - 1
    bounds = forward_bounds(graph, x0 - eps, x0 + eps)
    _samples_inside(graph, bounds, x0 - eps, x0 + eps)


@pytest.mark.parametrize("seed", range(0, 200, 8))
def test_ancestor_crown_bounds_hold_on_sub_boxes(seed):
    net, shape, _ = random_network(seed)
    graph = from_torch(net, shape)
    n = graph.input_numel
    x0 = torch.rand(3, n) * 2 - 1
    lo, hi = x0 - 0.3, x0 + 0.3
    raw: dict = {}
    with torch.no_grad():
        intermediate_bounds(graph, lo.reshape(3, *graph.input_shape), hi.reshape(3, *graph.input_shape), "crown",
                            functions=raw)
    if not raw:
        pytest.skip("no relaxed node behind another relaxation in this network")
    funcs = _dense_functions(graph, raw, 3)
    sub_lo = lo + 0.6 * torch.rand(3, n) * 0.5
    sub_hi = sub_lo + (hi - sub_lo) * torch.rand(3, n)
    inherited = _concretize_functions(graph, funcs, sub_lo, sub_hi)
    with torch.no_grad():
        bounds = forward_bounds(graph, sub_lo.reshape(3, *graph.input_shape), sub_hi.reshape(3, *graph.input_shape),
                                reference=inherited)
    _samples_inside(graph, bounds, sub_lo.reshape(3, *graph.input_shape), sub_hi.reshape(3, *graph.input_shape))
