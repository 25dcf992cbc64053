"""Forward bounds plus Jacobian bounds: IBP / CROWN / alpha-CROWN upper bounds of ``||J_j||_1`` over a box,
and the naive product of operator norms.

``L_inf(f_j, X) = sup_{x in X} sup_{J in Clarke df(x)} ||J_j||_1``; bounds on every forward pre-activation
``[l_z, u_z]`` fix the Clarke gates, the gradient graph is then bounded with no x-dependence left.

Rigour: the forward bounds are rigorous (``verify.bounds``), the Jacobian bounds too (``verify.lipschitz.jacobian``);
every returned upper bound is float64 and holds for the exact network as stored (its ``weight_err`` included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from verify.bounds.crown import AlphaStore, intermediate_bounds
from verify.errors import UnsupportedOperator
from verify.graph import Graph
from verify.lipschitz.gates import has_derivative_rule, unbounded_derivative
from verify.lipschitz.jacobian import JacobianGraph, abs_adjoint, err_adjoint, seed_tensor, step_gamma
from verify.ops.activation import LeakyRelu, Relu
from verify.ops.affine import Scale
from verify.ops.base import Bounds, LinearOp
from verify.ops.linear import Conv2d, Dense
from verify.ops.pooling import AvgPool2d, MaxPool2d
from verify.ops.shape import Pad, Reshape, Transpose
from verify.rounding import F64, gamma, sum_up, unit_roundoff, up


def forward_bounds(graph: Graph, x_lo: Tensor, x_hi: Tensor, method: str,
                   splits: Mapping[str, Tensor] | None = None,
                   reference: Mapping[str, Bounds] | None = None, alpha_iters: int = 20) -> dict[str, Bounds]:
    """Sound bounds of every forward node. ``alpha``: intermediate slopes optimised to shrink the widths of
    unstable pre-activations; the elementwise best of all iterates is kept (each is sound)."""
    with torch.no_grad():
        if method == "ibp":
            return intermediate_bounds(graph, x_lo, x_hi, "ibp", splits=splits, reference=reference)
        bounds = intermediate_bounds(graph, x_lo, x_hi, "crown", splits=splits, reference=reference)
    if method != "alpha" or alpha_iters <= 0:
        return bounds
    from verify.bounds.alpha import _Adam

    targets = [n.inputs[0] for n in graph.nodes if n.op.needs_input_bounds]
    store = AlphaStore(graph)
    best = {k: (v[0].detach(), v[1].detach()) for k, v in bounds.items()}
    opt = None
    for _ in range(alpha_iters):
        with torch.enable_grad():
            cur = intermediate_bounds(graph, x_lo, x_hi, "crown", alpha_store=store, reference=best, splits=splits)
            params = list(store.params.values())
            if not params:
                break
            loss = sum((cur[t][1] - cur[t][0]).sum() for t in targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        if opt is None:
            opt = _Adam(params, 0.5, 0.98)
        opt.step(grads)
        with torch.no_grad():
            best = {k: (torch.maximum(best[k][0], v[0].detach()), torch.minimum(best[k][1], v[1].detach()))
                    for k, v in cur.items()}
            store.project(best)
    return best


def expand_bounds(fb: Mapping[str, Bounds], index: Tensor, names: Sequence[str]) -> dict[str, Bounds]:
    """Forward bounds of ``names`` re-indexed from boxes to (box, output) pairs."""
    return {k: (fb[k][0][index], fb[k][1][index]) for k in names}


def jacobian_bounds(jg: JacobianGraph, fb: Mapping[str, Bounds], outputs: Sequence[int], crown: bool = True,
                    splits: Mapping[str, Tensor] | None = None) -> tuple[Tensor, dict]:
    """Upper bounds ``[B, K]`` of ``||J_j||_1`` for ``B`` boxes (forward bounds ``fb``) and ``K`` outputs, all
    (box, output) pairs in one batch ``N = B K`` (no loop over classes)."""
    g = jg.graph
    x_lo = fb[g.input_name][0]
    b, k = x_lo.shape[0], len(outputs)
    index = torch.arange(b, device=x_lo.device).repeat_interleave(k)
    fbn = expand_bounds(fb, index, jg.gate_inputs)
    spl = None if splits is None else {kk: v[index] for kk, v in splits.items()}
    seeds = seed_tensor(g, outputs, x_lo.dtype).repeat(b, *([1] * len(g.output_shape)))
    gates = jg.gates(fbn, spl)
    gb = jg.bounds(gates, seeds, crown)
    up = jg.l1_upper(gates, gb, seeds, crown)
    return up.reshape(b, k), {"gates": gates, "gb": gb, "seeds": seeds}


# l_inf -> l_inf Lipschitz constants (exact; LeakyRelu's slope is in [0, 1])
_ACT_LIP = {Relu: 1.0, LeakyRelu: 1.0, MaxPool2d: 1.0}  # the other activations state ``global_lipschitz``


def naive_bound(graph: Graph, outputs: Sequence[int]) -> Tensor:
    """``||W_L[j, :]||_1 prod_k ||W_k||_{inf->inf} prod Lip(sigma)`` for chain graphs, float64 ``[K]``.

    Graphs with fan-out (residual adds) use the same product along the graph with absolute adjoints
    (``1^T |L_1^T| ... |L^T| |c_j|``), which is a valid, tighter product bound. Rigorous for the exact weights:
    norms of ``|W| + weight_err`` in float64, each rounded sum and product rounded up (``gamma_n`` then ``up``)."""
    g64 = graph.with_dtype(F64)
    if any(unbounded_derivative(n.op) for n in g64.nodes):  # no global constant (inf times a zero weight: NaN)
        return torch.full((len(outputs),), math.inf, dtype=F64, device=g64.device)
    chain = all(len(n.inputs) == 1 for n in g64.nodes) and _single_use(g64) and all(
        _inf_norm(n.op) is not None for n in g64.nodes if isinstance(n.op, LinearOp))
    seeds = seed_tensor(g64, outputs, F64)
    k = len(outputs)
    if chain:
        # the last linear map is applied to the seed exactly (||W_L[j,:]||_1), the rest by operator norms
        lam = seeds.unsqueeze(0)  # [1, K, *out]
        factor = torch.ones(k, dtype=F64, device=seeds.device)
        first = True
        for n in reversed(g64.nodes):
            if isinstance(n.op, LinearOp):
                if first:
                    lam = _abs_step(n.op, 0, lam.abs())
                    first = False
                else:
                    factor = up(factor * _inf_norm(n.op))
            elif type(n.op) in _ACT_LIP:
                factor = up(factor * _ACT_LIP[type(n.op)])
            elif has_derivative_rule(n.op):
                factor = up(factor * n.op.global_lipschitz)
            else:
                raise UnsupportedOperator(n.op.display_name, n.name, detail="Lipschitz bounds: no Jacobian rule")
        return up(factor * sum_up(lam.reshape(k, -1).abs()))
    # general DAG: |adjoint| with every activation gate at its global Lipschitz constant
    acc: dict[str, Tensor] = {g64.output: seeds.abs().unsqueeze(0)}
    for n in reversed(g64.nodes):
        lam = acc.pop(n.name, None)
        if lam is None:
            continue
        if isinstance(n.op, LinearOp):
            ins = [_abs_step(n.op, i, lam) for i in range(len(n.inputs))]
        elif isinstance(n.op, Relu | LeakyRelu):
            ins = [lam * _ACT_LIP[type(n.op)]]
        elif has_derivative_rule(n.op):
            ins = [lam * n.op.global_lipschitz]
        else:
            raise UnsupportedOperator(n.op.display_name, n.name, detail="naive Lipschitz bound of a non-chain graph")
        for i, li in zip(n.inputs, ins, strict=True):
            if li is not None:  # a rounded sum of non-negative terms: (1 + 2 u) covers it
                acc[i] = up((acc[i] + li) * (1 + 2 * unit_roundoff(F64))) if i in acc else li
    return sum_up(acc[g64.input_name].reshape(k, -1))


def _abs_step(op: LinearOp, k: int, lam: Tensor) -> Tensor | None:
    """``(|L_k| + Err_k)^T lam`` for ``lam >= 0`` in float64, rounded up (``gamma_n`` per dot product)."""
    t = abs_adjoint(op, lam)[k]
    if t is None:
        return None
    t = t * (1 + 2 * step_gamma(op, F64))
    werr = err_adjoint(op, k, lam)
    return up(t if werr is None else t + 1.01 * werr)


def _single_use(graph: Graph) -> bool:
    seen: set[str] = set()
    for n in graph.nodes:
        for i in n.inputs:
            if i in seen:
                return False
            seen.add(i)
    return True


def _inf_norm(op: LinearOp) -> Tensor | None:
    """An upper bound of ``||L*||_{inf->inf}`` = the largest row sum of ``|L*|`` (float64 op; ``|L*| <= |L| + Err``);
    None when no rule applies."""
    if isinstance(op, Dense):
        w = op.weight.abs() if op.weight_err is None else op.weight.abs() + op.weight_err
        return up(w.sum(1).max() * (1 + 2 * gamma(w.shape[1], F64)))
    ones = torch.ones(1, *op.in_shapes[0], dtype=op.dtype(), device=op.device())
    if isinstance(op, Conv2d):
        w = op.weight.abs() if op.weight_err is None else op.weight.abs() + op.weight_err
        return up(op._conv(ones, w, None).max() * (1 + 2 * step_gamma(op, F64)))
    if isinstance(op, Scale):
        if op.weight is None:
            return torch.ones((), dtype=F64, device=op.device())
        w = op.weight.abs() if op.weight_err is None else up(op.weight.abs() + op.weight_err)
        return w.max().to(F64)
    if isinstance(op, Reshape | Transpose | Pad):
        return torch.ones((), dtype=F64, device=op.device())
    if isinstance(op, AvgPool2d):
        return up(op.forward(ones).max() * (1 + 2 * step_gamma(op, F64)))
    return None
