"""torch modules -> IR: outputs match the module, bounds are differentiable w.r.t. parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.zoo import small_cnn
from tests.helpers import directional_derivatives
from verify import bound, from_torch
from verify.errors import UnsupportedOperator


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = torch.sigmoid(h + self.conv2(h))
        h = self.pool(h)
        return self.fc(h.view(h.size(0), -1)) * 0.5 - 1.0


@pytest.mark.parametrize("make,shape", [
    (lambda: ResNetLike().eval(), (1, 6, 6)),
    (lambda: small_cnn().eval(), (3, 32, 32)),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 2)).eval(),
     (3, 4)),
    (lambda: nn.Linear(6, 3), (6,)),  # bare layers, not wrapped in a container
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
])
def test_traced_graph_matches_module(make, shape):
    torch.manual_seed(0)
    net = make()
    x = torch.randn(7, *shape)
    graph = from_torch(net, shape)
    with torch.no_grad():
        torch.testing.assert_close(graph(x).reshape(7, -1), net(x).reshape(7, -1), atol=1e-5, rtol=1e-5)


def test_crown_bound_gradient_matches_finite_differences():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x0 = torch.rand(2, 4, dtype=torch.float64)
    graph = from_torch(net, (4,))

    def objective():
        lower, upper = bound(graph, x0 - 0.1, x0 + 0.1, method="crown")
        return (upper - lower).sum()

    w = net[2].weight
    (grad,) = torch.autograd.grad(objective(), w)
    assert grad.abs().sum() > 0
    h = 1e-6
    for idx in [(0, 0), (3, 5), (7, 2)]:
        with torch.no_grad():
            w[idx] += h
            up = objective().item()
            w[idx] -= 2 * h
            down = objective().item()
            w[idx] += h
        assert abs((up - down) / (2 * h) - grad[idx].item()) < 1e-4 * (1 + abs(grad[idx].item()))


def test_ibp_bounds_train_parameters():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x0 = torch.rand(8, 3)
    widths = []
    for _ in range(30):
        lower, upper = bound(net, x0 - 0.2, x0 + 0.2, method="ibp")
        loss = (upper - lower).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        widths.append(loss.item())
    assert widths[-1] < 0.8 * widths[0]


def test_unsupported_module_is_named():
    net = nn.Sequential(nn.Linear(2, 2), nn.Hardshrink())
    with pytest.raises(UnsupportedOperator, match="Hardshrink"):
        from_torch(net, (2,))


def test_bound_takes_one_unbatched_sample_of_a_module():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(4)
    lower, upper = bound(lin, x - 0.1, x + 0.1)
    assert lower.shape == (1, 2) and (lower <= lin(x)).all() and (lin(x) <= upper).all()
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2))
    img = torch.rand(2, 5, 5)  # [C, H, W]: not a batch of 2 images of shape (5, 5)
    lower, upper = bound(conv, img - 0.01, img + 0.01)
    y = conv(img[None])
    assert lower.shape == (1, 2) and (lower <= y).all() and (y <= upper).all()
    lower2, _ = bound(conv, (img - 0.01)[None], (img + 0.01)[None])
    assert torch.equal(lower, lower2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bound_refuses_non_finite_boxes_with_a_value_error(bad):
    x = torch.zeros(1, 4)
    hi = x.clone()
    hi[0, 2] = bad
    with pytest.raises(ValueError, match="finite"):
        bound(nn.Linear(4, 2), x, hi)
    with pytest.raises(ValueError, match="empty"):
        bound(nn.Linear(4, 2), x + 1, x)


def test_bounded_module_traces_once_and_reads_the_current_parameters():
    from verify import BoundedModel

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    bm = BoundedModel(net, (4,))
    x = torch.rand(2, 4)
    before = bm.bound(x - 0.1, x + 0.1, method="crown-ibp")
    with torch.no_grad():
        net[2].bias += 1.0  # the traced graph must see the change
    after = bm.bound(x - 0.1, x + 0.1, method="crown-ibp")
    assert torch.allclose(after[0], before[0] + 1.0, atol=1e-4) and torch.allclose(after[1], before[1] + 1.0, atol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_certified_training_bounds_reach_every_parameter_and_match_finite_differences(method):
    from verify import BoundedModel

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 6), nn.ReLU(),
                        nn.Linear(6, 3)).double()
    bm = BoundedModel(net, (1, 6, 6))
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)

    def loss():
        lower, _ = bm.bound(x - 0.05, x + 0.05, C=C, method=method)
        return torch.nn.functional.softplus(-lower).sum()

    params = list(net.parameters())
    value = loss()
    grads = torch.autograd.grad(value, params, retain_graph=True)
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    analytic, numeric = directional_derivatives(value, loss, params, eps=1e-6)
    assert abs(analytic - numeric) <= 1e-5 * (1 + abs(numeric))


@pytest.mark.parametrize("method", ["crown", "alpha-crown", "crown-ibp"])
def test_large_batches_are_split_under_the_memory_budget_without_changing_a_bound(method, monkeypatch):
    """``boxes_per_pass`` plans a box at 48 n m bytes (n, m the widest nodes): a tiny budget forces one box per
    pass, and the bounds equal those of one pass over the whole batch."""
    from verify.api import as_graph, boxes_per_pass
    torch.manual_seed(0)
    net = small_cnn(1, 8, 10)
    x = torch.rand(5, 1, 8, 8)
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    whole = bound(net, lo, hi, method=method, input_shape=(1, 8, 8), iterations=3)
    graph = as_graph(net, (1, 8, 8))
    monkeypatch.setenv("CLARKE_BOUND_MEMORY_GB", "1e-9")
    assert boxes_per_pass(graph, method, 10) == 1
    split = bound(net, lo, hi, method=method, input_shape=(1, 8, 8), iterations=3)
    for a, b in zip(whole, split, strict=True):
        assert a.shape == (5, 10)
        assert torch.equal(a, b) if method != "alpha-crown" else torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("CLARKE_BOUND_MEMORY_GB", "1000")
    assert boxes_per_pass(graph, method, 10) >= 5


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_lower_bound_only_equals_the_lower_half_of_both(method):
    """``bound_upper=False`` (auto_LiRPA's flag) passes only the spec rows: same lower bound, upper None."""
    torch.manual_seed(1)
    net = small_cnn(1, 8, 10)
    x = torch.rand(3, 1, 8, 8)
    lo, hi = (x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1)
    C = torch.eye(10)[:4] - torch.eye(10)[5]
    both = bound(net, lo, hi, C=C, method=method, input_shape=(1, 8, 8), iterations=3)
    lower, upper = bound(net, lo, hi, C=C, method=method, input_shape=(1, 8, 8), iterations=3, bound_upper=False)
    assert upper is None and lower.shape == (3, 4)
    if method == "alpha-crown":
        assert torch.allclose(lower, both[0], rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(lower, both[0])


class _ShapeView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.l = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.nn.functional.relu(self.c(x))
        return self.l(h.view(x.shape[0], -1))


class _Cat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = torch.nn.Linear(4, 5), torch.nn.Linear(4, 3), torch.nn.Linear(20, 2)
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        h = torch.cat([torch.sigmoid(self.a(x)), torch.tanh(self.b(x))], dim=1)
        return self.o(torch.cat((self.act(3 * h), -h, torch.nn.functional.leaky_relu(x, 0.2)), -1))


class _Clamps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = torch.nn.Linear(4, 6), torch.nn.Linear(24, 2)
        self.ht = torch.nn.Hardtanh(-2.0, 1.0)

    def forward(self, x):
        h = 3 * self.a(x)
        parts = [torch.clamp(h, min=-0.5), torch.clamp(h, max=0.3), torch.nn.functional.hardtanh(h), self.ht(h)]
        return self.o(torch.cat(parts, 1))


class _Gate(torch.nn.Module):
    """A gated unit and a square: products of two variables."""

    def __init__(self):
        super().__init__()
        self.a, self.g, self.o = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x)) * torch.sigmoid(self.g(x))
        return self.o(h ** 2 - h * h + h * torch.relu(h))


@pytest.mark.parametrize("net_cls, shape", [(_ShapeView, (1, 6, 6)), (_Cat, (4,)), (_Clamps, (4,)), (_Gate, (4,))])
def test_functional_cat_shape_views_and_clamps_trace_and_bound_soundly(net_cls, shape):
    torch.manual_seed(0)
    net = net_cls().eval()
    graph = from_torch(net, shape)
    x = torch.rand(3, *shape) * 2 - 1
    assert torch.allclose(graph(x.reshape(3, 1, *shape)).reshape(3, -1), net(x), atol=1e-6)
    pts = x + (torch.rand(3000, *x.shape) * 2 - 1) * 0.3
    with torch.no_grad():
        ys = net.double()(pts.reshape(-1, *shape).double()).reshape(3000, 3, -1)
    net.float()
    for method in ("ibp", "crown", "alpha-crown"):
        lo, hi = bound(graph, x - 0.3, x + 0.3, method=method)
        assert (ys >= lo.double()).all() and (ys <= hi.double()).all(), method


class _Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 12)

    def forward(self, x):
        h = self.fc(x).view(x.shape[0], 3, 4)
        return torch.cat([h.sum(-1), torch.mean(h, dim=1), h.mean((1, 2), keepdim=True).view(x.shape[0], 1)], dim=1)


def test_sums_and_means_over_sample_axes_trace_and_bound_soundly():
    torch.manual_seed(0)
    net = _Reductions().double()
    graph = from_torch(net, (6,))
    x = torch.rand(5, 6, dtype=torch.float64)
    torch.testing.assert_close(graph(x).reshape(5, -1), net(x), rtol=1e-12, atol=1e-12)
    c = torch.rand(1, 6, dtype=torch.float64)
    pts = c - 0.2 + 0.4 * torch.rand(3000, 6, dtype=torch.float64)
    ys = net(pts).detach()
    for method in ("ibp", "crown"):
        lo, hi = bound(net, c - 0.2, c + 0.2, method=method)
        assert (ys >= lo).all() and (ys <= hi).all(), method


@pytest.mark.parametrize("reduce", [lambda x: x.sum(), lambda x: torch.mean(x), lambda x: x.sum(0)])
def test_reductions_over_the_batch_axis_are_refused(reduce):
    class Net(nn.Module):
        def forward(self, x):
            return reduce(x)

    with pytest.raises(UnsupportedOperator, match="batch axis"):
        from_torch(Net(), (4,))


def test_an_identity_network_bounds_its_own_box():
    for net in (nn.Sequential(nn.Identity()), nn.Sequential(nn.Dropout()).eval()):
        lower, upper = bound(net, torch.zeros(3), torch.ones(3))
        assert (lower <= 0).all() and (lower > -1e-5).all() and (upper >= 1).all() and (upper < 1 + 1e-5).all()
