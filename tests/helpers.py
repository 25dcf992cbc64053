"""Random network factories, a counterexample checker, a containment check, a gradient check, a LipMIP comparison
and a call counter shared by the tests."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import torch
import torch.nn as nn

ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Tanh)


class Residual(nn.Module):
    def __init__(self, d: int, h: int, act: type[nn.Module], out: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, out)
        self.act1, self.act2 = act(), act()

    def forward(self, x):
        h = self.act1(self.fc1(x))
        h = self.act2(h + self.fc2(h))
        return self.fc3(h)


def random_relu_mlp(d: int, hidden: list[int], seed: int) -> nn.Sequential:
    """A float64 ReLU MLP ``d -> hidden -> 1`` with the issue-16 initialisation: weights N(0, 1/fan_in), biases
    N(0, 0.3)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [d, *hidden]
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], 1))
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 1 / math.sqrt(m.in_features))
                m.bias.normal_(0, 0.3)
    return nn.Sequential(*layers).double()


def random_network(seed: int) -> tuple[nn.Module, tuple[int, ...], str]:
    """A small random network of one of several families; returns (module, input shape, description)."""
    g = torch.Generator().manual_seed(seed)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    torch.manual_seed(seed)
    act = ACTIVATIONS[ri(0, 2)]
    family = ("mlp", "cnn", "residual", "cnn_bn")[seed % 4]
    if family == "mlp":
        sizes = [ri(1, 6)] + [ri(2, 12) for _ in range(ri(1, 3))] + [ri(1, 4)]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(act())
        net, shape = nn.Sequential(*layers), (sizes[0],)
    elif family == "residual":
        d = ri(1, 5)
        net, shape = Residual(d, ri(2, 10), act, ri(1, 4)), (d,)
    else:
        c, side = ri(1, 2), ri(5, 8)
        k, s, p = ri(2, 3), ri(1, 2), ri(0, 1)
        ch = ri(2, 4)
        layers = [nn.Conv2d(c, ch, k, stride=s, padding=p)]
        if family == "cnn_bn":
            bn = nn.BatchNorm2d(ch)
            bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.data.uniform_(0.5, 1.5, generator=g)
            bn.bias.data.uniform_(-0.5, 0.5, generator=g)
            layers.append(bn)
        layers.append(act())
        pool = ri(0, 2)
        if pool == 1:
            layers.append(nn.MaxPool2d(2, stride=ri(1, 2)))
        elif pool == 2:
            layers.append(nn.AvgPool2d(2, stride=ri(1, 2)))
        layers.append(nn.Flatten())
        with torch.no_grad():
            n_flat = nn.Sequential(*layers)(torch.zeros(1, c, side, side)).numel()
        layers += [nn.Linear(n_flat, ri(2, 8)), nn.ReLU()]
        layers.append(nn.Linear(layers[-2].out_features, ri(1, 4)))
        net, shape = nn.Sequential(*layers), (c, side, side)
    for p in net.parameters():
        p.data.mul_(1.5)  # larger weights: more unstable neurons, harder relaxations
    return net.eval(), shape, f"{family}/{act.__name__}"


def directional_derivatives(loss: torch.Tensor, loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor],
                            eps: float = 1e-6) -> tuple[float, float]:
    """``(autograd, central finite difference)`` derivative of ``loss`` = ``loss_fn()`` along a random direction
    (``torch.randn_like`` per parameter) of ``params``; the parameters are restored afterwards."""
    grads = torch.autograd.grad(loss, params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        plus = loss_fn()
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        minus = loss_fn()
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
    return analytic.item(), ((plus - minus) / (2 * eps)).item()


def scaled_mlp_box(seed: int, sizes: tuple[int, ...]):
    """``(graph, lo, hi)``: a ReLU MLP with weights scaled by 1.4 (many unstable neurons) over a box of half-width
    0.25 around a random point of the unit cube."""
    from models.zoo import mlp
    from verify import from_torch

    torch.manual_seed(seed)
    net = mlp(list(sizes)).eval()
    for p in net.parameters():
        p.data *= 1.4
    graph = from_torch(net, (sizes[0],))
    x0 = torch.rand(sizes[0])
    return graph, x0 - 0.25, x0 + 0.25


def graph_checker(graph, rows):
    """A BaB counterexample check that trusts the graph itself (no ONNX file in these tests): the first
    candidate violating ``rows``, as float64, or None."""
    def check(cands):
        with torch.no_grad():
            y = graph(cands).reshape(cands.shape[0], -1)
        bad = rows.violated(cands, y)
        return cands[bad.nonzero()[0, 0]].double().numpy() if bad.any() else None
    return check


def exit_spawned_rank() -> None:
    """End an ``mp.spawn``-ed rank after its clean ``destroy_process_group`` without interpreter finalisation.

    In about one of twenty CI runs a rank still aborted during finalisation ("terminate called without an active
    exception": gloo threads destroyed with the interpreter), failing a test whose results were already on disk.
    An exception in the rank never gets here, so failures still reach ``mp.spawn``."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def assert_converged_to_lipmip(up: float, exact, net: nn.Module, sampled: float) -> None:
    """A converged Lipschitz BaB bound ``up`` (l1 gradient norm, output 0) against LipMIP's optimal solve ``exact``:
    at least the gradient norm attained at the MIP's own point (float64, exact to rounding) and the ``sampled``
    maximum; within 1e-6 of the MIP's objective, which may exceed the maximum by the solver's feasibility tolerances
    (measured: 1.5e-9 with gurobipy 13.0.3, where the BaB's bound equals the attained value to 1e-15); and at most
    the MIP's upper bound."""
    assert exact.status == ["optimal"]
    x = torch.tensor(exact.x[0], dtype=torch.float64).reshape(1, -1).requires_grad_(True)
    copy.deepcopy(net).double()(x)[0, 0].backward()
    attained = float(x.grad.abs().sum())
    assert up >= attained * (1 - 1e-12) and up >= sampled, (up, attained, sampled)
    assert abs(up - exact.value[0]) <= 1e-6 * (1 + abs(exact.value[0])), (up, exact.value[0])
    assert up <= exact.upper[0] * (1 + 1e-6), (up, exact.upper[0])


def box_corners(lo: torch.Tensor, hi: torch.Tensor, limit: int = 64) -> torch.Tensor:
    """Every corner of the box ``[lo, hi]`` (any shape, flattened) up to 6 dimensions, else ``limit`` random ones."""
    d = lo.numel()
    if d <= 6:
        bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))
    else:
        bits = torch.randint(0, 2, (limit, d)).float()
    return lo.reshape(1, -1) + bits * (hi - lo).reshape(1, -1)


def extreme_points(net, lo, hi, k: int, steps: int = 25) -> torch.Tensor:
    """Points ``[2k, lo.numel()]`` pushing each of the ``k`` outputs of ``net`` up and down (signed gradient steps
    from 2k random points of the box ``[lo, hi]``, per-sample shape)."""
    d = lo.numel()
    x = (lo.reshape(1, -1) + torch.rand(2 * k, d) * (hi - lo).reshape(1, -1)).requires_grad_(True)
    sign = torch.cat([torch.ones(k), -torch.ones(k)])
    sel = torch.cat([torch.eye(k), torch.eye(k)])
    step = (hi - lo).reshape(1, -1) / 8
    for _ in range(steps):
        y = net(x.reshape(2 * k, *lo.shape)).reshape(2 * k, -1)
        obj = (sign * (y * sel).sum(-1)).sum()
        (g,) = torch.autograd.grad(obj, x)
        with torch.no_grad():
            x += step * g.sign()
            x.copy_(torch.maximum(torch.minimum(x, hi.reshape(1, -1)), lo.reshape(1, -1)))
            step *= 0.85
    return x.detach()


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` (for the test's duration) so that every call appends to the returned list; the real
    function still runs. Shows which code path a bound took."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def assert_box_contains(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, lower, upper, label: str = "",
                        samples: int = 40) -> None:
    """The centre, both ends and ``samples`` random points of each box ``[lo[b], hi[b]]``, evaluated by a float64 copy
    of ``net`` (float32 weights are exact there), lie inside ``[lower[b], upper[b]]`` with zero tolerance."""
    ref = copy.deepcopy(net).double()
    for b in range(lo.shape[0]):
        l64, h64 = lo[b].double(), hi[b].double()
        pts = torch.stack([(l64 + h64) / 2, l64, h64]
                          + [l64 + torch.rand_like(l64) * (h64 - l64) for _ in range(samples)])
        with torch.no_grad():
            y = ref(pts).reshape(pts.shape[0], -1)
        assert (y >= lower[b].double()).all(), f"{label}: value below the lower bound"
        assert (y <= upper[b].double()).all(), f"{label}: value above the upper bound"
