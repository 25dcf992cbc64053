"""Local Lipschitz bounds and monotonicity certificates are rigorous in real arithmetic, with zero tolerance.

The float64 Jacobian (``torch.func.jacrev`` on a float64 copy) of a float32 network is its exact Jacobian to
~1e-15 relative, far inside what float32 rounding of a bound computation can get wrong; so a float64 Jacobian
outside a bound, by any amount, is a soundness bug. Checked: every method's per-output upper bound against
``max_j ||J_j(x)||_1`` at sampled points (centre, corners, random, points on ReLU kinks), the Jacobian interval
bounds entrywise, certified lower bounds against float64 gradient norms at their witnesses, monotonicity
verdicts against float64 derivative samples, weight representation errors, and the relaxation lines in exact
rational arithmetic on adversarial float intervals.
"""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.helpers import random_network
from verify.errors import ModelError, UnsupportedOperator
from verify.graph import GraphBuilder
from verify.lipschitz import lipschitz, monotonicity
from verify.lipschitz.api import _prepare, upper_bounds
from verify.lipschitz.bounds import forward_bounds, jacobian_bounds
from verify.lipschitz.gates import StepLines, abs_chord, gate_interval, gate_lines
from verify.lipschitz.jacobian import JacobianGraph
from verify.ops.activation import Relu
from verify.ops.linear import Dense
from verify.rounding import mul_down, mul_up, sub_enclose

F64 = torch.float64
FAST_METHODS = ("naive", "ibp", "crown", "alpha-crown")


def jacobian64(net: nn.Module, shape, x: torch.Tensor) -> torch.Tensor:
    """Float64 Jacobians ``[P, K, n]`` of a float64 deep copy at the points ``x [P, *shape]``."""
    ref = copy.deepcopy(net).double()

    def f(z):
        return ref(z.unsqueeze(0)).reshape(-1)

    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacrev(f))(x.reshape(-1, *shape).to(F64))
    return jac.reshape(x.shape[0], -1, int(np.prod(shape)))


def kink_points(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> list[torch.Tensor]:
    """Points of the box on first-layer ReLU kinks of an MLP (``z_i(x) = 0`` up to float64 rounding)."""
    if not (isinstance(net, nn.Sequential) and isinstance(net[0], nn.Linear) and isinstance(net[1], nn.ReLU)):
        return []
    w, b = net[0].weight.detach().double(), net[0].bias.detach().double()
    x0 = (lo + hi) / 2
    out = []
    for i in range(w.shape[0]):
        z = w[i] @ x0 + b[i]
        p = x0 - z * w[i] / (w[i] @ w[i])
        if bool(((p >= lo) & (p <= hi)).all()):
            out.append(p)
    return out


def sample_points(net, shape, lo, hi, g: torch.Generator, n: int = 12) -> torch.Tensor:
    """Centre, both extreme corners, random points and kink points of the float64 box ``[lo, hi]``."""
    pts = [(lo + hi) / 2, lo, hi] + list(lo + torch.rand(n, *shape, generator=g, dtype=F64) * (hi - lo))
    pts += kink_points(net, lo.reshape(-1), hi.reshape(-1))
    return torch.stack([p.reshape(shape) for p in pts])


def _box(shape, seed: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    x0 = (torch.rand(*shape, generator=g) * 2 - 1).to(F64)  # a float32 value, exactly
    return x0 - eps, x0 + eps


def _per_output(res) -> tuple[torch.Tensor, torch.Tensor]:
    up = torch.tensor([p["upper"] for p in res.per_output], dtype=F64)
    low = torch.tensor([p["lower"] for p in res.per_output], dtype=F64)
    return up, low


# ------------------------------------------------------------------------------ Jacobian bounds, every op family


@pytest.mark.parametrize("seed", range(24))
def test_jacobian_bounds_contain_the_float64_jacobian_with_zero_tolerance(seed):
    """Random MLP / CNN / residual / CNN+BatchNorm nets (ReLU, sigmoid, tanh), point, tiny and ordinary boxes, both
    precisions: the interval bounds of every ``df_j / dx_i`` (also the CROWN-refined monotonicity bound of one
    entry) contain the float64 Jacobian, and every fast method's upper bound is >= ``||J_j||_1`` at every point."""
    net, shape, desc = random_network(seed)
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    for eps in (0.0, 1e-7, 0.05, 0.3):
        lo, hi = _box(shape, seed, eps)
        pts = sample_points(net, shape, lo, hi, g)
        jac = jacobian64(net, shape, pts)  # [P, K, n]
        truth = jac.abs().sum(-1).max(0).values
        for precision in ("float64", "float32"):
            label = f"seed {seed} {desc} eps {eps} {precision}"
            graph, glo, ghi = _prepare(net, lo, hi, shape, precision=precision)
            assert graph.dtype == (torch.float32 if precision == "float32" else F64)
            outs = list(range(graph.output_numel))
            jg = JacobianGraph(graph)
            with torch.no_grad():
                fb = forward_bounds(graph, glo, ghi, "crown")
                _, parts = jacobian_bounds(jg, fb, outs)
                feature = seed % n
                elo, ehi = jg.entry_bounds(feature, parts["gates"], parts["gb"], parts["seeds"])
            blo, bhi = (t.to(F64).reshape(len(outs), n) for t in parts["gb"][graph.input_name])
            assert bool((jac >= blo).all()) and bool((jac <= bhi).all()), f"{label}: G:x interval"
            d = jac[:, :, feature]
            assert bool((d >= elo).all()) and bool((d <= ehi).all()), f"{label}: entry bound"
            for method in FAST_METHODS:
                up, _ = upper_bounds(graph, glo, ghi, outs, method)
                assert up.dtype == F64
                assert bool((up >= truth).all()), f"{label} {method}: {(truth - up).max().item():.3g} below"


# ------------------------------------------------------------------------------ every method, lower bounds


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 7, 8, 12, 17])
def test_every_method_and_the_certified_lower_bound(seed):
    """bab, mip and lipsdp (``l2 sqrt(d)``) bound the float64 ``||J_j||_1`` at every sample, in both precisions;
    the reported lower bound is <= upper and <= ``||J_j||_1`` in float64 at its witness, which lies in the box."""
    net, shape, desc = random_network(seed)
    g = torch.Generator().manual_seed(seed)
    for eps in (0.0, 0.1):
        lo, hi = _box(shape, seed, eps)
        pts = sample_points(net, shape, lo, hi, g)
        truth = jacobian64(net, shape, pts).abs().sum(-1).max(0).values
        for precision, method in itertools.product(("float64", "float32"), ("bab", "mip", "lipsdp", "crown")):
            label = f"seed {seed} {desc} eps {eps} {precision} {method}"
            try:
                res = lipschitz(net, lo, hi, method=method, timeout=1.0, precision=precision, samples=100,
                                input_shape=shape)
            except UnsupportedOperator:  # LipMIP: ReLU nets only; LipSDP: Dense-ReLU chains only
                continue
            up, low = _per_output(res)
            assert bool((up >= truth).all()), f"{label}: {(truth - up).max().item():.3g} below"
            assert bool((low <= up).all()), label
            for k, w in enumerate(res.extra["witness"]):
                x = torch.tensor(w, dtype=F64).reshape(1, *shape)
                assert bool(((x >= lo) & (x <= hi)).all()), f"{label}: witness outside the box"
                jw = jacobian64(net, shape, x)[0, res.per_output[k]["output"]].abs().sum()
                assert low[k] <= jw, f"{label}: lower {low[k].item()} above the norm at its witness {jw.item()}"


def test_lipsdp_certificate_rejects_an_infeasible_rho():
    """The LMI check is not the solver's word: below the optimum no inflation-free certificate exists, and the
    certified value bounds every sampled l2 gradient norm of the float32 network in float64."""
    from verify.lipschitz import sdp

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    graph, _, _ = _prepare(net, torch.zeros(3), torch.ones(3), (3,))
    l2 = sdp.lipsdp_l2(graph, [0, 1])
    x = (torch.rand(3000, 3, dtype=F64) - 0.5) * 40
    norms = jacobian64(net, (3,), x).norm(dim=-1).max(0).values
    assert all(math.isfinite(v) for v in l2) and bool((norms <= torch.tensor(l2, dtype=F64)).all())
    ws, errs = sdp._chain_weights(graph)
    lam = np.ones(sum(w.shape[0] for w in ws[:-1]))
    m, e = sdp.lmi_matrix(ws, errs, lam, 0.0, 0)  # rho = 0: the input block is 0, M has a positive eigenvalue
    assert sdp.lambda_max_upper(m, e) >= float(np.linalg.eigvalsh(m).max()) > 0
    assert sdp._certify(ws, errs, lam * 0, 0.5 * l2[0] ** 2, 0) is None  # T = 0: w w^T >= 0 is never <= 0


# ------------------------------------------------------------------------------ monotonicity


@pytest.mark.parametrize("seed", range(8))
def test_monotonicity_verdicts_are_never_contradicted_by_float64_gradients(seed):
    net, shape, desc = random_network(seed)
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    for eps in (0.0, 0.02, 0.3):
        lo, hi = _box(shape, seed, eps)
        pts = torch.cat([sample_points(net, shape, lo, hi, g, 40)])
        jac = jacobian64(net, shape, pts)
        for precision in ("float64", "float32"):
            feature = int(torch.randint(0, n, (1,), generator=g))
            output = int(torch.randint(0, jac.shape[1], (1,), generator=g))
            r = monotonicity(net, lo, hi, feature=feature, output=output, timeout=0.5, precision=precision,
                             input_shape=shape)
            d = jac[:, output, feature]
            label = f"seed {seed} {desc} eps {eps} {precision}: {r.status}"
            assert r.lower <= float(d.min()) and float(d.max()) <= r.upper, label
            if r.status == "increasing":
                assert float(d.min()) >= 0, label
            elif r.status == "decreasing":
                assert float(d.max()) <= 0, label
            elif r.status == "not_monotone":
                x = torch.tensor(r.counterexample, dtype=F64).reshape(1, *shape)
                assert bool(((x >= lo) & (x <= hi)).all()), label
                dx = float(jacobian64(net, shape, x)[0, output, feature])
                assert dx != 0 and math.copysign(1, dx) == math.copysign(1, r.gradient), label


def test_monotone_with_an_exactly_zero_derivative_is_certified():
    """Where the derivative is exactly 0 (inactive ReLUs) the rigorous bounds stay exactly 0, so a non-strict
    monotonicity is still certified, in both precisions."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.0]]))
        net[0].bias.copy_(torch.tensor([-0.5, 0.0, -2.0]))  # the third neuron is never active on the box
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, -5.0]]))
        net[2].bias.zero_()
    for precision in ("float64", "float32"):
        assert monotonicity(net, torch.zeros(2), torch.ones(2), feature=0, precision=precision).status == "increasing"
        assert monotonicity(net, torch.zeros(2), torch.ones(2), feature=1, precision=precision).status == "decreasing"


# ------------------------------------------------------------------------------ weights with representation errors


def test_weight_errors_are_covered():
    """Ops may carry ``weight_err`` (``|stored - exact|``): the bounds hold for every exact network within it."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(6, 3, generator=g), torch.randn(2, 6, generator=g)
    e1, e2 = 1e-3 * w1.abs() + 1e-4, 1e-3 * w2.abs()
    b = GraphBuilder("x", (3,))
    z = b.add("z", Dense(w1, torch.randn(6, generator=g), weight_err=e1), ["x"])
    h = b.add("h", Relu(), [z])
    graph = b.build(b.add("y", Dense(w2, None, weight_err=e2), [h]))
    lo, hi = torch.full((1, 3), -0.2), torch.full((1, 3), 0.3)
    x = lo + torch.rand(300, 3, generator=g) * (hi - lo)
    worst = torch.zeros(2, dtype=F64)
    for s1, s2 in itertools.product((-1.0, 1.0), repeat=2):  # exact networks at the corners of the error box
        for _ in range(4):
            r1 = s1 * torch.sign(torch.randn(6, 3, generator=g))
            r2 = s2 * torch.sign(torch.randn(2, 6, generator=g))
            net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2, bias=False)).double()
            with torch.no_grad():
                net[0].weight.copy_(w1.double() + r1.double() * e1.double())
                net[0].bias.copy_(graph.nodes[0].op.bias.double())
                net[2].weight.copy_(w2.double() + r2.double() * e2.double())
            worst = torch.maximum(worst, jacobian64(net, (3,), x).abs().sum(-1).max(0).values)
    for method in ("naive", "ibp", "crown", "alpha-crown", "bab", "lipsdp"):
        for precision in ("float64", "float32"):
            up, _ = _per_output(lipschitz(graph, lo, hi, method=method, timeout=1.0, precision=precision,
                                          attack=False))
            assert bool((up >= worst).all()), (method, precision, (worst - up).max().item())


def test_precision_is_never_narrowed():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with pytest.raises(ModelError, match="rounded"):
        lipschitz(net, torch.zeros(3), torch.ones(3), precision="float32")
    with pytest.raises(ModelError, match="rounded"):
        monotonicity(net, torch.zeros(3), torch.ones(3), feature=0, precision="float32")
    graph, _, _ = _prepare(net, torch.zeros(3), torch.ones(3), (3,), precision="auto")
    assert graph.dtype == F64


# ------------------------------------------------------------------------------ lines in exact arithmetic


def _adversarial(dtype, n: int = 2500, seed: int = 0):
    """Gate boxes ``[dl, du] x [lg, ug]`` over 50 decades, extreme ratios, ReLU gates, tiny straddles."""
    rng = np.random.default_rng(seed)
    mag, ratio = 10.0 ** rng.uniform(-30, 20, n), 10.0 ** rng.uniform(-12, 12, n)
    kind = rng.integers(0, 4, n)
    lg = np.where(kind == 0, mag, -mag)
    ug = np.where(kind == 1, -mag / (1 + ratio), mag * ratio)
    lg, ug = np.minimum(lg, ug), np.maximum(lg, ug)
    lg[:20], ug[:20] = -1.0, np.nextafter(1.0, 2.0)
    lg[20:40], ug[20:40] = -np.finfo(np.float32).tiny, np.finfo(np.float32).tiny
    d1 = 10.0 ** rng.uniform(-20, 1, n)
    d2 = d1 * (1 + 10.0 ** rng.uniform(-16, 2, n))
    d1[40:80], d2[40:60], d2[60:80] = 0.0, 1.0, 0.0  # Clarke ReLU gate [0, 1], inactive [0, 0]
    d1[80:100], d2[80:100] = 1.0, 1.0
    t = [torch.tensor(a, dtype=dtype) for a in (np.minimum(d1, d2), np.maximum(d1, d2), lg, ug)]
    return t[0], t[1], torch.minimum(t[2], t[3]), torch.maximum(t[2], t[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gate_lines_and_abs_chord_hold_in_exact_arithmetic(dtype):
    dl, du, lg, ug = _adversarial(dtype)
    a_lo, c_lo, a_up, c_up = gate_lines(dl, du, lg, ug)
    i_lo, i_hi = gate_interval(dl, du, lg, ug)
    a_abs, c_abs = abs_chord(lg, ug)
    step = StepLines(dl, du, lg, ug)  # the CROWN step's form: lower slope a_up + da (a real number)
    cols = [t.tolist() for t in (dl, du, lg, ug, a_lo, c_lo, a_up, c_up, i_lo, i_hi, a_abs, c_abs, step.a_up,
                                 step.da, step.c_lo, step.c_up)]
    for row in zip(*cols, strict=True):
        d0, d1, g0, g1, al, cl, au, cu, il, ih, aa, ca, su, sd, scl, scu = (Fraction(v) for v in row)
        # the gate d g is bilinear: lines valid at the four vertices are valid on the box
        for d, g in itertools.product((d0, d1), (g0, g1)):
            assert al * g + cl <= d * g <= au * g + cu, row
            assert (su + sd) * g + scl <= d * g <= su * g + scu, row
            assert il <= d * g <= ih, row
        for g in (g0, g1):  # |g| - a g is convex: the end points decide
            assert abs(g) <= aa * g + ca, row
    # sign-stable gates stay exact (no slack from rounding where there is none)
    stable = (lg >= 0) | (ug <= 0)
    assert bool((c_up[stable] == 0).all()) and bool((c_lo[stable] == 0).all())
    relu_gate = ((dl == 0) | (dl == 1)) & ((du == 0) | (du == 1))  # da = dl - du is exact there
    assert bool((step.c_lo[stable & relu_gate] == 0).all()) and bool((step.c_up[stable] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_directed_arithmetic_encloses_the_exact_result(dtype):
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=3000) * 10.0 ** rng.uniform(-35, 35, 3000), dtype=dtype)
    b = torch.tensor(rng.normal(size=3000) * 10.0 ** rng.uniform(-35, 35, 3000), dtype=dtype)
    a[:10], b[:10] = 1.0, 1.0  # exact differences stay exact
    a[10:20] = 0.0  # and so do products with a zero factor
    s_lo, s_hi = sub_enclose(a, b)
    p_lo, p_hi = mul_down(a, b), mul_up(a, b)
    for x, y, sl, sh, pl, ph in zip(*(t.tolist() for t in (a, b, s_lo, s_hi, p_lo, p_hi)), strict=True):
        fx, fy = Fraction(x), Fraction(y)
        assert Fraction(sl) <= fx - fy <= Fraction(sh)
        if math.isfinite(pl) and math.isfinite(ph):
            assert Fraction(pl) <= fx * fy <= Fraction(ph)
    assert bool((s_lo[:10] == 0).all() and (s_hi[:10] == 0).all())
    assert bool((p_lo[10:20] == 0).all() and (p_hi[10:20] == 0).all())
