"""Lower bounds on the local Lipschitz constant: ``max ||grad f_j(x)||_1`` over sampled and PGD points.

Every evaluated gradient is a (Clarke) Jacobian row at a point of the box, so the maximum is a valid
lower bound. PGD ascends ``||grad f_j||_1`` by double backprop; for piecewise-linear nets that gradient is
zero, so points are also moved by a softplus-smoothed surrogate (``relu ~ softplus(beta z) / beta``).

The search runs in the model's precision, but a float gradient is not the exact one: the value reported for the
best point is certified (:func:`point_gradient_bounds`): rigorous float64 bounds ``[l_i, u_i]`` of every Clarke
Jacobian row at that exact point (the Jacobian graph on a point box), and ``sum_i max(l_i, -u_i, 0)``, rounded
down, is at most the norm of each of them, hence at most the true local constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from verify.bounds.crown import intermediate_bounds
from verify.graph import Graph
from verify.lipschitz.jacobian import JacobianGraph
from verify.ops.activation import Relu
from verify.rounding import F64, down, gamma


def gradients(graph: Graph, x: Tensor, outputs: Sequence[int], create_graph: bool = False) -> Tensor:
    """Jacobian rows ``[P, K, n]`` of the selected flat outputs at the points ``x [P, *input_shape]``."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        y = graph(x).reshape(x.shape[0], -1)
        rows = []
        for j in outputs:
            (g,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=True, create_graph=create_graph)
            rows.append(g.reshape(x.shape[0], -1))
    return torch.stack(rows, 1)


def point_gradient_bounds(graph: Graph, x: Tensor, outputs: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Float64 bounds ``[P, n]`` containing ``d f_{outputs[p]} / dx`` at the exact point ``x[p]`` for every Clarke
    Jacobian there (interval bounds of the Jacobian graph in float64 on point boxes, rounding paid)."""
    g64 = graph.with_dtype(F64)
    x64 = x.detach().to(F64).reshape(x.shape[0], *g64.input_shape)
    p = x64.shape[0]
    jg = JacobianGraph(g64)
    with torch.no_grad():
        fb = intermediate_bounds(g64, x64, x64, "ibp")
        seeds = torch.zeros(p, g64.output_numel, dtype=F64, device=x64.device)
        seeds[torch.arange(p, device=x64.device), torch.as_tensor(list(outputs), device=x64.device)] = 1.0
        seeds = seeds.reshape(p, *g64.output_shape)
        gb = jg.bounds(jg.gates(fb), seeds, crown=False)
    lo, hi = gb[g64.input_name]
    return lo.reshape(p, -1), hi.reshape(p, -1)


def certified_l1(graph: Graph, x: Tensor, outputs: Sequence[int]) -> Tensor:
    """Float64 ``[P]``: a rigorous lower bound of ``||J_{outputs[p]}(x[p])||_1`` for every Clarke Jacobian at
    ``x[p]`` (so of the local Lipschitz constant of any box containing the point)."""
    lo, hi = point_gradient_bounds(graph, x, outputs)
    mig = torch.maximum(torch.maximum(lo, -hi), torch.zeros_like(lo))  # min |g| over [lo, hi]
    s = mig.sum(-1)
    return down(s - gamma(mig.shape[-1], F64) * s).clamp(min=0.0)


def kink_free(graph: Graph, x: Tensor, rel: float = 1e-9) -> Tensor:
    """``[P]`` mask of points where the network is differentiable: no ReLU input within ``rel`` (relative) of 0
    and no MaxPool window with a tie. Autograd at a kink returns one chain-rule product (``relu'(0) = 0``),
    which need not be a Clarke Jacobian (``x - relu(x) + relu(-x) = 0`` has autograd slope 1 at 0), so
    only kink-free points count for lower bounds and counterexamples."""
    from verify.ops.base import merge_leading
    from verify.ops.pooling import MaxPool2d

    with torch.no_grad():
        vals = graph.forward_all(x)
        ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for n in graph.nodes:
            z = vals[n.inputs[0]] if n.inputs else None
            if isinstance(n.op, Relu):
                zf = z.reshape(x.shape[0], -1)
                scale = zf.abs().amax(1, keepdim=True).clamp(min=1.0)
                ok &= (zf.abs() > rel * scale).all(1)
            elif isinstance(n.op, MaxPool2d):
                w = n.op._windows(merge_leading(z, 3)[0])  # [P*lead, C, K, L]
                top2 = w.topk(2, dim=2).values if w.shape[2] > 1 else None
                if top2 is not None:
                    gap = (top2[:, :, 0] - top2[:, :, 1]).reshape(x.shape[0], -1)
                    scale = top2[:, :, 0].abs().reshape(x.shape[0], -1).amax(1, keepdim=True).clamp(min=1.0)
                    ok &= (gap > rel * scale).all(1)
    return ok


class _Smoothed:
    """Evaluate a graph with ReLU replaced by ``softplus(beta z) / beta`` (a PGD surrogate only)."""

    def __init__(self, graph: Graph, beta: float):
        self.graph, self.beta = graph, beta

    def __call__(self, x: Tensor) -> Tensor:
        g = self.graph
        vals = {g.input_name: x}
        for n in g.nodes:
            ins = [vals[i] for i in n.inputs]
            if isinstance(n.op, Relu):
                vals[n.name] = torch.nn.functional.softplus(ins[0], beta=self.beta)
            else:
                vals[n.name] = n.op.forward(*ins)
        return vals[g.output]


def _grad_of(fn, x: Tensor, j: int, create_graph: bool) -> Tensor:
    y = fn(x).reshape(x.shape[0], -1)
    (g,) = torch.autograd.grad(y[:, j].sum(), x, create_graph=create_graph)
    return g


def lower_bound(graph: Graph, x_lo: Tensor, x_hi: Tensor, outputs: Sequence[int], samples: int = 2000,
                pgd_steps: int = 30, restarts: int = 16, seed: int = 0, objective: str = "l1",
                feature: int | None = None, exact_box: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Best points ``[K, *input_shape]`` of ``||grad f_j||_1`` (``objective='l1'``) or of ``-d f_j / d x_feature``
    (``'neg'``) / ``+d f_j/d x_feature`` (``'pos'``) over samples and PGD, and float64 values ``[K]`` certified at
    them: at most the objective for every Clarke Jacobian at the point. ``x_lo``/``x_hi``: ``[1, *input_shape]``;
    ``exact_box``: the float64 box the points must lie in when ``[x_lo, x_hi]`` is its outward-rounded float32
    enclosure (the points are clamped into it, exactly, before they are certified). Points are float64."""
    gen = torch.Generator(device=x_lo.device).manual_seed(seed)  # on a GPU: another random stream
    dtype = x_lo.dtype
    shape = x_lo.shape[1:]

    def score(grad_rows: Tensor, pts: Tensor) -> Tensor:  # [P, n] -> [P]; -inf at kinks
        if objective == "l1":
            val = grad_rows.abs().sum(-1)
        else:
            val = (-1.0 if objective == "neg" else 1.0) * grad_rows[:, feature]
        return torch.where(kink_free(graph, pts), val, torch.full_like(val, -math.inf))

    u = torch.rand(samples, *shape, generator=gen, dtype=dtype, device=x_lo.device)
    pts = torch.cat([(x_lo + x_hi) / 2, x_lo + (x_hi - x_lo) * u])
    grads = gradients(graph, pts, outputs)  # [P, K, n]
    best_val = torch.empty(len(outputs), dtype=dtype, device=x_lo.device)
    best_x = torch.empty(len(outputs), *shape, dtype=dtype, device=x_lo.device)
    for k in range(len(outputs)):
        sc = score(grads[:, k], pts)
        i = int(sc.argmax())
        best_val[k], best_x[k] = sc[i], pts[i]
    has_relu = any(isinstance(n.op, Relu) for n in graph.nodes)
    width = (x_hi - x_lo)
    for k, j in enumerate(outputs):
        sc = score(grads[:, k], pts)
        start = pts[sc.argsort(descending=True)[:restarts]].clone()
        x = start
        fns = [_Smoothed(graph, 20.0 / (width.max().item() + 1e-12))] if has_relu else [graph]
        for fn in fns:
            x = start.clone()
            step = 0.25 * width
            for _ in range(pgd_steps):
                with torch.enable_grad():
                    x = x.detach().requires_grad_(True)
                    g = _grad_of(fn, x, j, create_graph=True)
                    rows = g.reshape(x.shape[0], -1)
                    obj = (rows.abs().sum(-1) if objective == "l1" else
                           (-1.0 if objective == "neg" else 1.0) * rows[:, feature]).sum()
                    (d,) = torch.autograd.grad(obj, x)
                x = torch.minimum(torch.maximum(x.detach() + step * d.sign(), x_lo), x_hi)
                step = step * 0.85
                # evaluate the true (Clarke) gradient at the new points
                val = score(gradients(graph, x, [j])[:, 0], x)
                i = int(val.argmax())
                if val[i] > best_val[k]:
                    best_val[k], best_x[k] = val[i], x[i]
    # the values returned are certified at the best points (module docstring), not the float search scores
    best_x = best_x.to(F64)
    if exact_box is not None:
        best_x = torch.minimum(torch.maximum(best_x, exact_box[0].to(F64)), exact_box[1].to(F64))
    if objective == "l1":
        return certified_l1(graph, best_x, outputs), best_x
    lo, hi = point_gradient_bounds(graph, best_x, outputs)
    return (lo[:, feature] if objective == "pos" else -hi[:, feature]), best_x
