"""Input-split branch and bound for low-dimensional inputs (ACAS Xu has 5).

Bound a batch of sub-boxes in one call; drop those whose every disjunct has a row with a positive
lower bound; test centres and CROWN minimisers as counterexamples; bisect the rest along the
dimension maximising ``|Lambda_x,i| (u_i - l_i)`` of the row closest to proof (the "smart" split of
alpha-beta-CROWN). Domains live on a stack (depth first), so memory stays bounded.

Intermediate bounds: full backward CROWN every ``refresh`` levels; in between a child re-uses its
ancestor's CROWN linear bounds (valid on every sub-box, re-concretised on the child's box),
intersected with a cheap forward linear pass. The spec rows always get a fresh backward pass.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from verify.bab.common import BabResult, CexCheck, Deadline
from verify.bab.exact_leaf import ExactLeaves, unstable_relus
from verify.bounds.crown import concretize_lower, intermediate_bounds
from verify.bounds.forward import forward_bounds
from verify.graph import Graph
from verify.mip import mip_supported
from verify.rounding import cast_down, cast_up
from verify.spec import RowSpec, combined_margins, minimizers

log = logging.getLogger(__name__)

# Per node: (A_lo [N, numel, n], c_lo [N, numel], A_up, c_up); rows without a function hold -+inf.
Functions = dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]


def _split(lo: Tensor, hi: Tensor, lam_row: Tensor, root_width: Tensor, balance: float = 64.0
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Bisect each box: ``[N, n] -> [2N, n]``; returns the parent index of each child too.

    The dimension maximises ``|Lambda_x,i| (u_i - l_i)``, unless that dimension is already ``balance``
    times narrower (relative to the root box) than the widest one: a dimension can loosen the
    relaxations without showing in the final linear bound (its coefficient cancels), and the score
    alone would then never split it."""
    width = hi - lo
    rel = width / root_width.clamp(min=1e-12)
    score = lam_row.abs() * width
    score = torch.where(width > 0, score + 1e-12 * width, torch.full_like(score, -1.0))
    dim = score.argmax(1)
    idx = torch.arange(lo.shape[0], device=lo.device)
    widest = rel.argmax(1)
    starved = rel[idx, dim] * balance < rel[idx, widest]
    dim = torch.where(starved, widest, dim)
    mid = (lo[idx, dim] + hi[idx, dim]) / 2
    lo2, hi1 = lo.clone(), hi.clone()
    hi1[idx, dim] = mid
    lo2[idx, dim] = mid
    return torch.cat([lo, lo2]), torch.cat([hi1, hi]), torch.cat([idx, idx])


def _dense_functions(graph: Graph, functions: dict, n_boxes: int) -> Functions:
    """Stack the stored linear bounds per node: ``A`` in the model's precision, ``c`` float64 (rounding paid)."""
    out: Functions = {}
    n = graph.input_numel
    for name, chunks in functions.items():
        numel = int(torch.Size(graph.shape_of(name)).numel())
        dtype, kdtype, dev = chunks[0][1].dtype, chunks[0][2].dtype, chunks[0][1].device
        A_lo = torch.zeros(n_boxes, numel, n, dtype=dtype, device=dev)
        A_up = torch.zeros(n_boxes, numel, n, dtype=dtype, device=dev)
        c_lo = torch.full((n_boxes, numel), float("-inf"), dtype=kdtype, device=dev)
        c_up = torch.full((n_boxes, numel), float("inf"), dtype=kdtype, device=dev)
        for rows, lam_x, kappa in chunks:
            r = rows.numel()
            A_lo[:, rows], c_lo[:, rows] = lam_x[:, :r], kappa[:, :r]
            A_up[:, rows], c_up[:, rows] = -lam_x[:, r:], -kappa[:, r:]
        out[name] = (A_lo, c_lo, A_up, c_up)
    return out


def _concretize_functions(graph: Graph, funcs: Functions, lo: Tensor, hi: Tensor) -> dict:
    """Ancestor linear bounds over the boxes ``[N, n]``, rigorous (``concretize_lower``), in the model's precision."""
    out = {}
    for name, (A_lo, c_lo, A_up, c_up) in funcs.items():
        low = cast_down(concretize_lower(A_lo, c_lo, lo, hi), lo.dtype)
        up = cast_up(-concretize_lower(-A_up, -c_up, lo, hi), lo.dtype)
        shape = (lo.shape[0], *graph.shape_of(name))
        out[name] = (low.reshape(shape), up.reshape(shape))
    return out


def bound_boxes(graph: Graph, spec: RowSpec, lo: Tensor, hi: Tensor, funcs: Functions | None = None,
                collect: bool = False, stop=None) -> tuple[Tensor, Tensor, Functions | None, dict]:
    """Row lower bounds ``[N, R]`` and ``Lambda_x [N, R, n]`` for flat boxes ``[N, n]``.

    Without ``funcs``: fresh CROWN intermediate bounds; with ``collect``, their linear bounds are also
    returned for the children to re-use. With ``funcs``: ancestor bounds re-concretised + forward pass.
    Also returns the intermediate bounds used. ``stop()`` true: intermediate CROWN refinement ends (interval
    bounds stay; sound), so one batch cannot run far past the deadline on a large network."""
    shape = graph.input_shape
    x_lo, x_hi = lo.reshape(-1, *shape), hi.reshape(-1, *shape)
    new_funcs = None
    if funcs is None:
        raw: dict | None = {} if collect else None
        bounds = intermediate_bounds(graph, x_lo, x_hi, "crown", functions=raw, stop=stop)
        if raw is not None:
            new_funcs = _dense_functions(graph, raw, lo.shape[0])
    else:
        bounds = forward_bounds(graph, x_lo, x_hi, reference=_concretize_functions(graph, funcs, lo, hi))
    lb, lam_x = spec.lower_bounds(graph, bounds)
    return lb, lam_x, new_funcs, bounds


def _take(funcs: Functions | None, idx: Tensor) -> Functions | None:
    return None if funcs is None else {k: tuple(t[idx] for t in v) for k, v in funcs.items()}


@torch.no_grad()
def input_split_bab(graph: Graph, spec: RowSpec, lo: Tensor, hi: Tensor, deadline: Deadline,
                    check: CexCheck, batch_max: int = 8192, max_domains: int = 5_000_000,
                    refresh: int = 1, balance: float = 64.0, combine: bool = True, exact_leaves: int = 40,
                    leaf_time: float = 2.0, leaf_patience: float = 3.0) -> BabResult:
    """``lo``/``hi``: the property's box ``[n]`` (or several root boxes ``[M, n]``).

    Stack entries: ``(lo, hi, functions or None, age)`` — a group of boxes sharing an age.
    ``exact_leaves``: open boxes with at most this many unstable ReLUs are decided by MILP (each at most
    ``leaf_time`` s) once the search has run ``leaf_patience`` s -- easy instances never pay for a MIP."""
    lo, hi = lo.reshape(-1, lo.shape[-1]), hi.reshape(-1, hi.shape[-1])
    root_width = (hi - lo).max(0).values
    stack: list[tuple[Tensor, Tensor, Functions | None, int]] = [(lo, hi, None, 0)]
    visited = 0
    next_log = 0.0
    # Small boxes with few unstable ReLUs go to an exact MIP instead of being bisected further.
    leaves = ExactLeaves(graph, spec, check) if exact_leaves > 0 and mip_supported(graph) else None
    t_start = time.perf_counter()
    per_domain = 1e-3  # seconds per domain, measured as we go; sizes batches so the deadline holds
    while stack:
        left = deadline.left()
        if left <= 0:
            return BabResult("timeout", domains=visited)
        batch = int(max(32, min(batch_max, min(1.0, left / 4) / per_domain)))
        L, H, funcs, age = stack.pop()
        if L.shape[0] > batch:  # process the top part, keep the rest
            stack.append((L[batch:], H[batch:], _take(funcs, torch.arange(batch, L.shape[0], device=L.device)), age))
            L, H = L[:batch], H[:batch]
            funcs = _take(funcs, torch.arange(batch, device=L.device))
        visited += L.shape[0]
        t0 = time.perf_counter()
        fresh = funcs is None or age % refresh == 0
        # Linear bounds for the children are collected only when some child will re-use them.
        collect = fresh and refresh > 1  # (partial linear bounds must not reach the children: no stop then)
        lb, lam_x, new_funcs, bounds = bound_boxes(graph, spec, L, H, None if fresh else funcs, collect=collect,
                                                   stop=None if collect else deadline.passed)
        if fresh:
            funcs = new_funcs
            # Fresh CROWN costs more than the inherited path; track the dearer one.
            per_domain = max(0.5 * per_domain, (time.perf_counter() - t0) / L.shape[0])
        margins = combined_margins(spec, lb, lam_x, L, H) if combine else spec.group_max(lb)  # [N, D]
        open_ = margins.min(1).values <= 0
        if not open_.any():
            continue
        keep = open_.nonzero().flatten()
        L, H, lb, lam_x, margins = L[keep], H[keep], lb[keep], lam_x[keep], margins[keep]
        funcs = _take(funcs, keep)
        worst = margins.argmin(1)
        in_worst = spec.group.unsqueeze(0) == worst.unsqueeze(1)
        row = torch.where(in_worst, lb, torch.full_like(lb, -torch.inf)).argmax(1)
        idx = torch.arange(L.shape[0], device=L.device)
        corner = minimizers(lam_x, L, H)[idx, row]
        x = check(torch.cat([(L + H) / 2, corner]))
        if x is not None:
            return BabResult("sat", x=x, domains=visited)
        if leaves is not None and time.perf_counter() - t_start >= leaf_patience:
            few = unstable_relus(graph, bounds, open_.numel())[keep] <= exact_leaves
            undecided = torch.ones(L.shape[0], dtype=torch.bool, device=L.device)
            for i in few.nonzero().flatten().tolist():
                if deadline.left() < leaf_time:
                    break
                groups = (margins[i] <= 0).nonzero().flatten().tolist()
                status, x = leaves.decide(L[i], H[i], groups, leaf_time)
                if status == "sat":
                    return BabResult("sat", x=x, domains=visited, stats={"mip_leaves": leaves.count})
                undecided[i] = status != "unsat"
            if not undecided.all():
                keep2 = undecided.nonzero().flatten()
                L, H, lb, lam_x, margins, row = L[keep2], H[keep2], lb[keep2], lam_x[keep2], margins[keep2], row[keep2]
                funcs = _take(funcs, keep2)
                idx = torch.arange(L.shape[0], device=L.device)
                if not L.shape[0]:
                    continue
        if visited > max_domains:
            return BabResult("timeout", domains=visited, stats={"reason": "domain limit"})
        if log.isEnabledFor(logging.DEBUG) and time.perf_counter() > next_log:
            next_log = time.perf_counter() + 2.0
            rel = ((H - L) / root_width.clamp(min=1e-12)).max(1).values
            log.debug("visited %d, stack %d, open %d, worst margin %.4g, widest box %.3g, narrowest %.3g, "
                      "MIP leaves %d", visited, len(stack), L.shape[0], float(margins.min()), float(rel.max()),
                      float(rel.min()), leaves.count if leaves else 0)
        lo2, hi2, parent = _split(L, H, lam_x[idx, row], root_width, balance)
        stack.append((lo2, hi2, _take(funcs, parent), age + 1))
    return BabResult("unsat", domains=visited, stats={"mip_leaves": leaves.count if leaves else 0})
