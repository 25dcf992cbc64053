"""ReLU-split branch and bound with beta-CROWN (Wang et al., NeurIPS 2021) for high-dimensional inputs.

A domain fixes some ReLUs: ``z_i >= 0`` (split +1) or ``z_i <= 0`` (split -1). Its bound is the
alpha-beta-CROWN lower bound of the spec rows: split neurons take their exact piece (bounds clamped),
and ``sum_i beta_i s_i z_i`` (``beta >= 0``, ``s = -split``) is added at the pre-activation nodes,
which is valid on the domain. Domains are processed worst bound first, in batches; the neuron to
split is chosen by BaBSR (Bunel et al., JMLR 2020): ``|min(Lambda_h, 0)| * (-u l / (u - l))``.
Intermediate bounds are the parent's, clamped by the splits; an empty clamp proves a domain infeasible.
"""

from __future__ import annotations

import heapq
import logging
import time

import torch
from torch import Tensor

from verify.bab.common import BabResult, CexCheck, Deadline
from verify.bounds.alpha import _Adam
from verify.bounds.crown import apply_splits, intermediate_bounds
from verify.graph import Graph
from verify.ops.activation import Relu
from verify.ops.bilinear import Mul
from verify.spec import RowSpec, minimizers

INFEASIBLE_TOL = 1e-5
MAX_POOL_BYTES = 3e9
"""Open domains may hold at most this much memory; past it the search stops with ``timeout``."""
log = logging.getLogger(__name__)


class _Domains:
    """A pool of domains stored as stacked tensors (one row per domain)."""

    def __init__(self, bounds: dict[str, tuple[Tensor, Tensor]], splits: dict[str, Tensor], lb: Tensor,
                 branch_node: Tensor, branch_idx: Tensor, warm: dict[str, Tensor]):
        self.bounds, self.splits, self.lb = bounds, splits, lb
        self.branch_node, self.branch_idx = branch_node, branch_idx
        self.warm = warm  # optimised alphas / betas per domain, inherited by the children

    def __len__(self) -> int:
        return int(self.lb.shape[0])

    def nbytes(self) -> int:
        ts = [t for v in self.bounds.values() for t in v] + list(self.splits.values()) + list(self.warm.values())
        return sum(t.numel() * t.element_size() for t in ts)

    def take(self, idx: Tensor) -> _Domains:
        return _Domains({k: (v[0][idx], v[1][idx]) for k, v in self.bounds.items()},
                        {k: v[idx] for k, v in self.splits.items()}, self.lb[idx], self.branch_node[idx],
                        self.branch_idx[idx], {k: v[idx] for k, v in self.warm.items()})


class ReluBab:
    def __init__(self, graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, iterations: int = 8,
                 lr_alpha: float = 0.1, lr_beta: float = 0.05):
        self.graph, self.rows = graph, rows
        self.x_lo = lo.reshape(1, *graph.input_shape)
        self.x_hi = hi.reshape(1, *graph.input_shape)
        self.relus = [n for n in graph.nodes if isinstance(n.op, Relu)]
        self.pre = [n.inputs[0] for n in self.relus]  # split nodes (ReLU inputs)
        # slopes optimised per domain: the ReLUs' and the products' plane weights (attention)
        self.optimised = self.relus + [n for n in graph.nodes if isinstance(n.op, Mul)]
        self.layer_sizes = torch.tensor([int(torch.Size(graph.shape_of(n)).numel()) for n in self.pre],
                                        device=lo.device)
        self.layer_ends = self.layer_sizes.cumsum(0)
        self.keep = graph.bounded_nodes()  # per-domain bounds; the input box is shared, not stored per domain
        self.iterations, self.lr_alpha, self.lr_beta = iterations, lr_alpha, lr_beta

    # -- bounding ---------------------------------------------------------------------------
    def bound(self, bounds: dict, splits: dict[str, Tensor], warm: dict[str, Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Tensor, dict]:
        """alpha-beta-CROWN on a batch of domains: (row lower bounds [B, R], Lambda_x, feasible [B], extras).

        ``warm``: slopes (by ReLU name) and betas (by split node) to start from, ``[B, R, *shape]`` each --
        the parent's optimised values, so a few steps per child suffice (any value in range is sound)."""
        g, rows = self.graph, self.rows
        b = splits[self.pre[0]].shape[0] if self.pre else bounds[g.input_name][0].shape[0]
        bounds = dict(bounds)
        dev = bounds[g.input_name][0].device
        feasible = torch.ones(b, dtype=torch.bool, device=dev)
        for name in self.pre:
            lo, hi = apply_splits(*bounds[name], splits[name])
            gap = (lo - hi).reshape(b, -1)
            feasible &= ~(gap > INFEASIBLE_TOL * (1 + lo.abs().reshape(b, -1))).any(1)
            bounds[name] = (lo, torch.maximum(hi, lo))
        r = rows.C.shape[0]
        alphas = {}
        for n in self.optimised:
            lo, hi = bounds[n.inputs[0]]
            if warm is not None and n.name in warm:  # stored [B, R, n_alpha, ...]: domains first, for the pool
                alphas[n.name] = warm[n.name].movedim(2, 0).clone().requires_grad_(True)
            else:
                init = n.op.init_alpha(lo.unsqueeze(1), hi.unsqueeze(1))
                alphas[n.name] = init.expand(init.shape[0], b, r, *init.shape[3:]).clone().requires_grad_(True)
        signs = {name: -splits[name].to(bounds[name][0].dtype).unsqueeze(1) for name in self.pre}
        betas = {}
        for name in self.pre:
            if bool(splits[name].any()):
                key = "beta:" + name
                v = warm[key].clone() if warm is not None and key in warm else torch.zeros(
                    b, r, *bounds[name][0].shape[1:], dtype=bounds[name][0].dtype, device=dev)
                betas[name] = v.requires_grad_(True)
        params = list(alphas.values()) + list(betas.values())
        opt_a = _Adam(list(alphas.values()), self.lr_alpha, 0.98)
        opt_b = _Adam(list(betas.values()), self.lr_beta, 0.98) if betas else None
        best = torch.full((b, r), float("-inf"), device=dev)
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
            if it == self.iterations or rows.proved(best):
                break
            with torch.enable_grad():
                grads = torch.autograd.grad(-lb.sum(), params, allow_unused=True)
            opt_a.step(grads[:len(alphas)])
            if opt_b is not None:
                opt_b.step(grads[len(alphas):])
            with torch.no_grad():
                for n in self.optimised:
                    a = alphas[n.name]
                    a.copy_(a.clamp(0, 1))
                for v in betas.values():
                    v.clamp_(min=0)
        lam_h = {k: v.detach() for k, v in record.items() if v is not None}
        best = torch.where(feasible.unsqueeze(1), best, torch.full_like(best, float("inf")))
        state = {k: v.detach().movedim(0, 2) for k, v in alphas.items()}
        for name in self.pre:  # every key always present: pools of different batches concatenate
            v = betas.get(name)
            state["beta:" + name] = v.detach() if v is not None else torch.zeros(
                b, r, *bounds[name][0].shape[1:], dtype=bounds[name][0].dtype, device=dev)
        return best, best_lam_x, feasible, {"lam_h": lam_h, "bounds": bounds, "warm": state}

    def babsr_scores(self, bounds: dict, splits: dict[str, Tensor], lam_h: dict, row: Tensor) -> Tensor:
        """BaBSR scores of every ReLU, layers concatenated: ``[B, total]``, -1 where not splittable."""
        b = row.shape[0]
        ar = torch.arange(b, device=row.device)
        out = []
        for relu, name in zip(self.relus, self.pre, strict=True):
            lo, hi = bounds[name]
            lo, hi = lo.reshape(b, -1), hi.reshape(b, -1)
            unstable = (lo < 0) & (hi > 0) & (splits[name].reshape(b, -1) == 0)
            lam = lam_h[relu.name][ar, row].reshape(b, -1)
            intercept = -hi * lo / torch.where(unstable, hi - lo, torch.ones_like(hi))
            score = lam.clamp(max=0).abs() * intercept + 1e-4 * lam.abs() * (hi - lo)
            out.append(torch.where(unstable, score, torch.full_like(score, -1.0)))
        return torch.cat(out, 1)

    def _locate(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Concatenated neuron index -> (layer index, index within the layer)."""
        node = torch.bucketize(flat, self.layer_ends, right=True)
        return node, flat - (self.layer_ends - self.layer_sizes)[node]

    def choose(self, bounds: dict, splits: dict[str, Tensor], lam_h: dict, row: Tensor) -> tuple[Tensor, Tensor]:
        """BaBSR branching: (node index [B], flat neuron index [B]); node index -1 when nothing is left."""
        s, i = self.babsr_scores(bounds, splits, lam_h, row).max(1)
        node, idx = self._locate(i)
        return torch.where(s >= 0, node, -1), idx


@torch.no_grad()
def relu_split_bab(graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, deadline: Deadline, check: CexCheck,
                   batch: int = 64, iterations: int = 8, max_domains: int = 400_000,
                   root_bounds: dict | None = None, root_lower: Tensor | None = None) -> BabResult:
    """Decide ``rows`` over the box one disjunct at a time (each must be refuted; a domain proved for one
    disjunct says nothing about the others, so they are separate searches with smaller bound batches).

    ``root_bounds``: sound intermediate bounds over the box to start from (e.g. alpha-CROWN with optimised
    intermediate slopes); ``root_lower`` ``[1, R]``: sound row lower bounds already known, so disjuncts
    proved at the root are skipped and the hardest are searched first."""
    if not any(isinstance(n.op, Relu) for n in graph.nodes):
        return BabResult("unknown", stats={"reason": "no ReLU to split"})
    if root_bounds is None:
        root_bounds = intermediate_bounds(graph, lo.reshape(1, *graph.input_shape),
                                          hi.reshape(1, *graph.input_shape), "crown")
    order = list(range(rows.n_groups))
    if root_lower is not None:
        margin = rows.group_max(root_lower.reshape(1, -1))[0]
        order = [d for d in margin.argsort().tolist() if margin[d] <= 0]
    visited = 0
    for d in order:
        res = _bab_one(graph, rows.subset([d]), lo, hi, deadline, check, batch, iterations,
                       max_domains - visited, root_bounds)
        visited += res.domains
        log.debug("disjunct %d: %s after %d domains (%d in all)", d, res.status, res.domains, visited)
        if res.status != "unsat":
            return BabResult(res.status, x=res.x, domains=visited, stats=res.stats)
    return BabResult("unsat", domains=visited)


def _bab_one(graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, deadline: Deadline, check: CexCheck,
             batch: int, iterations: int, max_domains: int, root_bounds: dict) -> BabResult:
    bab = ReluBab(graph, rows, lo, hi, iterations=iterations)
    x_lo, x_hi = bab.x_lo, bab.x_hi
    root_bounds = {k: root_bounds[k] for k in bab.keep}
    dev = lo.device
    splits = {name: torch.zeros(1, *graph.shape_of(name), dtype=torch.int8, device=dev) for name in bab.pre}
    visited = 0
    found: list = []

    def process(bounds, splits, warm=None) -> _Domains | str:
        nonlocal visited
        b = splits[bab.pre[0]].shape[0]
        visited += b
        box = (x_lo.expand(b, *x_lo.shape[1:]), x_hi.expand(b, *x_hi.shape[1:]))
        lb, lam_x, feasible, extra = bab.bound({graph.input_name: box, **bounds}, splits, warm)
        margins = rows.group_max(lb)
        open_ = (margins.min(1).values <= 0) & feasible
        if not open_.any():
            return _Domains({k: (v[0][:0], v[1][:0]) for k, v in bounds.items()},
                            {k: v[:0] for k, v in splits.items()}, margins.min(1).values[:0],
                            torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev),
                            {k: v[:0] for k, v in extra["warm"].items()})
        keep = open_.nonzero().flatten()
        worst = margins[keep].argmin(1)
        in_worst = rows.group.unsqueeze(0) == worst.unsqueeze(1)
        row = torch.where(in_worst, lb[keep], torch.full_like(lb[keep], -torch.inf)).argmax(1)
        ar = torch.arange(keep.numel(), device=dev)
        corner = minimizers(lam_x[keep], x_lo.reshape(1, -1).expand(keep.numel(), -1),
                            x_hi.reshape(1, -1).expand(keep.numel(), -1))[ar, row]
        x = check(corner)
        if x is not None:
            found.append(x)
            return "sat"
        kept_bounds = {k: (v[0][keep], v[1][keep]) for k, v in extra["bounds"].items() if k != graph.input_name}
        kept_splits = {k: v[keep] for k, v in splits.items()}
        lam_h = {k: v[keep] for k, v in extra["lam_h"].items()}
        kept_warm = {k: v[keep] for k, v in extra["warm"].items()}
        node, idx = bab.choose(kept_bounds, kept_splits, lam_h, row)
        return _Domains(kept_bounds, kept_splits, margins[keep].min(1).values, node, idx, kept_warm)

    first = process(root_bounds, splits)
    if first == "sat":
        return BabResult("sat", x=found[0], domains=visited)
    # The open domains live in chunks (one per bounded batch) on a heap keyed by their worst bound: each
    # step takes the worst chunk, so only that chunk is ever copied, not the whole pool.
    heap: list[tuple[float, int, _Domains]] = []
    pushed = 0
    pool_bytes = 0

    def push(chunk: _Domains) -> None:
        nonlocal pushed, pool_bytes
        if len(chunk):
            pushed += 1
            pool_bytes += chunk.nbytes()
            heapq.heappush(heap, (float(chunk.lb.min()), pushed, chunk))

    push(first)
    step_seconds = 0.0
    next_log = 0.0
    while heap:
        # Stop when another batch would likely run past the deadline (answer `timeout` on time).
        if deadline.left() <= 1.2 * step_seconds:
            return BabResult("timeout", domains=visited)
        step_start = time.perf_counter()
        _, _, chunk = heapq.heappop(heap)
        pool_bytes -= chunk.nbytes()
        if not bool((chunk.branch_node >= 0).all()):
            return BabResult("unknown", domains=visited, stats={"reason": "fully split domains remain"})
        if len(chunk) > batch:
            order = chunk.lb.argsort()
            push(chunk.take(order[batch:]))
            chunk = chunk.take(order[:batch])
        parents, k = chunk, len(chunk)
        # Two children per parent: split +1 (active) then -1 (inactive) on the chosen neuron.
        child_splits = {}
        for j, name in enumerate(bab.pre):
            s = parents.splits[name].repeat(2, *[1] * (parents.splits[name].dim() - 1))
            flat = s.reshape(2 * k, -1)
            mask = torch.cat([parents.branch_node, parents.branch_node]) == j
            idx = torch.cat([parents.branch_idx, parents.branch_idx])
            val = torch.cat([torch.ones(k, dtype=torch.int8, device=dev), -torch.ones(k, dtype=torch.int8, device=dev)])
            rows_ = mask.nonzero().flatten()
            flat[rows_, idx[rows_]] = val[rows_]
            child_splits[name] = flat.reshape(s.shape)
        child_bounds = {key: (v[0].repeat(2, *[1] * (v[0].dim() - 1)), v[1].repeat(2, *[1] * (v[1].dim() - 1)))
                        for key, v in parents.bounds.items()}
        child_warm = {key: v.repeat(2, *[1] * (v.dim() - 1)) for key, v in parents.warm.items()}
        res = process(child_bounds, child_splits, child_warm)
        if res == "sat":
            return BabResult("sat", x=found[0], domains=visited)
        push(res)
        step_seconds = time.perf_counter() - step_start
        if log.isEnabledFor(logging.DEBUG) and time.perf_counter() > next_log:
            next_log = time.perf_counter() + 2.0
            log.debug("visited %d, open %d, worst margin %.4f, batch %.3f s, %.1f s left", visited,
                      sum(len(c) for _, _, c in heap), heap[0][0] if heap else 0.0, step_seconds, deadline.left())
        if visited > max_domains:
            return BabResult("timeout", domains=visited, stats={"reason": "domain limit"})
        if pool_bytes > MAX_POOL_BYTES:
            return BabResult("timeout", domains=visited, stats={"reason": "memory limit"})
    return BabResult("unsat", domains=visited)
