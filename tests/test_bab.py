"""Branch and bound against the exact MIP: on random small ReLU networks and thresholds just above and
just below the true minimum of ``c f(x)`` over a box, input-split and ReLU-split BaB must answer
``sat`` (with a real counterexample) and ``unsat`` respectively, never the other way round."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.zoo import mlp
from verify import from_torch
from verify.bab.common import Deadline
from verify.bab.input_split import input_split_bab
from verify.bab.relu_split import relu_split_bab
from verify.mip import mip_bound
from verify.spec import RowSpec
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


def _checker(graph, rows):
    def check(cands):
        with torch.no_grad():
            y = graph(cands).reshape(cands.shape[0], -1)
        bad = rows.violated(cands, y)
        return cands[bad.nonzero()[0, 0]].double().numpy() if bad.any() else None
    return check


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["input", "relu"])
def test_bab_agrees_with_exact_mip(seed, kind):
    sizes = [3, 10, 10, 2] if kind == "input" else [12, 12, 12, 3]
    graph, lo, hi, c, vmin = _problem(seed, sizes)
    bab = input_split_bab if kind == "input" else relu_split_bab
    gap = 0.02 * (1 + abs(vmin))
    for threshold, expected in ((vmin + gap, "sat"), (vmin - gap, "unsat")):
        rows = _rows(c, threshold, sizes[0], sizes[-1], lo, hi)
        res = bab(graph, rows, lo, hi, Deadline(60), _checker(graph, rows))
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
    res = input_split_bab(graph, rows, lo, hi, Deadline(0.5), _checker(graph, rows))
    assert res.status in ("timeout", "unsat")
    assert time.perf_counter() - t0 < 1.5
