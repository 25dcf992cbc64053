"""Prune BaB domains whose first-layer ReLU splits no input realises (a batched Lagrangian / Farkas search).

The first ReLU's input is affine, ``z = A x + b``; a domain's splits there ask ``h_i(x) = s_i z_i(x) >= 0``. They are
jointly infeasible on the box iff some ``mu >= 0`` has ``F(mu) = max_{x in box} sum_i mu_i h_i(x) < 0`` (LP
duality). ``F`` is convex and positively homogeneous, so it is minimised over the simplex of the split neurons by
exponentiated subgradient steps, batched over domains. A found ``mu`` is only a candidate: the caller proves
``sum_i mu_i s_i z_i(x) < 0`` on the domain rigorously (``verify.lipschitz.bab._certified_infeasible``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from verify.graph import Graph
from verify.ops.activation import Relu
from verify.ops.base import LinearOp
from verify.rounding import F64


class FirstLayerSplits:
    """The affine map ``x -> z`` into the first ReLU (float64, a heuristic copy: certificates are checked apart)."""

    MAX_ENTRIES = 1 << 21  # ``h * n`` above this (image inputs: a CNN's first conv) is not worth a dense map

    def __init__(self, name: str, a: Tensor, b: Tensor) -> None:
        self.name, self.a, self.b = name, a, b  # a [h, n], b [h]

    @classmethod
    def of(cls, graph: Graph) -> FirstLayerSplits | None:
        """``None`` unless every node before the first ReLU is affine (an MLP or a CNN's first conv)."""
        relu = next((n for n in graph.nodes if isinstance(n.op, Relu)), None)
        if relu is None or graph.input_numel * int(torch.Size(relu.shape).numel()) > cls.MAX_ENTRIES:
            return None
        g64 = graph.with_dtype(F64)
        n = g64.input_numel
        dev = g64.device
        pts = torch.cat([torch.zeros(1, n, dtype=F64, device=dev), torch.eye(n, dtype=F64, device=dev)])
        pts = pts.reshape(n + 1, *g64.input_shape)
        vals = {g64.input_name: pts}
        for node in g64.nodes:
            if node.name == relu.name:
                break
            if not isinstance(node.op, LinearOp):
                return None
            vals[node.name] = node.op.forward(*[vals[i] for i in node.inputs])
        z = vals[relu.inputs[0]].reshape(n + 1, -1)
        return cls(relu.inputs[0], (z[1:] - z[0]).T.contiguous(), z[0].clone())

    def candidates(self, split: Tensor, x_lo: Tensor, x_hi: Tensor, iters: int = 80) -> tuple[Tensor, Tensor]:
        """``(flag [m], mu [m, h])``: domains (rows of ``split`` ``[m, *shape]`` in {-1, 0, 1}; boxes ``x_lo`` /
        ``x_hi`` shared ``[1, ...]`` or ``[m, ...]``) where a ``mu`` on the simplex of their split neurons gave
        ``F(mu) < 0`` in float64 (to be certified)."""
        m = split.shape[0]
        s = split.reshape(m, -1).to(F64)
        on = s != 0
        flag = torch.zeros(m, dtype=torch.bool, device=split.device)
        best_mu = torch.zeros_like(s)
        rows = on.sum(1) >= 2  # one split alone is settled by the interval clamp of the bounds
        if not bool(rows.any()):
            return flag, best_mu
        s, on = s[rows], on[rows]
        # the boxes: one for all domains or one per domain
        lo, hi = x_lo.reshape(-1, self.a.shape[1]).to(F64), x_hi.reshape(-1, self.a.shape[1]).to(F64)
        if lo.shape[0] > 1:
            lo, hi = lo[rows], hi[rows]
        # each constraint scaled to unit mass over the boxes so the subgradient entries are O(1)
        mag = torch.maximum(lo.abs(), hi.abs()).amax(0)
        scale = self.a.abs() @ mag + self.b.abs() + 1e-300
        a, b = self.a / scale.unsqueeze(-1), self.b / scale
        mu = on.to(F64) / on.sum(1, keepdim=True)  # zero off the split neurons; the updates keep it so
        best = torch.full((s.shape[0],), torch.inf, dtype=F64, device=s.device)
        best_mu_r = mu.clone()
        for it in range(iters):
            xs = torch.where((mu * s) @ a > 0, hi, lo)  # the box maximiser of sum_i mu_i h_i
            grad = s * (xs @ a.T + b)  # h_i(xs): a subgradient of F at mu
            f = (mu * grad).sum(1)
            better = f < best
            best = torch.where(better, f, best)
            best_mu_r = torch.where(better.unsqueeze(1), mu, best_mu_r)
            mu = mu * torch.exp(-(2.0 / (1 + it) ** 0.5) * grad.clamp(-30, 30))
            mu = mu / mu.sum(1, keepdim=True)
            if it % 10 == 9 and bool((best < -1e-9).all()):
                break
        flag[rows] = best < -1e-9
        best_mu[rows] = best_mu_r / scale  # undo the row scaling: mu for the raw constraints s_i z_i
        return flag, best_mu
