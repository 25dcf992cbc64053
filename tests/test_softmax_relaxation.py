"""Softmax's CROWN planes (``verify.ops.softmax``): valid for the exact softmax on random boxes (checked in extended
precision, zero tolerance), tighter than the constant lines where the box is small, constant where differences may
exceed the cap; CROWN / alpha-CROWN bounds through softmax networks hold at sampled points and for the float32
model with ``precision="model"``; the folded-constant float64 values reach the float64 graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from verify import bound, from_torch
from verify.ops.softmax import MAX_DIFFERENCE, Softmax


def _softmax_ld(x: np.ndarray) -> np.ndarray:
    """Softmax in 80-bit extended precision along the last axis."""
    x = x.astype(np.longdouble)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _random_box(g: torch.Generator, n: int, rows: int, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    centre = 3 * torch.randn(1, rows, n, generator=g, dtype=torch.float64)
    rad = width * torch.rand(1, rows, n, generator=g, dtype=torch.float64)
    return centre - rad, centre + rad


@pytest.mark.parametrize("seed", range(12))
def test_planes_hold_for_the_exact_softmax(seed):
    g = torch.Generator().manual_seed(seed)
    n = [2, 3, 5, 8, 10, 16][seed % 6]
    width = [1e-6, 0.01, 0.3, 1.0, 2.5, 6.0][seed // 2]
    op = Softmax(axis=1)
    op.bind([(4, n)])
    lo, hi = _random_box(g, n, 4, width)
    a_lo, b_lo, a_up, b_up = op.planes(lo, hi)
    pts = lo + (hi - lo) * torch.rand(4000, 4, n, generator=g, dtype=torch.float64)
    corners = torch.where(torch.rand(2000, 4, n, generator=g) < 0.5, lo, hi)
    x = torch.cat([pts, corners]).numpy().astype(np.longdouble)
    y = _softmax_ld(x)
    p_lo = (a_lo.numpy().astype(np.longdouble)[0] * x[:, :, None, :]).sum(-1) + b_lo.numpy().astype(np.longdouble)[0]
    p_up = (a_up.numpy().astype(np.longdouble)[0] * x[:, :, None, :]).sum(-1) + b_up.numpy().astype(np.longdouble)[0]
    assert np.all(p_lo <= y), float((p_lo - y).max())
    assert np.all(p_up >= y), float((y - p_up).max())


def test_planes_hold_where_exp_underflows():
    """Differences far below -745 (exp is 0 in float64): the chord through the low end must still lie above exp
    at every point of the interval, not only where the float64 exp is positive."""
    op = Softmax(axis=1)
    op.bind([(1, 3)])
    lo = torch.tensor([[[0.0, -1500.0, -900.0]]], dtype=torch.float64)
    hi = torch.tensor([[[0.5, -600.0, -10.0]]], dtype=torch.float64)
    a_lo, b_lo, a_up, b_up = op.planes(lo, hi)
    assert bool((a_up != 0).any())  # the row is relaxed by planes (its differences stay below the cap)
    g = torch.Generator().manual_seed(0)
    x = (lo + (hi - lo) * torch.rand(4000, 1, 3, generator=g, dtype=torch.float64)).numpy().astype(np.longdouble)
    y = _softmax_ld(x)
    p_lo = (a_lo.numpy().astype(np.longdouble)[0] * x[:, :, None, :]).sum(-1) + b_lo.numpy().astype(np.longdouble)[0]
    p_up = (a_up.numpy().astype(np.longdouble)[0] * x[:, :, None, :]).sum(-1) + b_up.numpy().astype(np.longdouble)[0]
    assert np.all(p_lo <= y) and np.all(p_up >= y)


def test_planes_are_tighter_than_the_constant_lines_on_small_boxes():
    g = torch.Generator().manual_seed(0)
    op = Softmax(axis=1)
    op.bind([(6, 5)])
    lo, hi = _random_box(g, 5, 6, 0.2)
    a_lo, b_lo, a_up, b_up = op.planes(lo, hi)
    assert bool((a_lo != 0).any())
    pts = lo + (hi - lo) * torch.rand(3000, 6, 5, generator=g, dtype=torch.float64)
    y = torch.softmax(pts, -1)
    gap = ((a_up * pts.unsqueeze(-2)).sum(-1) + b_up - ((a_lo * pts.unsqueeze(-2)).sum(-1) + b_lo)).mean()
    c_lo, c_hi = op.interval((lo, hi))
    assert float(gap) < 0.5 * float((c_hi - c_lo).mean())
    assert torch.all(y >= c_lo) and torch.all(y <= c_hi)


def test_wide_rows_keep_the_constant_lines():
    op = Softmax(axis=1)
    op.bind([(2, 4)])
    # row 1: the centre's argmax is x_0 (centre 0.5), x_1 may exceed it by 2 cap
    lo = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -2.5 * MAX_DIFFERENCE, 0.0, 0.0]]], dtype=torch.float64)
    hi = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [1.0, 2 * MAX_DIFFERENCE, 0.0, 0.0]]], dtype=torch.float64)
    a_lo, b_lo, a_up, b_up = op.planes(lo, hi)
    c_lo, c_hi = op.interval((lo, hi))
    assert bool((a_lo[0, 0] != 0).any())
    assert torch.all(a_lo[0, 1] == 0) and torch.all(a_up[0, 1] == 0)
    assert torch.equal(b_lo[0, 1], c_lo[0, 1]) and torch.equal(b_up[0, 1], c_hi[0, 1])


class _Attention(nn.Module):
    """Scores, a softmax over a non-last axis for some seeds, and a mix of the values."""

    def __init__(self, axis: int):
        super().__init__()
        self.q, self.v, self.o, self.axis = nn.Linear(6, 12), nn.Linear(6, 12), nn.Linear(12, 3), axis

    def forward(self, x):
        s = self.q(x).reshape(-1, 3, 4)
        a = torch.softmax(s, dim=self.axis)
        return self.o(torch.relu(a.reshape(-1, 12) * 3 + self.v(x)))


@pytest.mark.parametrize("seed", range(6))
def test_bounds_through_softmax_hold(seed):
    torch.manual_seed(seed)
    net = _Attention(axis=-1 if seed % 2 else 1).eval()
    x = torch.rand(1, 6)
    eps = [0.01, 0.05, 0.2][seed % 3]
    lo, hi = x - eps, x + eps
    pts = lo + (hi - lo) * torch.rand(3000, 6)
    y64 = net.double()(pts.double()).detach()
    g = from_torch(net.double(), (6,))
    for method in ("crown", "alpha-crown"):
        b_lo, b_hi = bound(g, lo.double(), hi.double(), method=method)
        assert torch.all(y64 >= b_lo) and torch.all(y64 <= b_hi)
    net32 = net.float()
    g32 = from_torch(net32, (6,))
    y32 = net32(pts).detach()
    b_lo, b_hi = bound(g32, lo, hi, method="crown", precision="model")
    assert torch.all(y32 >= b_lo) and torch.all(y32 <= b_hi)


def test_planes_make_crown_tighter_than_constant_lines(monkeypatch):
    torch.manual_seed(3)
    net = _Attention(axis=-1).double().eval()
    x = torch.rand(1, 6, dtype=torch.float64)
    g = from_torch(net, (6,))
    lo, hi = x - 0.02, x + 0.02
    w_planes = bound(g, lo, hi, method="crown")
    import verify.ops.softmax as sm

    monkeypatch.setattr(sm, "MAX_DIFFERENCE", -1.0)  # every row constant: the relaxation before the planes
    w_const = bound(g, lo, hi, method="crown")
    assert float((w_planes[1] - w_planes[0]).sum()) < float((w_const[1] - w_const[0]).sum())


@pytest.mark.parametrize("seed", range(8))
def test_difference_planes_hold_for_the_exact_softmax(seed):
    """``SoftmaxOfDifferences`` on the exact ranges of the differences of correlated scores ``x = c + M z`` (the
    common terms cancel, so the differences' ranges are narrower than the scores' intervals allow): its planes in
    ``D[k, :]`` and its interval hold for the 80-bit softmax, zero tolerance."""
    from verify.ops.softmax import SoftmaxOfDifferences

    g = torch.Generator().manual_seed(seed)
    n, m, rows = [2, 3, 5, 8][seed % 4], 4, 3
    c = 2 * torch.randn(rows, n, generator=g, dtype=torch.float64)
    mix = torch.randn(rows, n, m, generator=g, dtype=torch.float64) + 3.0  # a large common part
    rad = [0.02, 0.3][seed // 4]
    pairs = torch.eye(n, dtype=torch.float64)[None, :] - torch.eye(n, dtype=torch.float64)[:, None]  # [i, j, l]
    pd = torch.einsum("ijl,rlm->rijm", pairs, mix)  # D[i, j] = x_j - x_i = (e_j - e_i) . (c + M z)
    centre = torch.einsum("ijl,rl->rij", pairs, c)
    spread = rad * pd.abs().sum(-1)
    lo, hi = (centre - spread)[None], (centre + spread)[None]  # [1, rows, n, n], exact ranges
    op = SoftmaxOfDifferences()
    op.bind([(rows, n, n)])
    c_lo, b_lo, c_up, b_up, k = op.planes(lo, hi)
    z = rad * (2 * torch.rand(5000, 1, m, generator=g, dtype=torch.float64) - 1)
    x = c[None] + torch.einsum("rnm,sqm->srn", mix, z)  # [S, rows, n]
    d = x.unsqueeze(-2) - x.unsqueeze(-1)  # [S, rows, i, j] = x_j - x_i
    assert torch.all(d >= lo - 1e-12) and torch.all(d <= hi + 1e-12)
    d_k = torch.gather(d, 2, k[0].unsqueeze(0).unsqueeze(-1).expand(d.shape[0], rows, 1, n)).squeeze(2)
    y = _softmax_ld(x.numpy())
    dk = d_k.numpy().astype(np.longdouble)
    p_lo = (c_lo.numpy().astype(np.longdouble)[0] * dk[:, :, None, :]).sum(-1) + b_lo.numpy().astype(np.longdouble)[0]
    p_up = (c_up.numpy().astype(np.longdouble)[0] * dk[:, :, None, :]).sum(-1) + b_up.numpy().astype(np.longdouble)[0]
    assert np.all(p_lo <= y) and np.all(p_up >= y)
    i_lo, i_hi = op.interval((lo, hi))
    assert np.all(i_lo.numpy()[0].astype(np.longdouble) <= y) and np.all(i_hi.numpy()[0].astype(np.longdouble) >= y)
    assert bool((c_lo != 0).any())  # planes, not only the constant lines


def test_planes_are_reused_only_for_the_same_unchanged_bounds():
    """A pass asks for a node's planes three times (step, allowance, pushed allowance): computed once per pair of
    bound tensors, recomputed for other tensors or after an in-place change, never pickled with the op."""
    import pickle

    from verify.ops.softmax import SoftmaxOfDifferences

    g = torch.Generator().manual_seed(0)
    for op, (lo, hi) in ((Softmax(axis=1), _random_box(g, 5, 3, 0.3)),
                         (SoftmaxOfDifferences(), _random_box(g, 4, 4, 0.1))):
        op.bind([tuple(lo.shape[1:])])
        first = op.planes(lo, hi)
        assert all(a is b for a, b in zip(op.planes(lo, hi), first, strict=True))
        fresh = op.planes(lo.clone(), hi.clone())
        assert all(torch.equal(a, b) and a is not b for a, b in zip(fresh, first, strict=True))
        hi2 = hi.clone()
        op.planes(lo, hi2)
        hi2.add_(0.5)  # the same tensor, changed in place: the planes must follow it
        moved = op.planes(lo, hi2)
        recomputed = pickle.loads(pickle.dumps(op)).planes(lo, hi2.clone())  # a copy that never saw these bounds
        assert all(torch.equal(a, b) for a, b in zip(moved, recomputed, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(moved, first, strict=True))
        assert pickle.loads(pickle.dumps(op))._last_planes.entry is None
        with torch.inference_mode():  # tensors without a version counter: computed every time, same planes
            lo_i, hi_i = lo.clone(), hi.clone()
            assert all(torch.equal(a, b) for a, b in zip(op.planes(lo_i, hi_i), first, strict=True))
