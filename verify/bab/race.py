"""Decide the disjuncts left open after MIP refinement by racing two complete methods.

The main process runs ReLU-split BaB (beta-CROWN) over the open disjuncts, easiest first; worker processes solve
``min_x max_i (A_d f(x) - b_d)_i`` over the exact big-M MIP on the refined bounds (Tjeng et al., ICLR 2019),
hardest first. A disjunct is refuted by whichever method gets there first: many shallow disjuncts fall to the
split search in seconds, while a MIP over tight bounds closes the few that no split search reaches in time. The MIPs
run at ``verify.mip.FAST`` tolerances; their refutations carry the margin of ``verify.mip.tolerance``.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

import numpy as np
import torch
from torch import Tensor

from verify import mip
from verify.bab.common import BabResult, CexCheck, Deadline
from verify.bab.relu_split import relu_split_bab
from verify.graph import Graph
from verify.spec import RowSpec

log = logging.getLogger(__name__)

OPEN, BY_BAB, BY_MIP = 0, 1, 2


class _RaceDeadline(Deadline):
    """The overall deadline, cut short once the MIP workers refuted ``group`` or sent a witness."""

    def __init__(self, end: float, flags, group: int, witnesses):
        self.end, self.flags, self.group, self.witnesses = end, flags, group, witnesses

    def left(self) -> float:
        if self.flags[self.group] != OPEN or not self.witnesses.empty():
            return 0.0
        return self.end - time.perf_counter()

    def passed(self) -> bool:
        return self.left() <= 0


def mip_usable(n_vars: int, n_rows: int) -> bool:
    """Gurobi (size-limited licence) for models that fit it; HiGHS only where gurobipy is missing."""
    backends = mip.installed_backends()
    if "gurobi" in backends:
        return max(n_vars, n_rows) <= mip.GUROBI_SIZE_LIMIT
    return "highs" in backends


def race_disjuncts(graph: Graph, rows: RowSpec, lo: Tensor, hi: Tensor, bounds: dict, lower: Tensor,
                   deadline: Deadline, check: CexCheck, workers: int = 1, search: bool = True) -> BabResult:
    """Refute every row group of ``rows`` over the box ``[lo, hi]`` with sound intermediate ``bounds`` and row
    margins ``lower`` ``[1, R]`` (``- rows.b`` applied). ``workers``: MIP processes besides the search (at least
    one; they share the cores with it); ``search=False``: the MIP workers alone. ``sat`` only with a witness that
    ``check`` confirmed."""
    margins = rows.group_max(lower.reshape(1, -1))[0]
    hardest_first = [d for d in margins.argsort().tolist() if margins[d] <= 0]
    if not hardest_first:
        return BabResult("unsat")
    if rows.Ax is not None:  # rows on the inputs too: the MIP jobs below encode output rows only
        return relu_split_bab(graph, rows, lo, hi, deadline, check, root_bounds=bounds, root_lower=lower)
    enc = mip.encode(graph, lo.reshape(-1).double().numpy(), hi.reshape(-1).double().numpy(), given=bounds)
    if not mip_usable(enc.model.n, enc.model.m) or "fork" not in multiprocessing.get_all_start_methods():
        return relu_split_bab(graph, rows, lo, hi, deadline, check, root_bounds=bounds, root_lower=lower)
    C, b = rows.C.double().numpy(), rows.b.reshape(-1).double().numpy()
    groups = rows.group.numpy()
    jobs = [(d, C[groups == d], b[groups == d]) for d in hardest_first]
    ctx = multiprocessing.get_context("fork")  # the encoding is inherited, not pickled
    flags = ctx.Array("b", rows.n_groups, lock=False)
    next_job = ctx.Value("i", 0)
    witnesses = ctx.SimpleQueue()
    procs = [ctx.Process(target=_mip_worker, args=(graph, enc, jobs, flags, next_job, witnesses, deadline.end),
                         daemon=True) for _ in range(max(1, workers))]
    for p in procs:
        p.start()

    def settled() -> bool:
        return all(flags[d] != OPEN for d in hardest_first)

    domains = 0
    try:
        for d in reversed(hardest_first) if search else ():
            x = _confirmed_witness(witnesses, check)
            if x is not None:
                return BabResult("sat", x=x, domains=domains)
            if flags[d] != OPEN:
                continue
            sel = rows.group == d
            res = relu_split_bab(graph, rows.subset([d]), lo, hi, _RaceDeadline(deadline.end, flags, d, witnesses),
                                 check, root_bounds=bounds, root_lower=lower.reshape(1, -1)[:, sel])
            domains += res.domains
            log.debug("race: disjunct %d %s by search (%d domains), MIP flag %d", d, res.status, res.domains, flags[d])
            if res.status == "sat":
                return BabResult("sat", x=res.x, domains=domains)
            if res.status == "unsat":
                flags[d] = BY_BAB
            if deadline.passed():
                break
        # What the search could not settle is the MIP workers' now.
        while deadline.left() > 0 and not settled():
            x = _confirmed_witness(witnesses, check)
            if x is not None:
                return BabResult("sat", x=x, domains=domains)
            if not any(p.is_alive() for p in procs):
                break
            time.sleep(0.05)
        stats = {"by_mip": sum(flags[d] == BY_MIP for d in hardest_first)}
        if settled():
            return BabResult("unsat", domains=domains, stats=stats)
        x = _confirmed_witness(witnesses, check)
        if x is not None:
            return BabResult("sat", x=x, domains=domains)
        return BabResult("timeout", domains=domains, stats=stats)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join()


def _confirmed_witness(witnesses, check: CexCheck) -> np.ndarray | None:
    """The first MIP witness that ``check`` (onnxruntime) confirms, if any arrived."""
    while not witnesses.empty():
        x = check(torch.as_tensor(witnesses.get(), dtype=torch.float32, device="cpu").reshape(1, -1))
        if x is not None:
            return x
    return None


def _mip_worker(graph: Graph, enc: mip.MipEncoding, jobs: list, flags, next_job, witnesses, end: float) -> None:
    torch.set_num_threads(1)
    while True:
        with next_job.get_lock():
            i = next_job.value
            next_job.value += 1
        if i >= len(jobs):
            return
        d, A, b = jobs[i]
        left = end - time.perf_counter()
        if left <= 0:
            return
        if flags[d] != OPEN:
            continue
        v = mip.mip_verify(graph, None, None, A, b, left, encoding=enc, threads=1, solver_margin=mip.DEFAULT_TOL_MARGIN)
        if v.status == "unsat":
            flags[d] = BY_MIP
        elif v.status == "sat":
            witnesses.put(v.x)
