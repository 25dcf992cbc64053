"""ReLU-split branch and bound with beta-CROWN (Wang et al., NeurIPS 2021) for high-dimensional inputs.

A domain fixes some ReLUs: ``z_i >= 0`` (split +1) or ``z_i <= 0`` (split -1). Its bound is the
alpha-beta-CROWN lower bound of the spec rows: split neurons take their exact piece (bounds clamped),
and ``sum_i beta_i s_i z_i`` (``beta >= 0``, ``s = -split``) is added at the pre-activation nodes,
which is valid on the domain. Domains are processed worst bound first, in batches; the neuron to
split is chosen by BaBSR (Bunel et al., JMLR 2020): ``|min(Lambda_h, 0)| * (-u l / (u - l))``.
Intermediate bounds are the parent's, clamped by the splits; an empty clamp proves a domain infeasible.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from verify.bab.common import BabResult, CexCheck, Deadline
from verify.bounds.alpha import _Adam
from verify.bounds.crown import apply_splits, intermediate_bounds
from verify.graph import Graph
from verify.ops.activation import Relu
from verify.spec import RowSpec, minimizers

INFEASIBLE_TOL = 1e-5


class _Domains:
    """A pool of domains stored as stacked tensors (one row per domain)."""

    def __init__(self, bounds: dict[str, tuple[Tensor, Tensor]], splits: dict[str, Tensor], lb: Tensor,
                 branch_node: Tensor, branch_idx: Tensor):
        self.bounds, self.splits, self.lb = bounds, splits, lb
        self.branch_node, self.branch_idx = branch_node, branch_idx

    def __len__(self) -> int:
        return int(self.lb.shape[0])

    def take(self, idx: Tensor) -> _Domains:
        return _Domains({k: (v[0][idx], v[1][idx]) for k, v in self.bounds.items()},
                        {k: v[idx] for k, v in self.splits.items()}, self.lb[idx], self.branch_node[idx],
                        self.branch_idx[idx])

    @staticmethod
    def cat(parts: list[_Domains]) -> _Domains:
        nonempty = [p for p in parts if len(p)]
        if len(nonempty) <= 1:
            return nonempty[0] if nonempty else parts[0]
        parts = nonempty
        p0 = parts[0]
        return _Domains({k: (torch.cat([p.bounds[k][0] for p in parts]), torch.cat([p.bounds[k][1] for p in parts]))
                         for k in p0.bounds},
                        {k: torch.cat([p.splits[k] for p in parts]) for k in p0.splits},
                        torch.cat([p.lb for p in parts]), torch.cat([p.branch_node for p in parts]),
                        torch.cat([p.branch_idx for p in parts]))


class ReluBab:
    def __init__(self, graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, iterations: int = 8,
                 lr_alpha: float = 0.1, lr_beta: float = 0.05):
        self.graph, self.rows = graph, rows
        self.x_lo = lo.reshape(1, *graph.input_shape)
        self.x_hi = hi.reshape(1, *graph.input_shape)
        self.relus = [n for n in graph.nodes if isinstance(n.op, Relu)]
        self.pre = [n.inputs[0] for n in self.relus]  # split nodes (ReLU inputs)
        self.keep = [graph.input_name] + graph.bounded_nodes()
        self.iterations, self.lr_alpha, self.lr_beta = iterations, lr_alpha, lr_beta

    # -- bounding ---------------------------------------------------------------------------
    def bound(self, bounds: dict, splits: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, dict]:
        """alpha-beta-CROWN on a batch of domains: (row lower bounds [B, R], Lambda_x, feasible [B], Lambda_h)."""
        g, rows = self.graph, self.rows
        b = splits[self.pre[0]].shape[0] if self.pre else bounds[g.input_name][0].shape[0]
        bounds = dict(bounds)
        feasible = torch.ones(b, dtype=torch.bool)
        for name in self.pre:
            lo, hi = apply_splits(*bounds[name], splits[name])
            gap = (lo - hi).reshape(b, -1)
            feasible &= ~(gap > INFEASIBLE_TOL * (1 + lo.abs().reshape(b, -1))).any(1)
            bounds[name] = (lo, torch.maximum(hi, lo))
        r = rows.C.shape[0]
        alphas = {}
        for n in self.relus:
            lo, hi = bounds[n.inputs[0]]
            init = n.op.init_alpha(lo.unsqueeze(1), hi.unsqueeze(1))
            alphas[n.name] = init.expand(1, b, r, *lo.shape[1:]).clone().requires_grad_(True)
        signs = {name: -splits[name].to(bounds[name][0].dtype).unsqueeze(1) for name in self.pre}
        betas = {name: torch.zeros(b, r, *bounds[name][0].shape[1:], dtype=bounds[name][0].dtype,
                                   requires_grad=True) for name in self.pre if bool(splits[name].any())}
        params = list(alphas.values()) + list(betas.values())
        opt_a = _Adam(list(alphas.values()), self.lr_alpha, 0.98)
        opt_b = _Adam(list(betas.values()), self.lr_beta, 0.98) if betas else None
        best = torch.full((b, r), float("-inf"))
        best_lam_x = None
        record = {n.name: None for n in self.relus}
        for it in range(self.iterations + 1):
            with torch.enable_grad():
                lb, lam_x = rows.lower_bounds(g, bounds, betas={k: v * signs[k] for k, v in betas.items()},
                                              alphas=alphas, record=record)
            improved = lb.detach() > best
            best = torch.where(improved, lb.detach(), best)
            best_lam_x = lam_x.detach() if best_lam_x is None else torch.where(
                improved.unsqueeze(-1), lam_x.detach(), best_lam_x)
            if it == self.iterations or bool((rows.group_max(best).min(1).values > 0).all()):
                break
            with torch.enable_grad():
                grads = torch.autograd.grad(-lb.sum(), params, allow_unused=True)
            opt_a.step(grads[:len(alphas)])
            if opt_b is not None:
                opt_b.step(grads[len(alphas):])
            with torch.no_grad():
                for n in self.relus:
                    a = alphas[n.name]
                    a.copy_(a.clamp(0, 1))
                for v in betas.values():
                    v.clamp_(min=0)
        lam_h = {k: v.detach() for k, v in record.items() if v is not None}
        best = torch.where(feasible.unsqueeze(1), best, torch.full_like(best, float("inf")))
        return best, best_lam_x, feasible, {"lam_h": lam_h, "bounds": bounds}

    def choose(self, bounds: dict, splits: dict[str, Tensor], lam_h: dict, row: Tensor) -> tuple[Tensor, Tensor]:
        """BaBSR branching: (node index [B], flat neuron index [B]); node index -1 when nothing is left."""
        b = row.shape[0]
        best_score = torch.full((b,), -1.0)
        best_node = torch.full((b,), -1, dtype=torch.long)
        best_idx = torch.zeros(b, dtype=torch.long)
        ar = torch.arange(b)
        for k, (relu, name) in enumerate(zip(self.relus, self.pre, strict=True)):
            lo, hi = bounds[name]
            lo, hi = lo.reshape(b, -1), hi.reshape(b, -1)
            unstable = (lo < 0) & (hi > 0) & (splits[name].reshape(b, -1) == 0)
            lam = lam_h[relu.name][ar, row].reshape(b, -1)
            intercept = -hi * lo / torch.where(unstable, hi - lo, torch.ones_like(hi))
            score = lam.clamp(max=0).abs() * intercept + 1e-4 * lam.abs() * (hi - lo)
            score = torch.where(unstable, score, torch.full_like(score, -1.0))
            s, i = score.max(1)
            better = s > best_score
            best_score = torch.where(better, s, best_score)
            best_node = torch.where(better & (s >= 0), k, best_node)
            best_idx = torch.where(better, i, best_idx)
        return best_node, best_idx


@torch.no_grad()
def relu_split_bab(graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, deadline: Deadline, check: CexCheck,
                   batch: int = 32, iterations: int = 8, max_domains: int = 200_000) -> BabResult:
    bab = ReluBab(graph, rows, lo, hi, iterations=iterations)
    if not bab.pre:
        return BabResult("unknown", stats={"reason": "no ReLU to split"})
    x_lo, x_hi = bab.x_lo, bab.x_hi
    root_bounds = intermediate_bounds(graph, x_lo, x_hi, "crown")
    root_bounds = {k: root_bounds[k] for k in bab.keep}
    splits = {name: torch.zeros(1, *graph.shape_of(name), dtype=torch.int8) for name in bab.pre}
    visited = 0
    found: list = []

    def process(bounds, splits) -> _Domains | str:
        nonlocal visited
        b = splits[bab.pre[0]].shape[0]
        visited += b
        lb, lam_x, feasible, extra = bab.bound(bounds, splits)
        margins = rows.group_max(lb)
        open_ = (margins.min(1).values <= 0) & feasible
        if not open_.any():
            return _Domains({k: (v[0][:0], v[1][:0]) for k, v in bounds.items()},
                            {k: v[:0] for k, v in splits.items()}, margins.min(1).values[:0],
                            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        keep = open_.nonzero().flatten()
        worst = margins[keep].argmin(1)
        in_worst = rows.group.unsqueeze(0) == worst.unsqueeze(1)
        row = torch.where(in_worst, lb[keep], torch.full_like(lb[keep], -torch.inf)).argmax(1)
        ar = torch.arange(keep.numel())
        corner = minimizers(lam_x[keep], x_lo.reshape(1, -1).expand(keep.numel(), -1),
                            x_hi.reshape(1, -1).expand(keep.numel(), -1))[ar, row]
        x = check(corner)
        if x is not None:
            found.append(x)
            return "sat"
        kept_bounds = {k: (v[0][keep], v[1][keep]) for k, v in extra["bounds"].items()}
        kept_splits = {k: v[keep] for k, v in splits.items()}
        lam_h = {k: v[keep] for k, v in extra["lam_h"].items()}
        node, idx = bab.choose(kept_bounds, kept_splits, lam_h, row)
        return _Domains(kept_bounds, kept_splits, margins[keep].min(1).values, node, idx)

    pool = process(root_bounds, splits)
    if pool == "sat":
        return BabResult("sat", x=found[0], domains=visited)
    step_seconds = 0.0
    while len(pool):
        # Stop when another batch would likely run past the deadline (answer `timeout` on time).
        if deadline.left() <= 1.2 * step_seconds:
            return BabResult("timeout", domains=visited)
        step_start = time.perf_counter()
        splittable = pool.branch_node >= 0
        if not splittable.any():
            return BabResult("unknown", domains=visited, stats={"reason": "fully split domains remain"})
        order = torch.where(splittable, pool.lb, torch.full_like(pool.lb, float("inf"))).argsort()
        k = min(batch, int(splittable.sum()))
        sel, rest = order[:k], order[k:]
        parents = pool.take(sel)
        pool = pool.take(rest)
        # Two children per parent: split +1 (active) then -1 (inactive) on the chosen neuron.
        child_splits = {}
        for j, name in enumerate(bab.pre):
            s = parents.splits[name].repeat(2, *[1] * (parents.splits[name].dim() - 1))
            flat = s.reshape(2 * k, -1)
            mask = torch.cat([parents.branch_node, parents.branch_node]) == j
            idx = torch.cat([parents.branch_idx, parents.branch_idx])
            val = torch.cat([torch.ones(k, dtype=torch.int8), -torch.ones(k, dtype=torch.int8)])
            rows_ = mask.nonzero().flatten()
            flat[rows_, idx[rows_]] = val[rows_]
            child_splits[name] = flat.reshape(s.shape)
        child_bounds = {key: (v[0].repeat(2, *[1] * (v[0].dim() - 1)), v[1].repeat(2, *[1] * (v[1].dim() - 1)))
                        for key, v in parents.bounds.items()}
        res = process(child_bounds, child_splits)
        if res == "sat":
            return BabResult("sat", x=found[0], domains=visited)
        pool = _Domains.cat([pool, res])
        step_seconds = time.perf_counter() - step_start
        if visited > max_domains:
            return BabResult("timeout", domains=visited, stats={"reason": "domain limit"})
    return BabResult("unsat", domains=visited)
