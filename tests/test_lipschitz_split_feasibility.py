"""First-layer Farkas pruning of Lipschitz BaB domains (verify.lipschitz.split_feasibility).

Soundness: a pattern that some input of the box realises is never pruned (checked on the patterns of sampled
points and their sub-patterns). Strength: most jointly infeasible split sets (by an exact LP) are pruned. And the
BaB on one-hidden-layer networks reaches the exact LipMIP value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import linprog

from tests.helpers import assert_converged_to_lipmip, random_relu_mlp
from verify.lipschitz.api import _prepare
from verify.lipschitz.bab import Objective, _certified_infeasible, _Evaluator, bab
from verify.lipschitz.jacobian import JacobianGraph, seed_tensor
from verify.lipschitz.lipmip import lipmip
from verify.lipschitz.split_feasibility import FirstLayerSplits

F64 = torch.float64


def _setup(net, d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.rand(d, generator=g, dtype=F64) - 1
    graph, lo, hi = _prepare(net, x0 - eps, x0 + eps, (d,))
    ev = _Evaluator(graph, JacobianGraph(graph), lo, hi, seed_tensor(graph, [0], F64), Objective("l1"))
    return graph, lo, hi, ev


def _lp_feasible(a: np.ndarray, b: np.ndarray, s: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    on = s != 0
    res = linprog(np.zeros(a.shape[1]), A_ub=-(s[on, None] * a[on]), b_ub=s[on] * b[on],
                  bounds=list(zip(lo, hi, strict=True)), method="highs")
    return res.status == 0


def _pruned(ev, lo, hi, split):
    m = split.shape[0]
    splits = {nm: torch.zeros(m, *ev.graph.shape_of(nm), dtype=torch.int8) for nm in ev.names}
    splits[ev.first.name] = split.reshape(m, *ev.graph.shape_of(ev.first.name))
    seeds = torch.zeros(m, dtype=torch.long)
    _, feasible, *_ = ev(seeds, splits, None)
    return ~feasible


@pytest.mark.parametrize("seed", range(4))
def test_patterns_of_real_points_are_never_pruned(seed):
    d, h = 6, 24
    net = random_relu_mlp(d, [h] * 2, seed)
    graph, lo, hi, ev = _setup(net, d, 0.4, seed)
    assert ev.first is not None
    g = torch.Generator().manual_seed(100 + seed)
    lo1, hi1 = lo.reshape(-1), hi.reshape(-1)
    x = lo1 + (hi1 - lo1) * torch.rand(200, d, generator=g, dtype=F64)
    z = x @ ev.first.a.T + ev.first.b
    sign = torch.where(z >= 0, 1, -1).to(torch.int8)
    keep = torch.rand(sign.shape, generator=g) < 0.7  # sub-patterns too: fewer splits, still realised
    split = torch.where(keep, sign, torch.zeros_like(sign))
    assert not _pruned(ev, lo, hi, split).any()


@pytest.mark.parametrize("seed", range(3))
def test_most_jointly_infeasible_split_sets_are_pruned_and_no_feasible_one(seed):
    d, h = 5, 20
    net = random_relu_mlp(d, [h], seed)
    graph, lo, hi, ev = _setup(net, d, 0.5, seed)
    g = torch.Generator().manual_seed(7 + seed)
    split = torch.randint(-1, 2, (300, h), generator=g).to(torch.int8)
    pruned = _pruned(ev, lo, hi, split)
    a, b = ev.first.a.numpy(), ev.first.b.numpy()
    feas = np.array([_lp_feasible(a, b, s.numpy().astype(float), lo.reshape(-1).numpy(), hi.reshape(-1).numpy())
                     for s in split])
    assert not (pruned.numpy() & feas).any()
    infeasible = ~feas
    assert infeasible.sum() >= 30  # the test draws enough infeasible sets to say something
    assert pruned.numpy()[infeasible].mean() >= 0.8


def test_certificate_rejects_a_multiplier_that_proves_nothing():
    d, h = 4, 8
    net = random_relu_mlp(d, [h], 0)
    graph, lo, hi, ev = _setup(net, d, 0.3, 0)
    x = ((lo + hi) / 2).reshape(1, -1)
    z = (x @ ev.first.a.T + ev.first.b)[0]
    s = torch.where(z >= 0, 1.0, -1.0).to(F64)
    coef = {ev.first.name: s.reshape(1, *graph.shape_of(ev.first.name))}  # the centre realises these signs
    dom = {graph.input_name: (lo, hi)}
    assert not bool(_certified_infeasible(graph, coef, dom)[0])


def test_first_layer_map_is_the_affine_prefix_or_none():
    lo, hi = -torch.ones(3, dtype=F64), torch.ones(3, dtype=F64)
    graph, *_ = _prepare(nn.Sequential(nn.ReLU(), nn.Linear(3, 1)).double(), lo, hi, (3,))
    fl = FirstLayerSplits.of(graph)
    assert fl is not None and torch.equal(fl.a, torch.eye(3, dtype=F64)) and not fl.b.any()
    graph, *_ = _prepare(nn.Sequential(nn.Tanh(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)).double(), lo, hi, (3,))
    assert FirstLayerSplits.of(graph) is None


@pytest.mark.parametrize("seed", [1, 2])
def test_bab_on_one_hidden_layer_reaches_the_lipmip_value(seed):
    d, h = 10, 24
    net = random_relu_mlp(d, [h], seed)
    graph, lo, hi, _ = _setup(net, d, 0.45, seed)
    res = bab(graph, lo, hi, [0], Objective("l1"), timeout=60)
    exact = lipmip(graph.with_dtype(F64), lo, hi, [0], timeout=120)
    assert res.status == "converged"
    assert_converged_to_lipmip(float(res.upper[0]), exact, net, 0.0)



def test_bab_reports_the_domains_it_pruned():
    d, h = 10, 24
    graph, lo, hi, _ = _setup(random_relu_mlp(d, [h], 1), d, 0.45, 1)
    res = bab(graph, lo, hi, [0], Objective("l1"), timeout=60)
    assert res.extra["farkas_pruned"] > 0
