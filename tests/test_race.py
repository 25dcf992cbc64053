"""The race of split search against exact MIPs over refined bounds (verify.bab.race), and the two MIP features
it rests on: encodings over given (refined) intermediate bounds, and default solver tolerances with a margin.
Every verdict is checked against the exact MIP minimum of each disjunct, on both sides of it."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
import torch

from tests.helpers import graph_checker, scaled_mlp_box
from verify.bab.common import Deadline
from verify.bab.race import race_disjuncts
from verify.bounds.alpha import alpha_crown_lower
from verify.mip import encode, mip_bound, mip_verify
from verify.mip_refine import refine_bounds
from verify.spec import RowSpec
from verify.vnnlib import Disjunct, InputBox, Property

pytest.importorskip("gurobipy")


def _net(seed: int, sizes=(8, 20, 20, 20, 4)):
    return scaled_mlp_box(seed, sizes)


def _minima(graph, lo, hi, cs: np.ndarray) -> np.ndarray:
    """Exact minimum of each ``c . f(x)`` over the box."""
    out = []
    for c in cs:
        r = mip_bound(graph, lo.numpy()[None], hi.numpy()[None], c, timeout=60)
        assert r.status == "optimal"
        out.append(r.value)
    return np.array(out)


def _rows(graph, lo, hi, cs: np.ndarray, thresholds: np.ndarray) -> RowSpec:
    """One disjunct ``c_k . y <= t_k`` per row (a violation needs any one of them)."""
    prop = Property(InputBox(lo.double().numpy(), hi.double().numpy()),
                    [Disjunct(c.reshape(1, -1), np.array([t])) for c, t in zip(cs, thresholds, strict=True)])
    return RowSpec.from_property(prop, graph.input_numel, graph.output_numel)


def _refined(graph, rows, lo, hi):
    shape = graph.input_shape
    lower, bounds = alpha_crown_lower(graph, lo.reshape(1, *shape), hi.reshape(1, *shape), rows.output_lam(graph),
                                      iterations=20, optimize_intermediate=True, return_bounds=True)
    return refine_bounds(graph, rows, lo, hi, bounds, Deadline(60), neuron_work=4.0, max_neurons=1000,
                         lower=rows.finish(lower.detach(), graph, bounds))


def _violated_disjuncts(graph, rows, x: np.ndarray) -> list[int]:
    xt = torch.as_tensor(x, dtype=torch.float32).reshape(1, -1)
    with torch.no_grad():
        r = rows.values(xt, graph(xt).reshape(1, -1))[0]
    return [d for d in range(rows.n_groups) if bool((r[rows.group == d] <= 1e-5).all())]


@pytest.mark.parametrize("seed", range(3))
def test_given_bounds_shrink_the_encoding_but_not_its_minimum(seed):
    graph, lo, hi = _net(seed)
    cs = np.random.default_rng(seed).normal(size=(1, 4))
    exact = _minima(graph, lo, hi, cs)[0]
    ref = _refined(graph, _rows(graph, lo, hi, cs, [exact + 1.0]), lo, hi)
    plain = encode(graph, lo.numpy(), hi.numpy())
    tight = encode(graph, lo.numpy(), hi.numpy(), given=ref.bounds)
    assert tight.model.n_binaries < plain.model.n_binaries
    gap = 0.01 * (1 + abs(exact))
    for enc in (plain, tight):
        for margin in (0.0, 1e-5):  # strict tolerances, and the solvers' defaults with a margin
            kw = dict(encoding=enc, crown_check=False, solver_margin=margin, timeout=60)
            assert mip_verify(graph, None, None, cs, [exact - gap], **kw).status == "unsat"
            v = mip_verify(graph, None, None, cs, [exact + gap], **kw)
            assert v.status == "sat" and float(cs[0] @ v.y) <= exact + gap + 1e-6


@pytest.mark.parametrize("search", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_race_refutes_every_disjunct_below_its_minimum(seed, search):
    graph, lo, hi = _net(seed)
    cs = np.random.default_rng(seed).normal(size=(3, 4))
    exact = _minima(graph, lo, hi, cs)
    rows = _rows(graph, lo, hi, cs, exact - 0.01 * (1 + np.abs(exact)))
    ref = _refined(graph, rows, lo, hi)
    res = race_disjuncts(graph, rows, lo, hi, ref.bounds, ref.lower, Deadline(60), graph_checker(graph, rows),
                         workers=1, search=search)
    open_ = int((rows.group_max(ref.lower)[0] <= 0).sum())
    assert res.status == "unsat", res
    if not search:
        assert res.stats["by_mip"] == open_
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("search", [True, False])
def test_race_finds_the_one_disjunct_above_its_minimum(search):
    graph, lo, hi = _net(3)
    cs = np.random.default_rng(3).normal(size=(3, 4))
    exact = _minima(graph, lo, hi, cs)
    thresholds = exact - 0.01 * (1 + np.abs(exact))
    thresholds[1] = exact[1] + 0.01 * (1 + abs(exact[1]))
    rows = _rows(graph, lo, hi, cs, thresholds)
    ref = _refined(graph, rows, lo, hi)
    res = race_disjuncts(graph, rows, lo, hi, ref.bounds, ref.lower, Deadline(60), graph_checker(graph, rows),
                         workers=2, search=search)
    assert res.status == "sat", res
    assert _violated_disjuncts(graph, rows, res.x) == [1]
    assert not multiprocessing.active_children()


def test_race_stops_at_the_deadline_and_leaves_no_process():
    graph, lo, hi = _net(4, sizes=(8, 40, 40, 40, 4))
    cs = np.random.default_rng(4).normal(size=(2, 4))
    exact = _minima(graph, lo, hi, cs)
    rows = _rows(graph, lo, hi, cs, exact - 1e-4)  # barely true: neither method settles it at once
    ref = _refined(graph, rows, lo, hi)
    t0 = time.perf_counter()
    res = race_disjuncts(graph, rows, lo, hi, ref.bounds, ref.lower, Deadline(0.5), graph_checker(graph, rows))
    assert res.status in ("unsat", "timeout"), res
    assert time.perf_counter() - t0 < 2.0
    assert not multiprocessing.active_children()
