"""Fast falsification (doc §2.6): look for a validated counterexample before (or instead of) proving.

For a property ``x ∈ [lo, hi] ∧ ∨_k (A_k f(x) <= b_k)`` the margin of disjunct ``k`` is
``m_k(x) = max_i (A_k f(x) - b_k)_i`` (mixed rows ``Ax x + Ay f(x) - bm`` join the max); ``x`` is a
counterexample iff ``min_k m_k(x) <= 0``. The search runs in rounds, per property, batched over points:

1. screening: the box centre and all corners (at most 8 free coordinates; first round only), and a batch
   of uniform random points (thousands for small inputs, fresh every round);
2. PGD [Madry et al.]: ``x <- Proj_[lo,hi](x - eta_t (hi - lo) sign grad loss(x))``, all starts batched
   into one tensor, ``eta_t`` decaying geometrically by 1000x over ``steps``. Starts: the best points seen
   so far (jittered after the first round) and the round's best screened points, with small first steps
   (0.2-5 % of the width: refinement of a basin, which finds the thin counterexample regions of e.g. ACAS
   Xu 1_3 / 1_5 property 2), and uniform random points with first step 1/4 (exploration). Start ``r``
   descends ``m_k`` for ``k = r mod (K+1)`` or, for ``k = K``, the union margin ``min_k m_k``.

Rounds repeat (seeded by ``seed``) until the time budget is spent.

Every candidate (union margin ``<= 0`` in the attack dtype) is snapped into the box on float32 numbers
(:func:`~verify.counterexample.snap_into_box`), re-evaluated with a float64 copy of the IR, and then checked
by onnxruntime with the organizers' rules (:func:`~verify.counterexample.validate_counterexample`); a point
that fails any check is dropped and the search goes on, so ``falsify`` never returns an unvalidated point.
Witnesses valid only up to the 1e-4 tolerance are kept as a fallback while the search looks for a
zero-tolerance one.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from verify.counterexample import Validation, snap_into_box, validate_counterexample
from verify.errors import ShapeError
from verify.graph import Graph
from verify.vnnlib import Property, VnnlibSpec

__all__ = ["AttackResult", "falsify"]

_MAX_CORNER_DIMS = 8
_CHUNK_VALUES = 1 << 20  # input values per forward pass while screening (at most 4096 points)
_CHECKS_PER_STEP = 3  # candidates confirmed per PGD step (best margins first)
_ELITE_STEPS = (0.01, 0.05, 0.002, 0.25)  # first PGD steps (x box width) from the best points so far
_RANDOM_STEP = 0.25  # first PGD step from uniform random starts
_SMALL_NETWORK = 1_000_000  # weights below which the search runs on one torch thread by default


@dataclass
class AttackResult:
    """A validated counterexample.

    ``x``: float64 ``[n_inputs]`` (float32-representable wherever the box admits a float32 value);
    ``y``: the output at ``x`` (onnxruntime's when ``validated_by == "onnxruntime"``, else the float64 IR's);
    ``property_index`` / ``disjunct_index``: the property and disjunct it violates; ``exact``: valid with
    zero tolerance; ``seconds``: wall time of the search; ``phase``: ``"screen"`` or ``"pgd"``;
    ``validation``: onnxruntime's verdict (``None`` for float64-IR-only validation).
    """

    x: np.ndarray
    y: np.ndarray
    property_index: int
    disjunct_index: int
    exact: bool
    validated_by: str
    seconds: float
    phase: str
    validation: Validation | None = None


class _Prop:
    """One property's box and stacked disjunct rows in the attack dtype."""

    def __init__(self, index: int, prop: Property, n_in: int, n_out: int, dtype: torch.dtype,
                 device: torch.device):
        self.index, self.prop = index, prop
        self.lo_np, self.hi_np = prop.box.lo, prop.box.hi
        self.lo = torch.tensor(prop.box.lo, dtype=dtype, device=device)
        self.hi = torch.tensor(prop.box.hi, dtype=dtype, device=device)
        self.width = self.hi - self.lo
        self.n_disj = len(prop.disjuncts)
        ay, ax, b, owner = [], [], [], []
        has_mixed = any(d.mixed is not None for d in prop.disjuncts)
        for k, d in enumerate(prop.disjuncts):
            rows = [(d.A, np.zeros((d.A.shape[0], n_in)), d.b)]
            if d.mixed is not None:
                mx, my, mb = d.mixed
                rows.append((my, mx, mb))
            for a_y, a_x, bb in rows:
                ay.append(np.asarray(a_y, dtype=np.float64).reshape(-1, n_out))
                ax.append(np.asarray(a_x, dtype=np.float64).reshape(-1, n_in))
                b.append(np.asarray(bb, dtype=np.float64).reshape(-1))
                owner.append(np.full(b[-1].shape[0], k, dtype=np.int64))
        self.ay = torch.tensor(np.concatenate(ay), dtype=dtype, device=device)  # [R, n_out]
        self.ax = torch.tensor(np.concatenate(ax), dtype=dtype, device=device) if has_mixed else None  # [R, n_in]
        self.b = torch.tensor(np.concatenate(b), dtype=dtype, device=device)  # [R]
        self.owner = torch.tensor(np.concatenate(owner), device=device)  # [R] disjunct of each row

    def margins(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B, K]``: ``m_k = max_i (A_k y - b_k)_i`` per disjunct (``-inf`` for a disjunct without rows)."""
        r = y @ self.ay.T - self.b
        if self.ax is not None:
            r = r + x @ self.ax.T
        out = torch.full((x.shape[0], self.n_disj), -torch.inf, dtype=r.dtype, device=r.device)
        return out.scatter_reduce(1, self.owner.expand(x.shape[0], -1), r, reduce="amax", include_self=True)

    def uniform(self, n: int, gen: torch.Generator) -> Tensor:
        u = torch.rand(n, self.lo.shape[0], generator=gen, dtype=self.lo.dtype, device=self.lo.device)
        return self.lo + u * self.width


class _Search:
    def __init__(self, graph: Graph, spec: VnnlibSpec, deadline: float, onnx_path: str | None, t0: float):
        self.graph, self.spec, self.deadline, self.onnx_path, self.t0 = graph, spec, deadline, onnx_path, t0
        self.dtype, self.device = graph.dtype, graph.device
        self.g64 = graph if self.dtype == torch.float64 else copy.deepcopy(graph).cast(torch.float64)
        self.fallback: AttackResult | None = None
        self.rejected = 0

    def out(self, g: Graph, x: Tensor) -> Tensor:
        return g(x).reshape(x.shape[0], -1)

    def time_left(self) -> bool:
        return time.perf_counter() < self.deadline

    def confirm(self, p: _Prop, x: Tensor, phase: str) -> AttackResult | None:
        """Snap, re-check in float64 with the IR, then with onnxruntime. Returns an exact witness, stores a
        tolerance-only one in ``self.fallback``, returns ``None`` otherwise."""
        xs = snap_into_box(x.detach().to(torch.float64).cpu().numpy(), p.lo_np, p.hi_np)
        with torch.no_grad():
            y64 = self.out(self.g64, torch.from_numpy(xs)[None].to(self.device)).reshape(-1).cpu().numpy()
        if not any(d.holds(xs, y64) for d in p.prop.disjuncts) or not p.prop.box.contains(xs):
            self.rejected += 1
            return None
        if self.onnx_path is None:
            k = next(i for i, d in enumerate(p.prop.disjuncts) if d.holds(xs, y64))
            return AttackResult(xs, y64, p.index, k, True, "float64 IR", time.perf_counter() - self.t0, phase)
        v = validate_counterexample(self.onnx_path, self.spec, xs)
        if not v.ok:
            self.rejected += 1
            return None
        assert v.y is not None and v.property_index is not None and v.disjunct_index is not None
        res = AttackResult(xs, v.y, v.property_index, v.disjunct_index, v.exact, "onnxruntime",
                           time.perf_counter() - self.t0, phase, v)
        if v.exact:
            return res
        if self.fallback is None:
            self.fallback = res
        return None

    def try_candidates(self, p: _Prop, x: Tensor, union: Tensor, phase: str) -> AttackResult | None:
        hit = torch.nonzero(union <= 0).reshape(-1)
        if hit.numel() == 0:
            return None
        order = hit[torch.argsort(union[hit])][:_CHECKS_PER_STEP]
        for i in order.tolist():
            res = self.confirm(p, x[i], phase)
            if res is not None:
                return res
        return None

    # -- screening ---------------------------------------------------------------------------------
    def screen(
        self, p: _Prop, n_random: int, n_keep: int, gen: torch.Generator, special: bool
    ) -> tuple[AttackResult | None, tuple[Tensor, Tensor]]:
        """Uniform points, after the centre and the corners (<= 8 free coordinates) when ``special``;
        returns a witness or the ``n_keep`` points with the lowest union margin and their margins."""
        pts = [((p.lo + p.hi) / 2)[None]]
        free = torch.nonzero(p.width > 0).reshape(-1).tolist()
        if special and 0 < len(free) <= _MAX_CORNER_DIMS:
            bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=len(free))), dtype=self.dtype,
                                device=self.device)
            corners = p.lo.repeat(bits.shape[0], 1)
            corners[:, free] = p.lo[free] + bits * p.width[free]
            pts.append(corners)
        pts = pts if special else []
        pts.append(p.uniform(max(n_random, 1), gen))
        cand = torch.cat(pts)
        best_x, best_m = [], []
        chunk = int(min(4096, max(16, _CHUNK_VALUES // max(p.lo.shape[0], 1))))
        for s in range(0, cand.shape[0], chunk):
            if s > 0 and not self.time_left():
                break
            xb = cand[s:s + chunk]
            with torch.no_grad():
                union = p.margins(xb, self.out(self.graph, xb)).min(1).values
            res = self.try_candidates(p, xb, union, "screen")
            if res is not None:
                return res, (xb[:0], union[:0])
            keep = torch.argsort(union)[:n_keep]
            best_x.append(xb[keep])
            best_m.append(union[keep])
        xs, ms = torch.cat(best_x), torch.cat(best_m)
        order = torch.argsort(ms)[:n_keep]
        return None, (xs[order], ms[order])

    # -- PGD ---------------------------------------------------------------------------------------
    def pgd(
        self, p: _Prop, x0: Tensor, eta0: Tensor, steps: int
    ) -> tuple[AttackResult | None, Tensor, Tensor]:
        """Sign-gradient PGD from ``x0`` [B, n] with per-start initial steps ``eta0`` [B] (fractions of the
        box width), decaying geometrically by 1000x over ``steps``. Returns a witness (or ``None``) and each
        start's best point and union margin."""
        n = x0.shape[0]
        k = p.n_disj
        target = torch.arange(n, device=x0.device) % (k + 1) if k > 1 else torch.zeros(n, dtype=torch.long,
                                                                                       device=x0.device)
        use_union = target == k
        tgt = target.clamp(max=k - 1)[:, None]
        decay = (1e-3) ** (1.0 / max(steps - 1, 1))
        x = x0.clone()
        best_x, best_m = x0.clone(), torch.full((n,), torch.inf, dtype=x0.dtype, device=x0.device)
        step = eta0.to(x0.dtype)[:, None] * p.width
        for _ in range(steps):
            if not self.time_left():
                break
            x.requires_grad_(True)
            with torch.enable_grad():
                m = p.margins(x, self.out(self.graph, x))
                union = m.min(1).values
                loss = torch.where(use_union, union, m.gather(1, tgt).reshape(-1))
                (grad,) = torch.autograd.grad(loss.sum(), x)
            grad = torch.nan_to_num(grad, nan=0.0)
            x, union = x.detach(), union.detach()
            better = union < best_m
            best_x[better], best_m[better] = x[better], union[better]
            res = self.try_candidates(p, x, union, "pgd")
            if res is not None:
                return res, best_x, best_m
            x = torch.minimum(torch.maximum(x - step * grad.sign(), p.lo), p.hi)
            step = step * decay
        return None, best_x, best_m


def _default_onnx(graph: Graph) -> str | None:
    src = graph.source
    return src if src and not src.startswith("<") and Path(src).is_file() else None


def falsify(
    graph: Graph,
    spec: VnnlibSpec,
    time_budget_s: float = 10.0,
    restarts: int | None = None,
    steps: int = 50,
    seed: int = 0,
    onnx_path: str | os.PathLike | None = None,
    n_random: int | None = None,
    num_threads: int | None = None,
) -> AttackResult | None:
    """Search for a counterexample to ``spec`` on ``graph`` (module docstring) within ``time_budget_s``.

    ``onnx_path`` (default: ``graph.source`` when it is a file) is the model onnxruntime validates against;
    without one, candidates are validated with the float64 IR only (``validated_by == "float64 IR"``).
    ``restarts``: PGD starts per round and property (default ``65536 / n_inputs`` in [32, 512]); ``steps``:
    PGD steps per round; ``n_random``: uniform screening points per round and property (default
    ``4e6 / n_inputs`` in [256, 16384]); ``num_threads``: torch threads during the search, restored after
    (``None``: 1 for networks under 1M weights, whose small batched ops only lose to thread synchronisation
    -- on a busy 2-core machine two threads made ACAS Xu PGD over 50x slower --, else unchanged; ``0``:
    unchanged).
    Returns ``None`` when nothing validated in time. Deterministic for a given ``seed`` (up to where the
    time budget cuts the search).
    """
    t0 = time.perf_counter()
    if spec.n_inputs != graph.input_numel or spec.n_outputs != graph.output_numel:
        raise ShapeError(f"spec has {spec.n_inputs} inputs / {spec.n_outputs} outputs, the model "
                         f"{graph.input_numel} / {graph.output_numel}")
    if num_threads is None:
        n_weights = sum(t.numel() for nd in graph.nodes for t in nd.op.tensors().values())
        num_threads = 1 if n_weights < _SMALL_NETWORK else 0
    old_threads = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(int(num_threads))
    try:
        return _falsify(graph, spec, t0, time_budget_s, restarts, steps, seed, onnx_path, n_random)
    finally:
        torch.set_num_threads(old_threads)


SCREEN_RATE = 2.6e8
"""Activations per second one core evaluates in a screening forward pass (measured on the cGAN of vnncomp_ops)."""


def _falsify(graph: Graph, spec: VnnlibSpec, t0: float, time_budget_s: float, restarts: int | None,
             steps: int, seed: int, onnx_path: str | os.PathLike | None,
             n_random: int | None) -> AttackResult | None:
    path = str(onnx_path) if onnx_path is not None else _default_onnx(graph)
    search = _Search(graph, spec, t0 + time_budget_s, path, t0)
    props = [_Prop(i, pr, spec.n_inputs, spec.n_outputs, search.dtype, search.device)
             for i, pr in enumerate(spec.properties)]
    props = [p for p in props if p.n_disj > 0]
    if not props:
        return None
    gen = torch.Generator(device=search.device).manual_seed(seed)  # on a GPU: another random stream
    n = max(spec.n_inputs, 1)
    n_random = int(min(16384, max(256, 4_000_000 // n))) if n_random is None else max(int(n_random), 0)
    # One screening round is a single forward pass with no time check: on large networks (a cGAN's 160k
    # activations per point took 10 s for 16384 points on a 0.6 s budget) keep it within about half the budget,
    # at the measured ~2.6e8 activations per second of one core. Small networks keep the default.
    work = sum(nd.op.out_numel() for nd in graph.nodes) + n
    n_random = min(n_random, max(64, int(SCREEN_RATE * 0.5 * time_budget_s / work)))
    restarts = int(min(512, max(32, 65536 // n))) if restarts is None else max(int(restarts), 1)
    n_elite = max(restarts // 4, 1)
    elites: list[tuple[Tensor, Tensor] | None] = [None] * len(props)
    rnd = 0
    while search.time_left():
        for i, p in enumerate(props):
            # screening: centre and corners once, fresh uniform points every round
            res, (sx, sm) = search.screen(p, n_random, restarts, gen, special=rnd == 0)
            if res is not None:
                return res
            ex, em = (sx, sm) if elites[i] is None else _merge(elites[i], (sx, sm), restarts)
            if not search.time_left():
                break
            # PGD starts: the best points so far (jittered after the first round), the best fresh screening
            # points (a different basin, often), and uniform random points
            starts = ex[:n_elite]
            if rnd > 0:
                noise = torch.randn(starts.shape, generator=gen, dtype=starts.dtype, device=starts.device)
                starts = torch.minimum(torch.maximum(starts + 0.02 * p.width * noise, p.lo), p.hi)
                starts = torch.cat([starts, sx[:n_elite]])
            n_rand = max(restarts - starts.shape[0], 0)
            x0 = torch.cat([starts, p.uniform(n_rand, gen)])
            # refine around good points with small first steps; explore from random ones with large steps
            small = torch.tensor(_ELITE_STEPS, dtype=x0.dtype, device=x0.device).repeat(starts.shape[0])
            small = small[: starts.shape[0]]
            eta0 = torch.cat([small, torch.full((n_rand,), _RANDOM_STEP, dtype=x0.dtype, device=x0.device)])
            res, bx, bm = search.pgd(p, x0, eta0, steps)
            if res is not None:
                res.seconds = time.perf_counter() - t0
                return res
            elites[i] = _merge((ex, em), (bx, bm), restarts)
            if not search.time_left():
                break
        rnd += 1
        if search.fallback is not None and rnd >= 2:
            break
    return search.fallback


def _merge(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` points of ``a`` and ``b`` with the lowest margins."""
    x, m = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    keep = torch.argsort(m)[:k]
    return x[keep], m[keep]
