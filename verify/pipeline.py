"""Complete verification of one (ONNX, VNNLIB) instance.

1. Falsify: sampling + PGD; every candidate re-checked with onnxruntime before ``sat``.
2. Incomplete: CROWN, then alpha-CROWN on each property's rows.
3. Complete: input-split BaB for low-dimensional inputs, ReLU-split BaB with beta-CROWN otherwise
   (when a short first search fails: MIP-refined intermediate bounds, then the search from them raced against
   exact MIPs of the open disjuncts), exact MIP for small networks. Anything undecided at the deadline is
   ``timeout``; never a guess.

The model is read in its own precision and checked against onnxruntime on points of the spec's boxes
(``verify.model_check``); attacks and counterexample checks run in that precision, every bound in float64 with
its rounding paid (``verify.rounding``), on the property's box widened by one float64 ulp (the decimal bounds
of the VNNLIB file are read to the nearest double).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from verify.bab.common import BabResult, Deadline
from verify.bab.input_split import input_split_bab
from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import intermediate_bounds
from verify.counterexample import snap_into_box, validate_counterexample
from verify.device import device_or_cpu, exact_float32
from verify.errors import ShapeError, UnboundedError
from verify.frontends.onnx_frontend import load_onnx
from verify.graph import Graph
from verify.model_check import check_against_onnxruntime, sample_points
from verify.rounding import bound_dtype, outward_box
from verify.spec import RowSpec
from verify.vnnlib import VnnlibSpec, parse_vnnlib

INPUT_SPLIT_MAX_DIMS = 16
log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    status: str  # sat | unsat | timeout | unknown | error
    seconds: float = 0.0
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    stage: str = ""
    message: str = ""
    validated: bool | None = None
    stats: dict = field(default_factory=dict)


class _CexChecker:
    """Screens candidate points with the IR and confirms them with onnxruntime (doc §6.5)."""

    def __init__(self, graph: Graph, rows: RowSpec, spec: VnnlibSpec, onnx_path: str, lo: np.ndarray,
                 hi: np.ndarray):
        self.graph, self.rows, self.spec, self.onnx_path = graph, rows, spec, onnx_path
        self.lo, self.hi = lo, hi
        self.found: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, cands: torch.Tensor) -> np.ndarray | None:
        cands = cands.to(self.graph.device)
        with torch.no_grad():
            y = self.graph(cands.to(self.graph.dtype).reshape(-1, *self.graph.input_shape))
            y = y.reshape(cands.shape[0], -1)
            margin = self.rows.group_max(self.rows.values(cands.reshape(cands.shape[0], -1), y)).min(1).values
        order = margin.argsort()[:8]
        for i in order[margin[order] <= 1e-4]:
            x = snap_into_box(cands[i].double().cpu().numpy(), self.lo, self.hi)
            v = validate_counterexample(self.onnx_path, self.spec, x)
            if v.ok:
                self.found = (x, v.y)
                return x
        return None


def _root_verified(graph: Graph, rows: RowSpec, lo: torch.Tensor, hi: torch.Tensor, deadline: Deadline,
                   alpha_iterations: int) -> tuple[bool, str]:
    """CROWN, then alpha-CROWN on the property's rows. Returns (proved, stage)."""
    shape = graph.input_shape
    x_lo, x_hi = lo.reshape(1, *shape), hi.reshape(1, *shape)
    # On large networks the intermediate CROWN passes alone can take minutes: past a quarter of the time left they
    # stop refining (interval bounds stay), leaving the attack and the later phases their share.
    limit = time.perf_counter() + CROWN_SHARE * deadline.left()
    with torch.no_grad():
        bounds = intermediate_bounds(graph, x_lo, x_hi, "crown",
                                     stop=lambda: deadline.passed() or time.perf_counter() >= limit)
        lb, _ = rows.lower_bounds(graph, bounds)
    if rows.proved(lb):
        return True, "crown"
    if rows.Ax is not None or alpha_iterations <= 0 or deadline.left() < 1:
        return False, "crown"
    lb = alpha_crown_lower(graph, x_lo, x_hi, rows.output_lam(graph), iterations=alpha_iterations, bounds=bounds,
                           time_limit=0.5 * deadline.left())
    return rows.proved(rows.finish(lb, graph, bounds)), "alpha-crown"


SMALL_NETWORK_PARAMS = 1_000_000
MIXED_ALPHA_SHARE = 0.4
"""Share of the time left for the root's intermediate alpha-CROWN on ReLU networks with other relaxed ops (vit_2023:
about 5 s an iteration; the root margin of instance 1647 goes -1.64 -> -0.13 in 50 s), 0.1 on pure ReLU networks."""
CROWN_SHARE = 0.25
"""Share of the time left that the root CROWN pass may spend refining intermediate bounds."""


def verify_instance(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float = 60.0, seed: int = 0,
                    attack_budget: float | None = None, alpha_iterations: int = 20,
                    num_threads: int | None = None, workers: int | None = None,
                    precision: str = "float64", device: str | torch.device | None = None) -> VerifyResult:
    """Decide one instance. Raises ``ClarkeError`` subclasses for bad input (the CLI maps them to ``error``).

    ``num_threads``: torch threads while verifying (restored after). Default: 1 for networks under a
    million weights, where intra-op threads cost more in synchronisation than they give (measured
    up to 30x slower input-split BaB with 2 threads on a busy 2-core machine), else torch's setting.
    ``workers``: processes for the MIP refinement of intermediate bounds (default: every core available).
    ``precision``: arithmetic of the bound computations (``verify.rounding.PRECISIONS``); sound either way.
    ``device`` (``auto``, ``cpu``, ``cuda[:N]``; ``verify.device``): where the attack, the bounds and the split
    searches run (default: the CPU); the model check, onnxruntime and the MIP solvers stay on the CPU."""
    old = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        target = device_or_cpu(device)
        with exact_float32(target):
            return _verify(onnx_path, vnnlib_path, timeout, seed, attack_budget, alpha_iterations, num_threads,
                           workers or available_cores(), precision, target)
    except UnboundedError as e:  # a quotient without bounds on this box: nothing can be proved about it
        log.info("unknown: %s", e)
        return VerifyResult("unknown", time.perf_counter() - t0, stage="bounds", message=str(e))
    finally:
        torch.set_num_threads(old)


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _verify(onnx_path, vnnlib_path, timeout, seed, attack_budget, alpha_iterations, num_threads,
            workers, precision, device: torch.device) -> VerifyResult:
    t0 = time.perf_counter()
    # Leave room to write the result: answer `timeout` before the limit, never after it.
    deadline = Deadline(max(0.0, 0.97 * timeout - 0.3))
    torch.manual_seed(seed)
    graph = load_onnx(onnx_path)  # the model's own precision: attacks and counterexample screening
    spec = parse_vnnlib(vnnlib_path, n_inputs=graph.input_numel, n_outputs=graph.output_numel)
    if spec.n_inputs != graph.input_numel:
        raise ShapeError(f"{vnnlib_path}: {spec.n_inputs} inputs, model has {graph.input_numel}")
    check_against_onnxruntime(graph, onnx_path, sample_points([(p.box.lo, p.box.hi) for p in spec.properties],
                                                              seed=seed))
    bgraph = graph.with_dtype(bound_dtype(graph.dtype, precision)).to(device)  # bounds, rounding paid
    graph = graph.to(device)
    if num_threads is None:
        n_params = sum(t.numel() for n in graph.nodes for t in n.op.tensors().values())
        num_threads = 1 if n_params < SMALL_NETWORK_PARAMS else torch.get_num_threads()
    torch.set_num_threads(num_threads)

    def done(status: str, stage: str, x=None, y=None, **stats) -> VerifyResult:
        return VerifyResult(status, time.perf_counter() - t0, x, y, stage, validated=None if x is None else True,
                            stats=stats)

    props = [(p, RowSpec.from_property(p, graph.input_numel, graph.output_numel, device)) for p in spec.properties]
    log.info("phase crown: %d propert%s, timeout %.1f s", len(props), "y" if len(props) == 1 else "ies", timeout)
    open_props, stages = [], []
    for prop, rows in props:  # CROWN first: milliseconds, and it settles easy instances before any attack
        lo, hi = outward_box(prop.box.lo, prop.box.hi, bgraph.dtype, device)
        try:
            proved, stage = _root_verified(bgraph, rows, lo, hi, deadline, alpha_iterations=0)
        except UnboundedError:  # no bound on this box (a divisor may vanish): the attack may still find a witness
            proved, stage = False, "crown"
        (stages.append(stage) if proved else open_props.append((prop, rows, lo, hi)))
    if not open_props:
        return done("unsat", "crown")

    from verify.attack import falsify
    # Short: most violations show up at once, and BaB keeps testing candidates as it goes.
    budget = attack_budget if attack_budget is not None else min(max(0.3, 0.01 * timeout), 1.5)
    log.info("phase attack: %d open propert%s, %.1f s budget", len(open_props), "y" if len(open_props) == 1 else "ies",
             min(budget, deadline.left()))
    found = falsify(graph, spec, time_budget_s=min(budget, deadline.left()), seed=seed, onnx_path=str(onnx_path))
    if found is not None:
        return done("sat", "attack", found.x, found.y)

    for prop, rows, lo, hi in open_props:
        log.info("phase alpha-crown: %.1f s left", deadline.left())
        proved, stage = _root_verified(bgraph, rows, lo, hi, deadline, alpha_iterations)
        if proved:
            stages.append(stage)
            continue
        if deadline.passed():
            return done("timeout", stage)
        checker = _CexChecker(graph, rows, spec, str(onnx_path), prop.box.lo, prop.box.hi)
        log.info("phase %s: %.1f s left", "input-split BaB" if graph.input_numel <= INPUT_SPLIT_MAX_DIMS
                 else "ReLU-split BaB", deadline.left())
        if graph.input_numel <= INPUT_SPLIT_MAX_DIMS:
            res = input_split_bab(bgraph, rows, lo, hi, deadline, checker)
            stage = "input-bab"
        else:
            res = _relu_bab(bgraph, rows, lo, hi, deadline, checker, workers=workers)
            stage = "relu-bab"
        if res.status == "sat":
            x, y = checker.found
            return done("sat", stage, x, y, domains=res.domains)
        if res.status != "unsat":
            return done(res.status, stage, domains=res.domains)
        stages.append(stage)
    return done("unsat", "+".join(sorted(set(stages))) or "trivial")


BAB_FIRST_SHARE = 0.05
"""Share of the time left for the first split search, from the alpha-CROWN root bounds."""
REFINE_SHARE = 0.6
"""Share of the time left after it for MIP refinement of the intermediate bounds (the rest: split search)."""
REFINE_NEURONS_PER_WORKER = 60
"""Neurons refined per layer and refinement process (about a minute of solves on mnist_fc)."""


def _relu_bab(graph, rows, lo, hi, deadline, checker, bab_first: float = BAB_FIRST_SHARE, workers: int = 1
              ) -> BabResult:
    from verify.bab.relu_split import relu_split_bab
    from verify.ops.activation import Relu
    has_relu = any(isinstance(n.op, Relu) for n in graph.nodes)
    # relaxed ops that ReLU splits never tighten (products, softmax, ...): their slopes carry more of the gap
    others = any(n.op.needs_input_bounds and not isinstance(n.op, Relu) for n in graph.nodes)
    root_bounds = root_lower = None
    if rows.Ax is None and deadline.left() > 2:
        # Intermediate bounds with optimised slopes: on deep MNIST nets the root margin goes from about
        # -10 to -3, which is what makes the split search finite. With nothing to split (e.g. sigmoid
        # networks) this is all there is, so it gets most of the time.
        shape = graph.input_shape
        root_lower, root_bounds = alpha_crown_lower(
            graph, lo.reshape(1, *shape), hi.reshape(1, *shape), rows.output_lam(graph),
            iterations=20 if has_relu else 60, optimize_intermediate=True,
            time_limit=(0.8 if not has_relu else MIXED_ALPHA_SHARE if others else 0.1) * deadline.left(),
            return_bounds=True, done=lambda lb, bnds: rows.proved(rows.finish(lb, graph, bnds)))
        root_lower = rows.finish(root_lower, graph, root_bounds)
        if rows.proved(root_lower):
            return BabResult("unsat")
    if not has_relu:  # undecided stays `unknown`
        return BabResult("unknown", stats={"reason": "no ReLU to split"})
    if root_bounds is None or not _refinable(graph):
        return relu_split_bab(graph, rows, lo, hi, deadline, checker, root_bounds=root_bounds, root_lower=root_lower)
    # Branching settles most instances within seconds; the rest need tighter intermediate bounds than any
    # split search reaches (mnist_fc 256x4 / 256x6: root margins -1 to -6000), so MIP-refine them, then search
    # again from the refined root.
    res = relu_split_bab(graph, rows, lo, hi, Deadline(bab_first * deadline.left()), checker,
                         root_bounds=root_bounds, root_lower=root_lower)
    if res.status in ("sat", "unsat") or deadline.left() < 5:
        return res
    from verify.mip_refine import refine_bounds
    log.info("phase MIP refinement of intermediate bounds: %d workers, %.1f s", workers, REFINE_SHARE * deadline.left())
    # the solvers (and the race's MIP processes) read numpy arrays: this part runs on the CPU
    device, cpu = lo.device, torch.device("cpu")
    graph, rows, lo, hi = graph.to(cpu), rows.to(cpu), lo.to(cpu), hi.to(cpu)
    root_bounds, root_lower = _bounds_to(root_bounds, cpu), root_lower.to(cpu)
    ref = refine_bounds(graph, rows, lo, hi, root_bounds, Deadline(REFINE_SHARE * deadline.left()),
                        max_neurons=REFINE_NEURONS_PER_WORKER * workers, workers=workers, lower=root_lower)
    log.debug("MIP refinement: %s after %d solves in %.1f s, worst margin %.4f", ref.stopped, ref.solves,
              ref.seconds, float(rows.group_max(ref.lower).min()))
    if rows.proved(ref.lower):
        return BabResult("unsat", domains=res.domains, stats={"refined": ref.solves})
    if ref.stopped == "too large":  # no exact MIP of the whole network either: the split search, on the device
        res2 = relu_split_bab(graph.to(device), rows.to(device), lo.to(device), hi.to(device), deadline, checker,
                              root_bounds=_bounds_to(ref.bounds, device), root_lower=ref.lower.to(device))
    else:  # BaB from the refined root (easiest disjuncts first) races exact MIPs over the refined bounds (hardest)
        from verify.bab.race import race_disjuncts
        log.info("phase race: split search against exact MIPs of the open disjuncts, %.1f s left", deadline.left())
        res2 = race_disjuncts(graph, rows, lo, hi, ref.bounds, ref.lower, deadline, checker,
                              workers=max(1, workers - 1))
    return BabResult(res2.status, x=res2.x, domains=res.domains + res2.domains,
                     stats={**res2.stats, "refined": ref.solves})


def _bounds_to(bounds: dict, device: torch.device) -> dict:
    return {k: (v[0].to(device), v[1].to(device)) for k, v in bounds.items()}


def _refinable(graph: Graph) -> bool:
    """MIP refinement needs an encodable graph and a solver (gurobipy, or highspy)."""
    from verify.mip import installed_backends, mip_supported
    return mip_supported(graph) and bool(installed_backends())
