"""The engine's CROWN equals a straightforward dense matrix implementation on ReLU MLPs (speed must not
cost tightness), and alpha-CROWN is strictly tighter on average."""

from __future__ import annotations

import pytest
import torch

from models.zoo import mlp
from verify import bound, from_torch


def _relu_slopes(l, u):
    unstable = (l < 0) & (u > 0)
    active = l >= 0
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    a_up = torch.where(unstable, u / denom, active.double())
    c_up = torch.where(unstable, -u * l / denom, torch.zeros_like(u))
    a_lo = torch.where(unstable, (u >= -l).double(), active.double())
    return a_lo, a_up, c_up


def dense_crown(Ws, bs, xl, xu):
    """Textbook CROWN (Zhang et al., 2018) with dense matrices, float64; intermediate bounds are the
    interval bounds, refined by CROWN where the interval shows an unstable neuron."""
    bounds = []

    def lower(lam, k):
        A, c = lam @ Ws[k], lam @ bs[k]
        for j in range(k - 1, -1, -1):
            l, u = bounds[j]
            a_lo, a_up, c_up = _relu_slopes(l, u)
            pos, neg = A.clamp(min=0), A.clamp(max=0)
            c = c + neg @ c_up
            D = pos * a_lo + neg * a_up
            A, c = D @ Ws[j], c + D @ bs[j]
        return A.clamp(min=0) @ xl + A.clamp(max=0) @ xu + c

    for k in range(len(Ws)):
        if k == 0:
            il, iu = xl, xu
        else:
            il, iu = bounds[-1][0].clamp(min=0), bounds[-1][1].clamp(min=0)
        mid, rad = (iu + il) / 2, (iu - il) / 2
        zl = Ws[k] @ mid + bs[k] - Ws[k].abs() @ rad
        zu = Ws[k] @ mid + bs[k] + Ws[k].abs() @ rad
        if k > 0:
            rows = ((zl < 0) & (zu > 0)) if k < len(Ws) - 1 else torch.ones_like(zl, dtype=torch.bool)
            eye = torch.eye(len(zl), dtype=torch.float64)[rows]
            if rows.any():
                zl[rows] = torch.maximum(zl[rows], lower(eye, k))
                zu[rows] = torch.minimum(zu[rows], -lower(-eye, k))
        bounds.append((zl, zu))
    return bounds[-1]


@pytest.mark.parametrize("seed,sizes,eps", [
    (0, [5, 20, 20, 3], 0.1), (1, [10, 32, 16, 16, 4], 0.05), (2, [784, 100, 100, 10], 2 / 255),
    (3, [8, 12, 12, 12, 12, 2], 0.3), (4, [3, 50, 5], 1.0)])
def test_crown_equals_dense_reference(seed, sizes, eps):
    torch.manual_seed(seed)
    net = mlp(sizes).double().eval()
    x0 = torch.rand(1, sizes[0], dtype=torch.float64)
    lo, hi = x0 - eps, x0 + eps
    graph = from_torch(net, (sizes[0],))
    with torch.no_grad():
        ours_l, ours_u = bound(graph, lo, hi, method="crown")
    Ws = [m.weight.detach() for m in net if isinstance(m, torch.nn.Linear)]
    bs = [m.bias.detach() for m in net if isinstance(m, torch.nn.Linear)]
    ref_l, ref_u = dense_crown(Ws, bs, lo[0], hi[0])
    torch.testing.assert_close(ours_l[0], ref_l, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ours_u[0], ref_u, atol=1e-8, rtol=1e-8)
