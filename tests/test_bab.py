"""Branch and bound against the exact MIP: on random small ReLU networks and thresholds just above and
just below the true minimum of ``c f(x)`` over a box, input-split and ReLU-split BaB must answer
``sat`` (with a real counterexample) and ``unsat`` respectively, never the other way round."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from models.zoo import mlp
from tests.helpers import graph_checker
from verify import from_torch
from verify.bab.common import Deadline
from verify.bab.exact_leaf import ExactLeaves
from verify.bab.input_split import input_split_bab
from verify.bab.relu_split import relu_split_bab
from verify.bounds.crown import intermediate_bounds
from verify.mip import mip_bound
from verify.spec import RowSpec, combined_margins
from verify.vnnlib import Disjunct, InputBox, Property


def _problem(seed: int, sizes: list[int]):
    torch.manual_seed(seed)
    net = mlp(sizes).eval()
    for p in net.parameters():
        p.data *= 1.5
    graph = from_torch(net, (sizes[0],))
    x0 = torch.rand(sizes[0])
    eps = 0.3 if sizes[0] <= 4 else 0.15
    lo, hi = x0 - eps, x0 + eps
    c = np.random.default_rng(seed).normal(size=sizes[-1])
    exact = mip_bound(graph, lo.numpy()[None], hi.numpy()[None], c, timeout=60)
    assert exact.status == "optimal"
    return graph, lo, hi, c, exact.value


def _rows(c: np.ndarray, threshold: float, n_in: int, n_out: int, lo, hi) -> RowSpec:
    # Counterexample set: c.f(x) <= threshold.
    prop = Property(InputBox(lo.double().numpy(), hi.double().numpy()),
                    [Disjunct(c.reshape(1, -1), np.array([threshold]))])
    return RowSpec.from_property(prop, n_in, n_out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["input", "input-no-mip", "relu"])
def test_bab_agrees_with_exact_mip(seed, kind):
    """``input`` finishes small boxes with exact MIP leaves; ``input-no-mip`` bisects only."""
    sizes = [3, 10, 10, 2] if kind.startswith("input") else [12, 12, 12, 3]
    graph, lo, hi, c, vmin = _problem(seed, sizes)
    bab = {"input": functools.partial(input_split_bab, leaf_patience=0.0), "relu": relu_split_bab,
           "input-no-mip": functools.partial(input_split_bab, exact_leaves=0)}[kind]
    gap = 0.02 * (1 + abs(vmin))
    for threshold, expected in ((vmin + gap, "sat"), (vmin - gap, "unsat")):
        rows = _rows(c, threshold, sizes[0], sizes[-1], lo, hi)
        res = bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows))
        assert res.status == expected, (kind, seed, threshold, vmin, res)
        if expected == "sat":
            y = graph(torch.tensor(res.x, dtype=torch.float32)[None]).reshape(-1).detach().numpy()
            assert float(c @ y) <= threshold + 1e-5
            assert np.all(res.x >= lo.numpy() - 1e-6) and np.all(res.x <= hi.numpy() + 1e-6)


def test_input_split_respects_the_deadline():
    graph, lo, hi, c, vmin = _problem(0, [3, 10, 10, 2])
    rows = _rows(c, vmin - 1e-7, 3, 2, lo, hi)  # barely unsat: needs a very deep tree
    import time
    t0 = time.perf_counter()
    res = input_split_bab(graph, rows, lo, hi, Deadline(0.5), graph_checker(graph, rows))
    assert res.status in ("timeout", "unsat")
    assert time.perf_counter() - t0 < 1.5


def test_row_subset_keeps_the_chosen_disjuncts_in_order():
    prop = Property(InputBox(np.zeros(2), np.ones(2)),
                    [Disjunct(np.eye(3)[:1], np.array([1.0])), Disjunct(np.eye(3)[1:], np.array([2.0, 3.0]))])
    rows = RowSpec.from_property(prop, 2, 3)
    sub = rows.subset([1, 0])
    assert sub.n_groups == 2
    assert sub.group.tolist() == [0, 0, 1]
    assert sub.b.tolist() == [2.0, 3.0, 1.0]
    assert torch.equal(sub.C, rows.C[[1, 2, 0]])


def test_combined_margins_prove_a_conjunction_no_single_row_refutes():
    # r1 = x + 0.1 <= 0 and r2 = -x + 0.1 <= 0 cannot both hold, yet each row alone reaches -0.9 on [-1, 1].
    lin = torch.nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin.bias.fill_(0.1)
    graph = from_torch(torch.nn.Sequential(lin), (1,))
    prop = Property(InputBox(np.array([-1.0]), np.array([1.0])), [Disjunct(np.eye(2), np.zeros(2))])
    rows = RowSpec.from_property(prop, 1, 2)
    lo, hi = torch.full((1, *graph.input_shape), -1.0), torch.full((1, *graph.input_shape), 1.0)
    with torch.no_grad():
        bounds = intermediate_bounds(graph, lo, hi, "crown")
        lb, lam_x = rows.lower_bounds(graph, bounds)
    assert float(rows.group_max(lb)) < 0
    # The exact optimum is 0.1 (mu = 1/2, 1/2); the supergradient ascent gets close and never above it.
    assert 0.09 < float(combined_margins(rows, lb, lam_x, lo, hi)) <= 0.1 + 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_combined_margins_never_exceed_sampled_row_maxima(seed):
    """Soundness: for every point of a box, max_j r_j(x) >= the combined margin of its disjunct."""
    torch.manual_seed(seed)
    net = mlp([3, 16, 16, 5]).eval()
    graph = from_torch(net, (3,))
    rng = np.random.default_rng(seed)
    disjuncts = [Disjunct(rng.normal(size=(3, 5)), rng.normal(size=3) * 0.1),
                 Disjunct(rng.normal(size=(2, 5)), rng.normal(size=2) * 0.1)]
    rows = RowSpec.from_property(Property(InputBox(np.zeros(3), np.ones(3)), disjuncts), 3, 5)
    centre = torch.rand(24, 3)
    width = torch.rand(24, 1) * 0.5
    lo, hi = centre - width, centre + width
    bounds = intermediate_bounds(graph, lo.reshape(24, *graph.input_shape), hi.reshape(24, *graph.input_shape),
                                 "crown")
    lb, lam_x = rows.lower_bounds(graph, bounds)
    margins = combined_margins(rows, lb, lam_x, lo, hi)
    assert bool((margins >= rows.group_max(lb) - 1e-6).all())
    x = lo.unsqueeze(1) + torch.rand(24, 4000, 3) * (hi - lo).unsqueeze(1)
    with torch.no_grad():
        y = graph(x.reshape(-1, *graph.input_shape)).reshape(-1, 5)
    sampled = rows.group_max(rows.values(x.reshape(-1, 3), y)).reshape(24, 4000, -1).min(1).values
    assert bool((margins <= sampled + 1e-5).all()), (margins - sampled).max()


@pytest.mark.parametrize("seed", range(3))
def test_exact_leaf_decides_boxes_like_the_mip(seed):
    graph, lo, hi, c, vmin = _problem(seed, [3, 10, 10, 2])
    for threshold, expected in ((vmin + 0.02, "sat"), (vmin - 0.02, "unsat")):
        rows = _rows(c, threshold, 3, 2, lo, hi)
        status, x = ExactLeaves(graph, rows, graph_checker(graph, rows)).decide(lo, hi, [0], 30.0)
        assert status == expected
        assert (x is not None) == (expected == "sat")


@pytest.mark.parametrize("seed", range(3))
def test_relu_bab_searches_each_open_disjunct_from_optimised_root_bounds(seed):
    """Two disjuncts: one refuted at the root (skipped), one near its exact optimum (searched)."""
    from verify.bounds.alpha import alpha_crown_lower

    graph, lo, hi, c, vmin = _problem(seed, [12, 12, 12, 3])
    far = np.random.default_rng(seed + 7).normal(size=3)
    far_min = mip_bound(graph, lo.numpy()[None], hi.numpy()[None], far, timeout=60).value
    gap = 0.02 * (1 + abs(vmin))
    shape = graph.input_shape
    for threshold, expected in ((vmin + gap, "sat"), (vmin - gap, "unsat")):
        prop = Property(InputBox(lo.double().numpy(), hi.double().numpy()),
                        [Disjunct(far.reshape(1, -1), np.array([far_min - 10.0])),
                         Disjunct(c.reshape(1, -1), np.array([threshold]))])
        rows = RowSpec.from_property(prop, 12, 3)
        lam = rows.output_lam(graph)
        root_lower, root_bounds = alpha_crown_lower(graph, lo.reshape(1, *shape), hi.reshape(1, *shape), lam,
                                                    iterations=10, optimize_intermediate=True, return_bounds=True)
        root_lower = rows.finish(root_lower.detach(), graph, root_bounds)
        assert float(root_lower[0, 0]) > 0  # the far disjunct is refuted without search
        res = relu_split_bab(graph, rows, lo, hi, Deadline(60), graph_checker(graph, rows), root_bounds=root_bounds,
                             root_lower=root_lower)
        assert res.status == expected, (seed, threshold, vmin, res)


def test_relu_bab_stops_at_its_memory_cap(monkeypatch):
    import verify.bab.relu_split as relu_split

    graph, lo, hi, c, vmin = _problem(0, [12, 12, 12, 3])
    rows = _rows(c, vmin - 1e-4, 12, 3, lo, hi)  # barely unsat: many open domains
    monkeypatch.setattr(relu_split, "MAX_POOL_BYTES", 1.0)
    res = relu_split_bab(graph, rows, lo, hi, Deadline(30), graph_checker(graph, rows))
    assert res.status == "timeout" and res.stats["reason"] == "memory limit"
    assert res.domains < 100  # stopped after the first batches, not at the deadline
