"""Soundness of the exact MIP paths in real arithmetic (issue 12): a solver's dual bound counts only after the
tolerance margin of ``verify.mip.tolerance`` (the tolerances set on the solver times the model's spread), and the
encoding pays its error against the exact network (float64 rounding of its maps, the frontend's weight errors).

References are exact: the network's value at a MIP witness is recomputed in rational arithmetic, so "a witness
exists" needs no tolerance. Random small ReLU nets at two scales: ordinary (inputs ~1) and large (inputs ~1e5,
pre-activations ~1e6, float64) where a margin relative to the bound alone does not cover the solver's
tolerances (the former ``mip_bound`` returned bounds above the exact minimum on such nets, 1e-11 relative)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn

import verify
from verify.bab.common import Deadline
from verify.bab.exact_leaf import ExactLeaves
from verify.bounds.alpha import alpha_crown_lower
from verify.mip import (
    FAST,
    STRICT,
    _Expr,
    _float64_copy,
    _linear,
    _lp_tighten,
    _Model,
    _relu,
    _Solution,
    _widened,
    encode,
    installed_backends,
    mip_bound,
    mip_verify,
)
from verify.mip.tolerance import LP, Tolerances
from verify.mip_refine import refine_bounds
from verify.ops.activation import Relu
from verify.spec import RowSpec
from verify.vnnlib import Disjunct, InputBox, Property

pytest.importorskip("highspy")

BACKENDS = [b for b in ("highs", "gurobi") if b in installed_backends()]


def _net(seed: int, large: bool, sizes=(2, 10, 10, 1)) -> tuple[nn.Sequential, np.ndarray, np.ndarray]:
    """A float64 ReLU MLP and a box. ``large``: inputs ~1e5 (box half-width 2e4), first-layer weights ~10 and
    biases ~1e6, so pre-activations are ~1e6 and about half the ReLUs are unstable (nn4sys-like scales)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b), nn.ReLU()] if i < len(sizes) - 2 else [nn.Linear(a, b)]
    net = nn.Sequential(*layers).double().eval()
    lin = [m for m in net if isinstance(m, nn.Linear)]
    x0 = (1e5 + 5e4 * torch.rand(sizes[0], generator=g, dtype=torch.float64)) if large else \
        torch.rand(sizes[0], generator=g, dtype=torch.float64)
    with torch.no_grad():
        for k, m in enumerate(lin):
            w = torch.randn(m.weight.shape, generator=g, dtype=torch.float64)
            if large:
                m.weight.copy_(10 * w if k == 0 else w / 3)
                bias = 1e5 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64)
                m.bias.copy_(bias - m.weight @ x0 if k == 0 else bias)
            else:
                m.weight.copy_(1.4 * w / math.sqrt(m.weight.shape[1]))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    half = 2e4 if large else 0.5
    return net, (x0 - half).numpy(), (x0 + half).numpy()


def _exact(net: nn.Sequential, x: np.ndarray, layer: int | None = None) -> list[Fraction]:
    """The float64 net's exact real value at ``x`` (rational arithmetic): the output, or the pre-activations
    of linear layer ``layer``."""
    h = [Fraction(float(v)) for v in np.asarray(x, dtype=np.float64).reshape(-1)]
    lin = [m for m in net if isinstance(m, nn.Linear)]
    for k, m in enumerate(lin):
        w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
        h = [sum((Fraction(float(w[o, i])) * h[i] for i in range(len(h))), Fraction(float(b[o])))
             for o in range(w.shape[0])]
        if k == layer:
            return h
        if k < len(lin) - 1:
            h = [max(v, Fraction(0)) for v in h]
    return h


def _above(v: Fraction, rel: float) -> float:
    """The smallest float64 ``b`` with ``b >= v + rel (1 + |v|)`` (exactly): a threshold with a witness."""
    target = v + Fraction(rel) * (1 + abs(v))
    b = float(target)
    return b if Fraction(b) >= target else float(np.nextafter(b, math.inf))


# ---------------------------------------------------------------------------------------------- the rule


def test_margin_rule_scales_with_the_spread_and_keeps_the_floor():
    for tol in (STRICT, FAST, LP):
        for bound in (0.0, -3.0, 1e6):
            for spread in (0.0, 10.0, 1e7):
                m = tol.margin(bound, spread)
                assert m >= tol.floor * (1 + abs(bound))
                assert m >= (tol.feasibility + tol.optimality) * (1 + abs(bound) + spread)
                assert tol.lower(bound, spread) < bound - m + 1e-9 * abs(bound)
            # a stopped solve's bound is always enough to prove the sign
            for spread in (0.0, 1.0, 1e3, 1e7):
                assert tol.lower(tol.stop_at(spread), spread) > 0
        assert tol.lower(math.inf, 5.0) == math.inf and tol.lower(-math.inf, 5.0) == -math.inf
    # on a large model the scale, not the bound, sets the margin
    assert STRICT.margin(1.0, 1e7) > 1e4 * STRICT.margin(1.0, 0.0) and FAST.margin(0.0, 1e7) > 1e3 * FAST.floor


def test_the_assumed_tolerances_are_the_ones_set_on_the_solvers():
    from verify.mip import _gurobi_model, _gurobi_tolerances, _new_highs, _solve
    from verify.mip.solvers import _highs_tolerances

    model = _Model()
    v = model.add_vars(np.zeros(2), np.ones(2), integer=True)
    model.add_rows([(v, np.ones((1, 2)))], np.ones(1), np.full(1, np.inf))
    for tol in (STRICT, FAST, LP):
        h = _new_highs()
        _highs_tolerances(h, tol)

        def option(name: str, h=h) -> float:
            out = h.getOptionValue(name)
            return out[1] if isinstance(out, tuple) else out  # (status, value) in recent highspy

        assert option("primal_feasibility_tolerance") == tol.feasibility
        assert option("dual_feasibility_tolerance") == tol.optimality
        assert option("mip_feasibility_tolerance") <= tol.feasibility
        if tol.gap is not None:
            assert option("mip_rel_gap") == option("mip_abs_gap") == tol.gap
        h.clear()
        for backend in BACKENDS:
            sol = _solve(model, np.array([1.0, 2.0]), backend, 10, tol=tol)
            assert sol.tol == tol and sol.status == "optimal" and abs(sol.bound - 1.0) < 1e-6
    if "gurobi" in BACKENDS:
        m, _ = _gurobi_model(model)
        for tol in (STRICT, FAST):
            _gurobi_tolerances(m.Params, tol)
            assert m.Params.FeasibilityTol == tol.feasibility and m.Params.OptimalityTol == tol.optimality
            assert m.Params.IntFeasTol == tol.integrality
        m.dispose()


# ---------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_bounds_and_verdicts_at_the_exact_minimum(seed, large, backend):
    """``mip_bound``'s bound never exceeds the exact value at its own witness; thresholds at or above that value
    (a witness exists) are never ``unsat`` in either tolerance mode; a clear margin below it is refuted."""
    net, lo, hi = _net(seed, large)
    g = verify.from_torch(net, (lo.size,))
    c = np.array([1.0])
    r = mip_bound(g, lo, hi, c, backend=backend)
    assert r.status == "optimal" and r.x is not None
    v = _exact(net, r.x)[0]
    assert Fraction(r.bound) <= v, (float(v), r.bound)
    assert r.bound <= r.value
    enc = encode(g, lo, hi, tighten=True)
    for rel in (0.0, 1e-12, 1e-9, 1e-7):
        b = np.array([_above(v, rel)])
        for margin in (0.0, 1e-5):
            for crown in (False, True) if rel == 0 else (False,):
                res = mip_verify(g, None, None, c[None], b, backend=backend, crown_check=crown, solver_margin=margin,
                                 encoding=enc)
                assert res.status != "unsat", (rel, margin, crown, res)
                assert Fraction(res.bound) <= v - Fraction(float(b[0]))
    clear = np.array([float(v) - 1e-3 * (1 + abs(float(v)))])
    for margin in (0.0, 1e-5):
        res = mip_verify(g, None, None, c[None], clear, backend=backend, crown_check=False, solver_margin=margin,
                         encoding=enc)
        assert res.status == "unsat" and 0 < res.margin, res


@pytest.mark.parametrize("large", [False, True])
def test_exact_leaves_near_the_boundary(large):
    """Input-split leaves decided by MIP: a threshold with an exact witness is never ``unsat``, one a clear margin
    below the minimum is (the rows go through ``RowSpec``, as in the pipeline)."""
    net, lo, hi = _net(7, large)
    g = verify.from_torch(net, (lo.size,))
    r = mip_bound(g, lo, hi, np.array([1.0]))
    v = _exact(net, r.x)[0]

    def rows(b: float) -> RowSpec:
        prop = Property(InputBox(lo, hi), [Disjunct(np.ones((1, 1)), np.array([b]))])
        return RowSpec.from_property(prop, lo.size, 1)

    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    for rel in (0.0, 1e-12, 1e-9):
        leaves = ExactLeaves(g, rows(_above(v, rel)), lambda x: None)  # witnesses are never confirmed here
        assert leaves.decide(lo_t, hi_t, [0], 10.0)[0] == "open"
    leaves = ExactLeaves(g, rows(float(v) - 1e-3 * (1 + abs(float(v)))), lambda x: None)
    assert leaves.decide(lo_t, hi_t, [0], 10.0)[0] == "unsat"


def test_weight_errors_of_the_frontend_are_paid():
    """The engine bounds the exact network, which may differ from the stored weights by ``weight_err`` /
    ``bias_err`` (e.g. folded constants). Stored output bias = exact bias + 0.01: the stored net's minimum is 0.01
    above the exact one; with ``bias_err`` declared, the MIP must not refute thresholds the exact net reaches."""
    net, lo, hi = _net(3, False)
    g_exact = verify.from_torch(net, (lo.size,))
    r = mip_bound(g_exact, lo, hi, np.array([1.0]))
    v = _exact(net, r.x)[0]  # reached by the exact network
    stored = verify.from_torch(net, (lo.size,))
    last = [n for n in stored.nodes if getattr(n.op, "linear", False)][-1].op
    first = [n for n in stored.nodes if getattr(n.op, "linear", False)][0].op
    last.bias = last.bias + 0.01
    plain = mip_bound(stored, lo, hi, np.array([1.0]))
    assert plain.bound > v + Fraction(0.009)  # without the declared error the MIP would refute v + 0.005
    last.bias_err = torch.full_like(last.bias, 0.01)
    first.weight_err = torch.full_like(first.weight, 1e-12)  # some weight error as well (covered, tiny)
    assert Fraction(mip_bound(stored, lo, hi, np.array([1.0])).bound) <= v
    b = np.array([float(v) + 0.005])
    for margin in (0.0, 1e-5):
        res = mip_verify(stored, lo, hi, np.ones((1, 1)), b, crown_check=True, solver_margin=margin)
        assert res.status != "unsat", res
    assert mip_verify(stored, lo, hi, np.ones((1, 1)), np.array([float(v) - 0.05]), crown_check=False
                      ).status == "unsat"


def test_a_solver_infeasibility_claim_is_no_proof(monkeypatch):
    import verify.mip.api as api

    net, lo, hi = _net(1, False)
    g = verify.from_torch(net, (lo.size,))
    fake = _Solution("infeasible", math.inf, math.inf, None, "fake", 0.0, "fake status", STRICT)
    monkeypatch.setattr(api, "_solve", lambda *a, **k: fake)
    v = mip_verify(g, lo, hi, np.ones((1, 1)), np.array([-1e9]), crown_check=False)
    assert v.status == "timeout" and "no verdict" in v.message
    r = mip_bound(g, lo, hi, np.array([1.0]))
    assert r.status == "timeout" and math.isfinite(r.bound)  # CROWN's bound, not +inf


# ---------------------------------------------------------------------------------------------- bounds


def _pre_activation_samples(net: nn.Sequential, lo: np.ndarray, hi: np.ndarray, n: int = 4000
                            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(lo) + torch.rand(n, lo.size, generator=g, dtype=torch.float64) * torch.from_numpy(hi - lo)
    corners = torch.tensor(np.array(np.meshgrid(*[[0.0, 1.0]] * lo.size)).reshape(lo.size, -1).T)
    x = torch.cat([x, torch.from_numpy(lo) + corners * torch.from_numpy(hi - lo)])
    out, h = {}, x
    with torch.no_grad():
        for k, m in enumerate(net):
            h = m(h)
            if isinstance(m, nn.Linear):
                out[k] = h
    return x, out


@pytest.mark.parametrize("large", [False, True])
def test_refined_and_lp_tightened_bounds_contain_the_network(large):
    """MIP refinement and LP tightening turn solver optima into intermediate bounds: sampled pre-activations
    (float64) and exact pre-activations at refinement-critical points lie inside them, with zero tolerance."""
    net, lo, hi = _net(2, large, sizes=(2, 12, 12, 12, 1))
    g = verify.from_torch(net, (lo.size,))
    prop = Property(InputBox(lo, hi), [Disjunct(np.ones((1, 1)), np.array([-1e12]))])  # never proved
    rows = RowSpec.from_property(prop, lo.size, 1)
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    shape = g.input_shape
    lower, bounds = alpha_crown_lower(g, lo_t.reshape(1, *shape), hi_t.reshape(1, *shape), rows.output_lam(g),
                                      iterations=10,
                                      optimize_intermediate=True, return_bounds=True)
    res = refine_bounds(g, rows, lo_t, hi_t, bounds, Deadline(30), neuron_work=4.0, max_neurons=100,
                        lower=rows.finish(lower.detach(), g, bounds))
    assert res.layers >= 1 and res.solves > 0
    x, pre = _pre_activation_samples(net, lo, hi)
    relu_inputs = [n.inputs[0] for n in g.nodes if isinstance(n.op, Relu)]
    for k, name in zip(sorted(pre)[:-1], relu_inputs, strict=True):
        l, u = (t.reshape(-1) for t in res.bounds[name])
        assert bool((pre[k] >= l).all() and (pre[k] <= u).all()), name
        # exactly, at the sampled points nearest each refined bound
        for j in range(l.numel()):
            for i in (int(pre[k][:, j].argmin()), int(pre[k][:, j].argmax())):
                z = _exact(net, x[i].numpy(), layer=k // 2)[j]
                assert Fraction(float(l[j])) <= z <= Fraction(float(u[j]))
    # LP tightening of the second ReLU layer's inputs over the encoding of the first
    g64 = _float64_copy(g)
    model = _Model()
    exprs = {g64.input_name: _Expr(model.add_vars(lo, hi), np.eye(lo.size), np.zeros(lo.size))}
    for node in g64.nodes:
        ins = [exprs[i] for i in node.inputs]
        if getattr(node.op, "linear", False):
            exprs[node.name] = _linear(node.op, ins, [g64.shape_of(i) for i in node.inputs], model=model)
            continue
        l, u = _widened(*bounds[node.inputs[0]])
        if node.inputs[0] == relu_inputs[1]:
            lp_l, lp_u = _lp_tighten(model, ins[0], l, u, None)
            assert bool((pre[2] >= torch.from_numpy(lp_l)).all() and (pre[2] <= torch.from_numpy(lp_u)).all())
            assert np.all(lp_u - lp_l <= u - l)
            break
        exprs[node.name] = _relu(model, ins[0], l, u)


def test_tolerances_dataclass_is_frozen():
    with pytest.raises(AttributeError):
        STRICT.floor = 1.0  # type: ignore[misc]
    assert isinstance(FAST, Tolerances)
