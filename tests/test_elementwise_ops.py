"""Exp, Log, Sqrt (``verify.ops.exp_log``), Erf and GELU, and the derivative intervals (Jacobian rules) of every
element-wise op that states one (also Sin, Cos, Power, Reciprocal): lines, intervals and derivative ranges hold at 50
digits (mpmath) at many points of random intervals, in float64 and float32; domains are refused by name."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

from verify.bounds.ibp import sound_interval
from verify.errors import UnboundedError
from verify.ops.activation import Erf
from verify.ops.bilinear import Power, Reciprocal
from verify.ops.exp_log import Exp, Log, Sqrt
from verify.ops.periodic import Cos, Sin

mpmath.mp.dps = 50

FUNCS = {  # op factory, f, f', interval sampler
    "exp": (Exp, mpmath.exp, mpmath.exp, lambda rng, n: rng.normal(0, 4, n)),
    "log": (Log, mpmath.log, lambda x: 1 / x, lambda rng, n: np.exp(rng.normal(0, 3, n))),
    "sqrt": (Sqrt, mpmath.sqrt, lambda x: 1 / (2 * mpmath.sqrt(x)), lambda rng, n: np.abs(rng.normal(0, 5, n))),
    "erf": (Erf, mpmath.erf, lambda x: 2 / mpmath.sqrt(mpmath.pi) * mpmath.exp(-x * x),
            lambda rng, n: rng.normal(0, 2, n)),
}


def _intervals(sample, rng, n: int = 300):
    a = sample(rng, n)
    w = np.abs(rng.normal(0, 1, n)) * rng.choice([1e-6, 1e-2, 1.0, 5.0], n)
    w[:10] = 0.0  # points
    return a, a + w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_lines_intervals_and_derivatives_hold_at_fifty_digits(name, dtype):
    make, f, df, sample = FUNCS[name]
    rng = np.random.default_rng(len(name))
    a, b = _intervals(sample, rng)
    lo, hi = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    if name == "sqrt":
        lo[10:20] = 0.0  # ranges that reach the kink of sqrt at 0
    op = make()
    a_lo, c_lo, a_up, c_up = op.relax(lo, hi)
    ilo, ihi = sound_interval(op, [(lo, hi)])  # the interval rule with its rounding allowance
    dl, du = op.derivative_interval(lo, hi)
    for i in range(lo.numel()):
        l_, u_ = mpmath.mpf(float(lo[i])), mpmath.mpf(float(hi[i]))
        al, cl, au, cu = (mpmath.mpf(float(t[i])) for t in (a_lo, c_lo, a_up, c_up))
        for k in range(21):
            x = l_ + (u_ - l_) * mpmath.mpf(k) / 20
            v = f(x)
            assert al * x + cl <= v <= au * x + cu, (name, i, float(x))
            assert mpmath.mpf(float(ilo[i])) <= v <= mpmath.mpf(float(ihi[i])), (name, i, float(x))
            if x > 0 or name != "sqrt":
                d = df(x)
                assert mpmath.mpf(float(dl[i])) <= d <= mpmath.mpf(float(du[i])), (name, i, float(x))


def test_lines_are_tight_on_narrow_intervals():
    lo = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    hi = lo + 1e-3
    for op in (Exp(), Log(), Sqrt()):
        a_lo, c_lo, a_up, c_up = op.relax(lo, hi)
        gap = (a_up - a_lo) * hi + (c_up - c_lo)
        assert float(gap.abs().max()) < 1e-5, (op, gap)


def test_domains_and_overflow_are_refused_by_name():
    with pytest.raises(UnboundedError, match="Log"):
        Log().interval((torch.tensor([-0.5]), torch.tensor([1.0])))
    with pytest.raises(UnboundedError, match="Sqrt"):
        Sqrt().relax(torch.tensor([-1e-3]), torch.tensor([1.0]))
    with pytest.raises(UnboundedError, match="Exp"):
        Exp().interval((torch.tensor([0.0]), torch.tensor([100.0], dtype=torch.float32)))
    with pytest.raises(UnboundedError):
        Reciprocal().derivative_interval(torch.tensor([-1.0]), torch.tensor([1.0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_derivative_intervals_of_sin_cos_powers_and_reciprocal_hold(dtype):
    rng = np.random.default_rng(9)
    a = rng.normal(0, 3, 300)
    b = a + np.abs(rng.normal(0, 1, 300)) * rng.choice([1e-4, 0.1, 1.0, 8.0], 300)
    lo, hi = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    cases = [(Sin(), mpmath.cos), (Cos(), lambda x: -mpmath.sin(x)), (Power(2), lambda x: 2 * x),
             (Power(3), lambda x: 3 * x ** 2), (Power(4), lambda x: 4 * x ** 3)]
    away = (lo > 0) | (hi < 0)
    for op, df in cases + [(Reciprocal(), lambda x: -1 / x ** 2)]:
        sel = away if isinstance(op, Reciprocal) else torch.ones_like(away)
        l_t, h_t = lo[sel], hi[sel]
        dl, du = op.derivative_interval(l_t, h_t)
        for i in range(l_t.numel()):
            l_, u_ = mpmath.mpf(float(l_t[i])), mpmath.mpf(float(h_t[i]))
            for k in range(21):
                d = df(l_ + (u_ - l_) * mpmath.mpf(k) / 20)
                assert mpmath.mpf(float(dl[i])) <= d <= mpmath.mpf(float(du[i])), (repr(op), i)


def test_torch_frontend_takes_exp_log_sqrt_as_functions_and_methods():
    from verify import bound, from_torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = torch.nn.Linear(3, 4), torch.nn.Linear(12, 2)

        def forward(self, x):
            h = self.fc(x)
            s = torch.sigmoid(h)
            return self.out(torch.cat([torch.exp(h), (s + 0.1).log(), s.sqrt()], -1))

    torch.manual_seed(0)
    net = Net().double()
    graph = from_torch(net, (3,))
    kinds = [n.op.kind for n in graph.nodes if hasattr(n.op, "kind")]
    assert {"exp", "log", "sqrt"} <= set(kinds)
    x = torch.rand(1, 3, dtype=torch.float64)
    lo, hi = bound(net, x - 0.1, x + 0.1, method="crown")
    pts = x - 0.1 + 0.2 * torch.rand(500, 3, dtype=torch.float64)
    y = net(pts).detach()
    assert (y >= lo).all() and (y <= hi).all()


class _Smooth(torch.nn.Module):
    """Linear -> one of the element-wise ops per block of neurons -> Linear (two outputs)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(d, h), torch.nn.Linear(7 * h, 2)

    def forward(self, x):
        z = self.fc(x)
        s = torch.sigmoid(z)
        parts = [torch.sin(z), torch.cos(z), torch.exp(0.5 * z), z ** 3, torch.reciprocal(s + 0.5),
                 torch.log(s + 0.1), torch.sqrt(s)]
        return self.out(torch.cat(parts, -1))


@pytest.mark.parametrize("seed", range(4))
def test_lipschitz_bounds_with_every_element_wise_rule_hold_at_sampled_gradients(seed):
    from verify.lipschitz import lipschitz

    torch.manual_seed(seed)
    net = _Smooth(3, 4).double()
    x = torch.rand(3, dtype=torch.float64) * 2 - 1
    eps = 0.05 + 0.3 * seed
    lo, hi = x - eps, x + eps
    pts = (lo + (hi - lo) * torch.rand(4000, 3, dtype=torch.float64)).requires_grad_(True)
    y = net(pts)
    worst = 0.0
    for j in range(2):
        (g,) = torch.autograd.grad(y[:, j].sum(), pts, retain_graph=True)
        worst = max(worst, float(g.abs().sum(1).max()))
    for method in ("ibp", "crown", "alpha-crown", "bab"):
        res = lipschitz(net, lo, hi, method=method, timeout=3)
        assert res.lower <= res.upper and worst <= res.upper, (seed, method, worst, res.upper)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_graphs_match_torch_and_their_bounds_hold(approximate):
    import verify
    from verify import from_torch

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(approximate=approximate), torch.nn.Linear(8, 6),
                              torch.nn.GELU(approximate=approximate), torch.nn.Linear(6, 2))
    for dtype in (torch.float64, torch.float32):
        m = net.to(dtype)
        x = torch.rand(1, 4, dtype=dtype) * 2 - 1
        graph = from_torch(m, (4,))
        torch.testing.assert_close(graph(x).reshape(1, -1), m(x), rtol=1e-6, atol=1e-6)
        pts = x - 0.5 + torch.rand(3000, 4, dtype=dtype)
        ys = m(pts).detach()
        for method in ("ibp", "crown", "alpha-crown"):
            lo, hi = verify.bound(m, x - 0.5, x + 0.5, method=method)
            assert (ys >= lo).all() and (ys <= hi).all(), (approximate, dtype, method)
    with pytest.raises(Exception, match="approximate"):
        from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU(approximate="bogus")), (2,))


def test_torch_softmax_forms_are_taken_and_their_bounds_hold():
    import torch.nn.functional as F

    import verify
    from verify import from_torch
    from verify.errors import UnsupportedOperator
    from verify.lipschitz import lipschitz

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.o, self.sm = torch.nn.Linear(4, 12), torch.nn.Linear(12, 3), torch.nn.Softmax(dim=-1)

        def forward(self, x):
            h = self.q(x).view(x.shape[0], 3, 4)
            a = self.sm(h) + F.softmax(h, dim=2) + h.softmax(-1) + torch.softmax(h, 1)
            return self.o(a.reshape(x.shape[0], 12))

    torch.manual_seed(0)
    net = Attention().double()
    graph = from_torch(net, (4,))
    assert sum(getattr(n.op, "kind", "") == "softmax" for n in graph.nodes) == 4
    x = torch.rand(1, 4, dtype=torch.float64)
    torch.testing.assert_close(graph(x).reshape(1, -1), net(x), rtol=1e-12, atol=1e-12)
    pts = x - 0.3 + 0.6 * torch.rand(4000, 4, dtype=torch.float64)
    ys = net(pts).detach()
    for method in ("ibp", "crown", "alpha-crown"):
        lo, hi = verify.bound(net, x - 0.3, x + 0.3, method=method)
        assert (ys >= lo).all() and (ys <= hi).all(), method
    with pytest.raises(UnsupportedOperator, match="Softmax"):
        lipschitz(net, (x - 0.3).reshape(-1), (x + 0.3).reshape(-1), method="crown")
