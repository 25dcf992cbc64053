"""Exact MILP encoding (verify.mip): real solves with Gurobi (size-limited license) and HiGHS, checked against
dense sampling + PGD, CROWN bounds, and the VNN-COMP toy instances."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linprog

import verify
from models.zoo import mlp
from verify.errors import ShapeError, UnsupportedOperator
from verify.mip import SolverUnavailable, mip_bound, mip_verify, mip_verify_spec
from verify.vnnlib import parse_vnnlib

VNNCOMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnncomp"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds contention on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(sub: str) -> Path:
    d = VNNCOMP / sub
    if not d.is_dir():
        pytest.skip(f"VNN-COMP data not found at {d} (third-party data is read from ../shared/data, never copied)")
    return d


def _gurobi_or_skip(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs, backend="gurobi")
    except SolverUnavailable as e:
        pytest.skip(f"Gurobi unavailable: {e}")


class TinyCnn(nn.Module):
    """Conv 1->2 k2, ReLU, MaxPool 2, Linear 8->2 on 1x5x5 inputs (32 ReLUs, 8 max windows)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act, self.pool, self.fc = nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return self.fc3(self.act2(h + self.fc2(h)))


def _net(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    if kind == "mlp":
        return mlp([3, 8, 8, 2]).double().eval(), (3,)
    if kind == "residual":
        return Residual().double().eval(), (3,)
    return TinyCnn().double().eval(), (1, 5, 5)


def _region_min(net: nn.Module, x_star: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, c: torch.Tensor
                ) -> float:
    """``c . f`` at the LP minimiser over the closure of ``x_star``'s linear region (ReLU signs and MaxPool
    winners fixed; the net is affine there), so PGD ending near a kink still reaches the exact local value."""
    hooked: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, i, o: hooked.append((m, i[0])))
               for m in net.modules() if isinstance(m, nn.ReLU | nn.MaxPool2d)]

    def windows(m: nn.MaxPool2d, t: torch.Tensor) -> torch.Tensor:
        w = F.unfold(t.reshape(-1, *t.shape[-3:]), m.kernel_size, stride=m.stride)
        return w.reshape(t.shape[-3], -1, w.shape[-1])  # [C, K, L]

    try:
        with torch.no_grad():
            hooked.clear()
            net(x_star[None])
            pattern = [t.sign() if isinstance(m, nn.ReLU) else windows(m, t).argmax(1, keepdim=True)
                       for m, t in hooked]

        def rows(x: torch.Tensor) -> torch.Tensor:
            hooked.clear()
            out = [(net(x[None])[0] @ c).reshape(1)]
            for (m, t), p in zip(hooked, pattern, strict=True):
                if isinstance(m, nn.ReLU):
                    out.append((p * t).reshape(-1))
                else:
                    w = windows(m, t)
                    out.append((w.gather(1, p) - w).reshape(-1))
            return torch.cat(out)

        g0 = rows(x_star).detach().numpy()
        jac = torch.autograd.functional.jacobian(rows, x_star).reshape(g0.size, -1).numpy()
    finally:
        for h in handles:
            h.remove()
    xs = x_star.reshape(-1).numpy()
    bounds = list(zip((lo.reshape(-1).numpy() - xs), (hi.reshape(-1).numpy() - xs), strict=True))
    lp = linprog(jac[0], A_ub=-jac[1:], b_ub=g0[1:], bounds=bounds, method="highs")
    if lp.status != 0:
        return math.inf
    x = torch.minimum(torch.maximum(torch.tensor(xs + lp.x).reshape(x_star.shape), lo), hi)
    with torch.no_grad():
        return float(net(x[None])[0] @ c)


def _sample_min(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, c: torch.Tensor, seed: int) -> float:
    """Best ``c . net(x)`` over dense uniform samples (+ corners), PGD from the best ones, and an exact
    LP over the linear region of each of the best PGD end points."""
    g = torch.Generator().manual_seed(seed)
    d = lo.numel()
    x = lo + (hi - lo) * torch.rand(20_000, *lo.shape, generator=g, dtype=torch.float64)
    if d <= 8:
        corners = torch.tensor(np.array(np.meshgrid(*[[0.0, 1.0]] * d)).reshape(d, -1).T).reshape(-1, *lo.shape)
        x = torch.cat([x, lo + (hi - lo) * corners])
    with torch.no_grad():
        vals = net(x) @ c
    best = float(vals.min())
    # PGD from the 200 best samples: signed steps, geometric decay down to 1e-8 of the box width.
    x = x[vals.argsort()[:200]].clone()
    steps = 300
    for t in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad((net(x) @ c).sum(), x)
        step = (hi - lo) * 0.05 * (1e-8 ** (t / (steps - 1)))
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
    with torch.no_grad():
        vals = net(x) @ c
    best = min(best, float(vals.min()))
    for i in vals.argsort()[:10]:
        best = min(best, _region_min(net, x[i], lo, hi, c))
    return best


# ---------------------------------------------------------------------------------------------- (1) exactness


@pytest.mark.parametrize("kind,seed,eps", [
    ("mlp", 0, 1.0), ("mlp", 1, 0.5), ("mlp", 2, 2.0), ("residual", 3, 1.0), ("cnn", 4, 0.3), ("cnn", 5, 0.5),
])
def test_bound_matches_sampling_pgd_and_crown(kind, seed, eps):
    net, shape = _net(kind, seed)
    g = verify.from_torch(net, shape)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-0.5, 0.5, size=shape)
    lo, hi = x0 - eps, x0 + eps
    c = rng.normal(size=2)
    res = mip_bound(g, lo, hi, c, backend="highs")
    assert res.status == "optimal", res.message
    assert res.x is not None and res.x.dtype == np.float64 and res.x.shape == (int(np.prod(shape)),)
    assert np.all(res.x >= lo.reshape(-1)) and np.all(res.x <= hi.reshape(-1))
    # the bound is the dual bound less the tolerance margin (verify.mip.tolerance): exact up to that margin
    assert 0 <= res.value - res.bound <= 1e-7 * (1 + abs(res.value)) + res.margin
    assert abs(res.value - res.solver_value) <= 1e-7 * (1 + abs(res.value))

    lo_t, hi_t, c_t = torch.tensor(lo)[None], torch.tensor(hi)[None], torch.tensor(c)
    best = _sample_min(net, lo_t[0], hi_t[0], c_t, seed)
    assert res.bound <= best + 1e-9, "MIP dual bound above a sampled value: the encoding is not sound"
    assert res.value <= best + 1e-9
    assert best - res.value <= 1e-5, f"MIP {res.value} vs sampling/PGD {best}: the MIP is not exact"

    for method in ("crown", "alpha-crown"):
        clo, chi = (float(t.detach()) for t in verify.bound(g, lo_t, hi_t, C=c_t[None], method=method))
        assert res.bound >= clo - 1e-6 and res.value <= chi + 1e-6


def test_stable_network_is_an_lp_and_exact():
    """A box so small that every ReLU is stable: no binaries, the value is the affine minimum."""
    net, shape = _net("mlp", 7)
    g = verify.from_torch(net, shape)
    x0 = np.array([0.1, -0.2, 0.3])
    res = mip_bound(g, x0 - 1e-6, x0 + 1e-6, np.array([1.0, 0.0]), backend="highs")
    assert res.status == "optimal" and res.n_binaries == 0
    x = torch.tensor(x0, requires_grad=True)
    y = net(x[None])[0, 0]
    (grad,) = torch.autograd.grad(y, x)
    expect = float(y.detach()) - 1e-6 * float(grad.abs().sum())
    assert abs(res.value - expect) <= 1e-12


# ---------------------------------------------------------------------------------------------- (2) backends


@pytest.mark.parametrize("kind,seed", [("mlp", 10), ("cnn", 11)])
def test_gurobi_and_highs_agree(kind, seed):
    net, shape = _net(kind, seed)
    g = verify.from_torch(net, shape)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-0.5, 0.5, size=shape)
    lo, hi = x0 - 0.5, x0 + 0.5
    c = rng.normal(size=2)
    rg = _gurobi_or_skip(mip_bound, g, lo, hi, c)
    rh = mip_bound(g, lo, hi, c, backend="highs")
    ra = mip_bound(g, lo, hi, c)  # auto: Gurobi, as the model fits the size-limited license
    assert rg.backend == "gurobi" and rh.backend == "highs" and ra.backend == "gurobi"
    assert rg.status == rh.status == "optimal"
    assert abs(rg.value - rh.value) <= 1e-7 * (1 + abs(rg.value))
    assert abs(rg.bound - rh.bound) <= 1e-7 * (1 + abs(rg.value))
    assert rg.n_binaries == rh.n_binaries > 0
    # CROWN bounds alone (no LP tightening): more binaries, same optimum.
    for backend in ("gurobi", "highs"):
        r = mip_bound(g, lo, hi, c, backend=backend, tighten=False)
        assert r.status == "optimal" and r.n_binaries >= rg.n_binaries
        assert abs(r.value - rg.value) <= 1e-7 * (1 + abs(rg.value))


def test_auto_falls_back_to_highs_beyond_the_license():
    """A model above the size-limited license (827 binaries, 2481 rows): auto runs HiGHS, a forced Gurobi
    raises SolverUnavailable. One wide hidden layer is hard for big-M MILPs, so only a short solve here."""
    torch.manual_seed(0)
    net = mlp([2, 1000, 1]).double().eval()
    g = verify.from_torch(net, (2,))
    lo, hi = -np.ones(2), np.ones(2)
    res = mip_bound(g, lo, hi, np.ones(1), timeout=3)
    assert res.backend == "highs" and res.status in ("optimal", "timeout") and np.isfinite(res.bound)
    x = torch.rand(20_000, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        assert res.bound <= float(net(x).min()) + 1e-9
    try:
        import gurobipy  # noqa: F401
    except ImportError:
        return
    with pytest.raises(SolverUnavailable, match="gurobi"):
        mip_bound(g, lo, hi, np.ones(1), backend="gurobi")


# ---------------------------------------------------------------------------------------------- verification


@pytest.mark.parametrize("backend", ["highs", "auto"])
def test_verify_agrees_with_bound(backend):
    """Thresholds just above / below the exact minimum give sat (valid witness) / unsat."""
    net, shape = _net("mlp", 20)
    g = verify.from_torch(net, shape)
    lo, hi = -np.ones(3), np.ones(3)
    c = np.array([1.0, -1.0])
    opt = mip_bound(g, lo, hi, c, backend="highs").value
    A = c[None]
    sat = mip_verify(g, lo, hi, A, np.array([opt + 1e-3]), backend=backend, crown_check=False)
    assert sat.status == "sat" and sat.x is not None and sat.y is not None
    assert np.all(sat.x >= lo) and np.all(sat.x <= hi)
    y = net(torch.tensor(sat.x)[None]).detach().numpy()[0]
    assert np.allclose(y, sat.y, atol=1e-12) and float(c @ y) <= opt + 1e-3
    unsat = mip_verify(g, lo, hi, A, np.array([opt - 1e-3]), backend=backend, crown_check=False)
    assert unsat.status == "unsat" and 0 < unsat.margin <= 1e-3 + 1e-7
    # Several rows at once (a conjunction): c.y <= opt + 1e-3 and y_0 <= 100.
    both = mip_verify(g, lo, hi, np.vstack([A, [[1.0, 0.0]]]), np.array([opt + 1e-3, 100.0]), backend=backend)
    assert both.status == "sat"


def test_mixed_rows_and_disjunctions():
    """Rows on inputs and outputs (``f(x) - x <= t``) and VNNLIB disjunctions, against a dense 1-D grid."""
    torch.manual_seed(3)
    net = mlp([1, 8, 8, 1]).double().eval()
    g = verify.from_torch(net, (1,))
    x = torch.linspace(-1, 1, 200_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        gap = float((net(x) - x).min())  # min of f(x) - x, to ~1e-5
    for t, expected in ((gap + 0.01, "sat"), (gap - 0.01, "unsat")):
        v = mip_verify(g, -np.ones(1), np.ones(1), np.ones((1, 1)), np.array([t]), A_x=-np.ones((1, 1)),
                       backend="highs")
        assert v.status == expected, v.message
        if expected == "sat":
            assert float(v.y[0] - v.x[0]) <= t
    with torch.no_grad():
        lo_y, hi_y = float(net(x).min()), float(net(x).max())
    text = f"""(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (>= X_0 -1))
(assert (<= X_0 1))
(assert (or (and (>= Y_0 {hi_y + 0.01})) (and (<= Y_0 {lo_y - 0.01})) (and (<= Y_0 X_0) (>= Y_0 {lo_y}))))
"""
    spec = parse_vnnlib(text)
    v = mip_verify_spec(g, spec, backend="highs")
    assert v.status == ("sat" if gap < -1e-4 else "unsat") and (v.status == "unsat" or spec.is_counterexample(v.x, v.y))
    spec = parse_vnnlib(text.replace("(<= Y_0 X_0)", f"(<= Y_0 {lo_y - 0.01})"))
    assert mip_verify_spec(g, spec, backend="highs").status == "unsat"


def test_timeout_keeps_a_sound_dual_bound():
    """ACAS Xu property 1 is far beyond one second of MIP: the verdict is timeout, the bound still sound."""
    d = _data("acasxu")
    g = verify.load_onnx(d / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    spec = parse_vnnlib(d / "vnnlib" / "prop_1.vnnlib")
    box = spec.properties[0].box
    t = time.perf_counter()
    res = mip_bound(g, box.lo, box.hi, -np.eye(5)[0], timeout=2.0, backend="highs")
    assert time.perf_counter() - t < 10
    assert res.status == "timeout" and np.isfinite(res.bound)  # at least CROWN's bound
    x = box.lo + (box.hi - box.lo) * np.random.default_rng(0).random((2000, 5))
    with torch.no_grad():
        ys = g(torch.tensor(x, dtype=torch.float32)).reshape(2000, -1).double().numpy()
    assert res.bound <= float((-ys[:, 0]).min()) + 1e-5
    if res.x is not None:
        assert res.value >= res.bound - 1e-6
    v = mip_verify_spec(g, spec, timeout=1.0, backend="highs", crown_check=False)
    assert v.status == "timeout"


# ---------------------------------------------------------------------------------------------- (3) VNN-COMP


def _test_instances() -> list[tuple[str, str, str]]:
    path = VNNCOMP / "test" / "expected.csv"
    if not path.is_file():
        return [("missing", "missing", "missing")]
    with open(path) as f:
        return [(r["onnx"], r["vnnlib"], r["result"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("onnx_name,vnnlib_name,expected", _test_instances())
@pytest.mark.parametrize("backend", ["highs", "auto"])
def test_vnncomp_test_instances(onnx_name, vnnlib_name, expected, backend):
    d = _data("test")
    g = verify.load_onnx(d / onnx_name)
    spec = parse_vnnlib(d / vnnlib_name)
    t = time.perf_counter()
    v = mip_verify_spec(g, spec, timeout=60, backend=backend, crown_check=False)
    assert v.status == expected, v.message
    assert time.perf_counter() - t < 30
    if expected == "sat":
        assert spec.is_counterexample(v.x, v.y)  # zero tolerance, float64 graph
        import onnxruntime as ort
        sess = ort.InferenceSession(str(d / onnx_name), providers=["CPUExecutionProvider"])
        inp = next(i for i in sess.get_inputs() if i.name == g.input_name)
        y32 = sess.run(None, {inp.name: v.x.astype(np.float32).reshape(g.input_shape)})[0].reshape(-1)
        assert np.allclose(y32, v.y, rtol=1e-3, atol=1e-4)


def test_crown_check_shortcut():
    d = _data("test")
    g = verify.load_onnx(d / "test_unsat.onnx")
    v = mip_verify_spec(g, parse_vnnlib(d / "test_prop.vnnlib"), timeout=60)
    assert v.status == "unsat" and v.margin > 0


def _acas(net: str, prop: str, backend: str, limit: float) -> None:
    d = _data("acasxu")
    with open(d / "expected.csv") as f:
        rows = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(f)}
    onnx_name, vnnlib_name = f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", f"vnnlib/{prop}.vnnlib"
    g = verify.load_onnx(d / onnx_name)
    spec = parse_vnnlib(d / vnnlib_name)
    t = time.perf_counter()
    v = mip_verify_spec(g, spec, timeout=limit, backend=backend, crown_check=False)
    assert v.status == rows[(onnx_name, vnnlib_name)], v.message
    assert time.perf_counter() - t < limit + 5


def test_acasxu_prop4_highs():
    """A real ACAS Xu instance (6x50 ReLUs, ~70 binaries after LP tightening): a few seconds with HiGHS."""
    _acas("2_1", "prop_4", "highs", 60)


@pytest.mark.slow
@pytest.mark.parametrize("net,prop", [("2_1", "prop_3"), ("1_1", "prop_3"), ("1_1", "prop_4")])
@pytest.mark.parametrize("backend", ["highs", "auto"])
def test_acasxu_small_properties(net, prop, backend):
    _acas(net, prop, backend, 120)


# ---------------------------------------------------------------------------------------------- (4) errors


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_smooth_activations_raise(act):
    torch.manual_seed(0)
    g = verify.from_torch(mlp([2, 4, 1], activation=act).eval(), (2,))
    with pytest.raises(UnsupportedOperator, match="MIP encoding"):
        mip_bound(g, -np.ones(2), np.ones(2), np.ones(1))
    with pytest.raises(UnsupportedOperator, match="MIP encoding"):
        mip_verify(g, -np.ones(2), np.ones(2), np.ones((1, 1)), np.zeros(1))


def test_bad_inputs():
    net, shape = _net("mlp", 0)
    g = verify.from_torch(net, shape)
    with pytest.raises(ShapeError, match="empty input box"):
        mip_bound(g, np.ones(3), -np.ones(3), np.ones(2))
    with pytest.raises(ShapeError):
        mip_bound(g, -np.ones(4), np.ones(4), np.ones(2))
    with pytest.raises(ShapeError):
        mip_bound(g, -np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="backend"):
        mip_bound(g, -np.ones(3), np.ones(3), np.ones(2), backend="cplex")


def test_caller_graph_untouched():
    """The encoding works on a float64 copy: the caller's float32 graph keeps its dtype and values."""
    torch.manual_seed(1)
    net = mlp([3, 5, 2]).eval()
    g = verify.from_torch(net, (3,))
    x = torch.rand(4, 3)
    before = g(x).detach().clone()
    mip_bound(g, -np.ones(3), np.ones(3), np.ones(2), backend="highs")
    assert g.dtype == torch.float32 and torch.equal(g(x).detach(), before)
