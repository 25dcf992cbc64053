"""Which nodes' interval rule is their exact range (``verify.bounds.crown.exact_interval_nodes``), and that CROWN
refines the others even when they are affine in the input: two mixing linear maps in a row (a ViT's patch embedding
then its query map) have the range ``|W2 W1| r``, not IBP's ``|W2| |W1| r``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from verify import bound, from_torch
from verify.bounds.crown import exact_interval_nodes, intermediate_bounds


def _names_by_repr(graph) -> dict[str, str]:
    return {n.name: repr(n.op) for n in graph.nodes}


def test_one_mixing_map_on_a_box_is_exact_two_are_not():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Unflatten(1, (5, 1)), nn.Flatten(), nn.Linear(5, 3), nn.ReLU(),
                        nn.Linear(3, 2)).double()
    g = from_torch(net, (4,))
    exact = exact_interval_nodes(g)
    dense = [n.name for n in g.nodes if repr(n.op).startswith("Dense")]
    reshapes = [n.name for n in g.nodes if repr(n.op).startswith("Reshape")]
    assert dense[0] in exact  # one linear map of the box
    assert len(reshapes) == 2 and all(r in exact for r in reshapes)  # moved on by reshapes: still exact
    assert dense[1] not in exact  # a second mixing map
    assert dense[2] not in exact


def test_box_preserving_ops_keep_the_box():
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(4).double().eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    net = nn.Sequential(bn, nn.Linear(4, 3), nn.ReLU()).double().eval()  # a per-coordinate scale, then one map
    g = from_torch(net, (4,))
    exact = exact_interval_nodes(g)
    assert all(n.name in exact for n in g.nodes if not repr(n.op).startswith("Relu"))


def test_sum_of_two_maps_of_the_same_input_is_not_exact():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return torch.relu(self.a(x) + self.b(x))

    g = from_torch(TwoPaths().double(), (3,))
    add = [n.name for n in g.nodes if len(n.inputs) == 2][0]
    assert add not in exact_interval_nodes(g)


@pytest.mark.parametrize("seed", range(6))
def test_affine_composition_gets_its_exact_range(seed):
    """Linear -> Linear -> Sigmoid: CROWN's bounds at the activation's input are the exact range (attained at box
    corners), strictly inside IBP's where the maps mix signs, and they hold at sampled points. (A ReLU input is
    refined only where IBP leaves it unstable.)"""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5), nn.Sigmoid(), nn.Linear(5, 2)).double()
    g = from_torch(net, (6,))
    x = torch.rand(1, 6, dtype=torch.float64)
    lo, hi = x - 0.1, x + 0.1
    crown = intermediate_bounds(g, lo, hi, "crown")
    ibp = intermediate_bounds(g, lo, hi, "ibp")
    act = [n.name for n in g.nodes if repr(n.op).startswith("Sigmoid")][0]
    relu_in = g.node(act).inputs[0]
    c_lo, c_hi = (t.detach() for t in crown[relu_in])
    i_lo, i_hi = (t.detach() for t in ibp[relu_in])
    w = (net[1].weight @ net[0].weight).detach()
    b = (net[1].weight @ net[0].bias + net[1].bias).detach()
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    exact_lo, exact_hi = mid @ w.T + b - rad @ w.abs().T, mid @ w.T + b + rad @ w.abs().T
    assert torch.all(c_lo <= exact_lo) and torch.all(c_hi >= exact_hi)  # sound
    assert torch.allclose(c_lo, exact_lo, rtol=0, atol=1e-12) and torch.allclose(c_hi, exact_hi, rtol=0, atol=1e-12)
    assert float((i_hi - i_lo).sum()) > float((c_hi - c_lo).sum()) * 1.01  # IBP is looser
    pts = lo + (hi - lo) * torch.rand(2000, 6, dtype=torch.float64)
    z = net[1](net[0](pts)).detach()
    assert torch.all(z >= c_lo) and torch.all(z <= c_hi)
    out_lo, out_hi = bound(g, lo, hi, method="crown")
    y = net(pts).detach()
    assert torch.all(y >= out_lo) and torch.all(y <= out_hi)
