"""Branch and bound on forward ReLU pre-activations for Jacobian objectives (Lipschitz, monotonicity).

A domain fixes signs ``s_i z_i <= 0`` of some ReLU inputs. Unlike the published Lipschitz BaB (which only
flips the Clarke mask and so converges to the *pattern-only* value), every child re-computes the forward
CROWN bounds under all its splits, so split constraints propagate to deeper neurons (newly stable neurons
fix their gates); a domain whose clamped bounds become empty is infeasible and dropped; a fully split domain
(every gate degenerate, the network affine on it) is settled by an LP over ``{x in X: s_i z_i(x) <= 0}``.
BaB therefore converges to the max over feasible patterns = the LipMIP value. Best-first on the upper
bound, batched, 'area' branching score ``|Lambda_y| * |u_g|u_g| - l_g|l_g||`` on unstable neurons.
Splits that are jointly infeasible only in combination (no single bound empties) are pruned early when they
sit on the first ReLU layer, whose inputs are affine in ``x``: a batched Farkas search
(``verify.lipschitz.split_feasibility``) finds multipliers, certified like the leaves' below; without it the
search enumerates infeasible high-bound patterns down to the leaves (one-hidden-layer nets: 300 s -> 10 s).
A domain may also carry a sub-box of the input (``input_split_above``): on low-dimensional inputs it bisects its
box while many ReLUs are unstable (the forward bounds tighten with the box), then splits ReLUs; the leaves' LPs use
the sub-box (:func:`split_search` picks this for deep nets on few inputs).

Rigour: every domain bound is the rigorous Jacobian bound of ``verify.lipschitz.jacobian``; an LP optimum is
no proof, so a leaf is dropped as infeasible only with a verified certificate: the LP's duals ``mu >= 0`` give
``sum_i mu_i s_i z_i(x)``, and a rigorous CROWN upper bound of it below 0 on the leaf (whose ReLUs are all
exact there) shows that no ``x`` realises the pattern (which would make the sum ``>= 0``). Otherwise the leaf is
kept, closed with its (sound) bound. Points of feasible leaves are only candidates for the attained value.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from verify.bounds.crown import RoundingCache, backward_pass, concretize_lower, intermediate_bounds
from verify.graph import Graph
from verify.lipschitz.jacobian import JacobianGraph, seed_tensor
from verify.lipschitz.split_feasibility import FirstLayerSplits
from verify.ops.activation import Relu
from verify.ops.base import Bounds
from verify.rounding import F64, gamma

log = logging.getLogger(__name__)


@dataclass
class Objective:
    """``kind='l1'``: ``sum_i |G:x_i|``; ``kind='entry'``: ``sign * G:x_feature`` (maximised)."""

    kind: str = "l1"
    feature: int = 0
    sign: float = 1.0


@dataclass
class BabResult:
    """Per-output results of :func:`bab`."""

    upper: Tensor  # [K] upper bound of the objective's max per output (float64, rigorous)
    lower: Tensor  # [K] bounds of the best feasible fully split domains (their value up to rounding; -inf if none)
    lower_x: list  # per output: an interior point of that domain (or None); callers certify its value
    status: str  # "converged" / "bounded" / "proved" (max <= 0) / "refuted" (a feasible point > 0)
    domains: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _objective(jg: JacobianGraph, gates, gb, seeds, obj: Objective, record: dict | None) -> Tensor:
    """Float64 upper bound ``[N]`` of the objective; ``record`` receives the Lambdas at gate outputs (for scores)."""
    if obj.kind == "l1":
        return jg.l1_upper(gates, gb, seeds, True, record)
    x = jg.graph.input_name
    shape = jg.graph.input_shape
    e = torch.zeros(int(torch.Size(shape).numel()), dtype=seeds.dtype, device=seeds.device)
    e[obj.feature] = -obj.sign
    lam = e.reshape(1, 1, *shape)
    # upper of sign*G = -lower(-sign*G); also intersected with the interval bound of G:x
    up = -jg.lower(x, lam, gates, gb, seeds, record)[:, 0]
    lo, hi = gb[x]
    n = seeds.shape[0]
    ival = (hi if obj.sign > 0 else -lo).reshape(n, -1)[:, obj.feature].to(F64)
    return torch.minimum(up, ival)


class _Evaluator:
    def __init__(self, graph: Graph, jg: JacobianGraph, x_lo: Tensor, x_hi: Tensor, seeds_k: Tensor,
                 obj: Objective):
        self.graph, self.jg, self.x_lo, self.x_hi, self.seeds_k, self.obj = graph, jg, x_lo, x_hi, seeds_k, obj
        self.relus = [n for n in graph.nodes if isinstance(n.op, Relu)]
        self.names = [n.inputs[0] for n in self.relus]
        self.first = FirstLayerSplits.of(graph)
        self.pruned = 0  # domains dropped by a certified first-layer Farkas certificate (BabResult.extra)

    def __call__(self, seed_idx: Tensor, splits: dict[str, Tensor], ref: dict | None):
        """Bounds of ``m`` domains: ReLU ``splits`` and ``ref`` (the parents' bounds; under the input's name,
        each domain's sub-box when inputs are split)."""
        m = seed_idx.shape[0]
        x = self.graph.input_name
        if ref is not None and x in ref:
            lo, hi = ref[x]
        else:
            lo, hi = self.x_lo.expand(m, *self.x_lo.shape[1:]), self.x_hi.expand(m, *self.x_hi.shape[1:])
        with torch.no_grad():
            fb = intermediate_bounds(self.graph, lo, hi, "crown", splits=splits, reference=ref)
        feasible = torch.ones(m, dtype=torch.bool, device=lo.device)
        for l, h in fb.values():
            # the bounds are rigorous on the domain, so empty bounds prove that no input realises its splits
            bad = (l > h) | torch.isnan(l) | torch.isnan(h)
            feasible &= ~bad.reshape(m, -1).any(-1)
        if self.first is not None and self.first.name in splits:
            feasible &= ~self._jointly_infeasible(splits[self.first.name], fb, feasible, lo, hi)
        seeds = self.seeds_k[seed_idx]
        gates = self.jg.gates(fb, splits)
        gb = self.jg.bounds(gates, seeds, True)
        record = {n.name: None for n in self.relus}
        up = _objective(self.jg, gates, gb, seeds, self.obj, record)
        dev = self.x_lo.device
        scores = [torch.zeros(m, 0, dtype=self.x_lo.dtype, device=dev)]
        unstable_any = torch.zeros(m, dtype=torch.bool, device=dev)
        for n in self.relus:
            dl, du = gates[n.name]
            lg, ug = gb[n.name]
            unst = du > dl
            lam = record[n.name]
            weight = torch.zeros_like(lg) if lam is None else lam.abs().sum(1).expand_as(lg)
            area = (ug * ug.abs() - lg * lg.abs()).abs()
            sc = torch.where(unst, weight * area + 1e-12, torch.full_like(lg, -1.0))
            scores.append(sc.reshape(m, -1))
            unstable_any |= unst.reshape(m, -1).any(-1)
        # input scores (for input splits): width times the largest |G:x_i|, the first-order change across the box
        glo, ghi = gb[x]
        mag = torch.maximum(glo.abs(), ghi.abs()).reshape(m, -1).to(scores[0].dtype)
        scores.append((hi - lo).reshape(m, -1).to(mag.dtype) * (mag + 1e-12))
        ref_out = {k: fb[k] for k in self.names}
        ref_out[x] = (lo, hi)
        return up, feasible, torch.cat(scores, 1), ~unstable_any, ref_out, gates

    def _jointly_infeasible(self, split: Tensor, fb: dict, feasible: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """``[m]``: domains whose first-layer splits no input of the box realises, each proved by
        :func:`_certified_infeasible` from the multipliers of :meth:`FirstLayerSplits.candidates`."""
        flag, mu = self.first.candidates(split, lo, hi)
        out = torch.zeros_like(flag)
        idx = (flag & feasible).nonzero().flatten()
        if idx.numel():
            shape = self.graph.shape_of(self.first.name)
            coef = {self.first.name: (mu[idx] * split[idx].reshape(idx.numel(), -1).to(mu.dtype)).reshape(-1, *shape)}
            dom = {a: (b[0][idx], b[1][idx]) for a, b in fb.items()}
            dom[self.graph.input_name] = (lo[idx], hi[idx])
            out[idx] = _certified_infeasible(self.graph, coef, dom)
        self.pruned += int(out.sum())
        return out


def _pattern_lp(graph: Graph, relus, gates_row: dict[str, Tensor], x_lo: Tensor, x_hi: Tensor
                ) -> tuple[bool, np.ndarray | None, float, dict[str, Tensor]]:
    """LP check of a fully fixed ReLU pattern: ``max t`` s.t. ``s_i z_i(x) >= t`` for all ReLU inputs, ``x`` in
    the box (``z`` affine in ``x`` once the pattern is fixed). Returns ``(t* >= -tol, x*, t*, coef)`` with
    ``coef[z] = mu s`` per ReLU input from the LP duals: a candidate infeasibility certificate
    (``sum <coef, z(x)> < 0`` wherever the pattern holds), to be verified by :func:`_certified_infeasible`."""
    from scipy.optimize import linprog

    n = graph.input_numel
    shape = graph.input_shape
    eye = torch.eye(n, dtype=x_lo.dtype, device=x_lo.device)
    pts = torch.cat([torch.zeros(1, n, dtype=x_lo.dtype, device=x_lo.device), eye]).reshape(n + 1, *shape)
    vals = {graph.input_name: pts}
    rows_a, rows_c, signs = [], [], []
    for node in graph.nodes:
        ins = [vals[i] for i in node.inputs]
        if isinstance(node.op, Relu):
            z = ins[0]
            mask = gates_row[node.name].to(z.dtype)
            zf = z.reshape(n + 1, -1)
            c = zf[0]
            a = zf[1:] - c  # [n, numel]
            s = mask.reshape(-1) * 2 - 1  # +1: z >= 0, -1: z <= 0
            rows_a.append((s.unsqueeze(0) * a).T)
            rows_c.append(s * c)
            signs.append((node.inputs[0], s))
            vals[node.name] = z * mask.unsqueeze(0)
        else:
            vals[node.name] = node.op.forward(*ins)
    if not rows_a:
        return True, ((x_lo + x_hi) / 2).reshape(-1).numpy(), 1.0, {}
    A = torch.cat(rows_a).double().numpy()  # s (A x + c) >= t  <=>  -sA x + t <= s c
    C = torch.cat(rows_c).double().numpy()
    scale = np.abs(A).sum(1) + np.abs(C) + 1e-12
    A_ub = np.hstack([-A / scale[:, None], np.ones((A.shape[0], 1))])
    b_ub = C / scale
    bounds = [(float(lo), float(hi)) for lo, hi in zip(x_lo.reshape(-1).tolist(), x_hi.reshape(-1).tolist(),
                                                        strict=True)] + [(None, 1.0)]
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        # 2: infeasible is impossible here (t is free below); anything else: keep the domain (sound)
        return True, None, -math.inf, {}
    t = -float(res.fun)
    # duals of the (scaled) rows s_i z_i / scale_i >= t: -marginals >= 0; any mu >= 0 is a candidate
    mu = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0) / scale
    coef, off = {}, 0
    for name, s in signs:
        coef[name] = torch.from_numpy(mu[off:off + s.numel()].copy()) * s.double()
        off += s.numel()
    x = np.clip(np.asarray(res.x[:n]), x_lo.reshape(-1).numpy(), x_hi.reshape(-1).numpy())
    return t >= -1e-9, x, t, coef


def _certified_infeasible(graph: Graph, coef: dict[str, Tensor], bounds: dict[str, tuple[Tensor, Tensor]]
                          ) -> Tensor:
    """``[B]`` bool: True where ``sum_z <coef_z, z(x)> < 0`` for every ``x`` of the domain, proved by CROWN: each
    term is back-substituted to ``<Lambda_z, x> + kappa_z`` (rigorous lower bounds of ``-<coef_z, z>``; ``bounds``:
    the ``B`` domains' boxes and ReLU-input bounds, splits applied, ``coef_z`` ``[B, *shape]``), the linear functions
    are summed in float64 (their rounding paid over the box) and concretised once. A point realising the pattern
    has ``coef_z z >= 0`` entrywise."""
    x_lo, x_hi = bounds[graph.input_name]
    b = x_lo.shape[0]
    if not coef:
        return torch.zeros(b, dtype=torch.bool, device=x_lo.device)
    cache = RoundingCache()
    lam_sum = torch.zeros(b, 1, graph.input_numel, dtype=F64, device=x_lo.device)
    lam_mass = torch.zeros_like(lam_sum)
    kappa = torch.zeros(b, 1, dtype=F64, device=x_lo.device)
    kappa_mass = torch.zeros_like(kappa)
    for name, c in coef.items():
        lam = (-c).to(x_lo.dtype).reshape(b, 1, *graph.shape_of(name))
        lam_x, k = backward_pass(graph, name, lam, bounds, cache=cache)
        if lam_x is not None:
            lam64 = lam_x.reshape(b, 1, -1).to(F64)
            lam_sum, lam_mass = lam_sum + lam64, lam_mass + lam64.abs()
        kappa, kappa_mass = kappa + k, kappa_mass + k.abs()
    n = len(coef) + 1
    mag = torch.maximum(x_lo.abs(), x_hi.abs()).reshape(b, -1, 1).to(F64)
    slack = gamma(n, F64) * ((lam_mass @ mag).squeeze(-1) + kappa_mass)  # the float64 sums above
    res = concretize_lower(lam_sum.reshape(b, 1, *graph.input_shape), kappa - slack, x_lo, x_hi)[:, 0]
    return torch.isfinite(res) & (res > 0)


def bab(graph: Graph, x_lo: Tensor, x_hi: Tensor, outputs: Sequence[int], obj: Objective,
        timeout: float = 10.0, batch: int = 128, root_upper: Tensor | None = None,
        max_domains: int = 200_000, stop_below: float | None = None, known_lower: float | None = None,
        should_stop: Callable[[], bool] | None = None, input_split_above: int | None = None,
        reference: Mapping[str, Bounds] | None = None) -> BabResult:
    """Best-first BaB maximising the objective over the box for every selected output (one batch).

    ``graph``: any precision (its allowances are sized for it). ``root_upper`` [K]: sound bounds (e.g. CROWN)
    children never exceed. ``max_domains``: open domains kept at most (memory); the search stops beyond it.
    ``stop_below``: stop as soon as the global upper is <= it (monotonicity: 0). ``known_lower``: a value
    attained in the box (e.g. a sampled gradient norm); the search stops once the upper bound meets it.
    ``should_stop``: polled once per batch; True ends the search with the bounds so far (a racing method won).
    ``input_split_above``: a domain with more unstable ReLUs than this bisects its input box (along the largest
    ``width_i * |G:x_i|``) instead of splitting a ReLU; ``None``: ReLU splits only. ``reference``: sound bounds
    of the ReLU inputs over the whole box (``[1, *shape]``, e.g. MIP-refined), intersected into every domain's."""
    t0 = time.perf_counter()
    jg = JacobianGraph(graph)
    k = len(outputs)
    seeds_k = seed_tensor(graph, outputs, x_lo.dtype)
    ev = _Evaluator(graph, jg, x_lo, x_hi, seeds_k, obj)
    names, relus = ev.names, ev.relus
    sizes = [int(torch.Size(graph.shape_of(nm)).numel()) for nm in names]
    offsets = np.cumsum([0] + sizes)
    dev = x_lo.device
    seed_idx = torch.arange(k, device=dev)
    splits = {nm: torch.zeros(k, *graph.shape_of(nm), dtype=torch.int8, device=dev) for nm in names}
    t_root = time.perf_counter()
    root_ref = None if reference is None else {
        nm: (reference[nm][0].expand(k, *reference[nm][0].shape[1:]),
             reference[nm][1].expand(k, *reference[nm][1].shape[1:])) for nm in names if nm in reference}
    up, feas, scores, full, ref, gates = ev(seed_idx, splits, root_ref)
    # one batch of 2*batch children should take at most ~5% of the budget (large nets: CNNs)
    per_domain = (time.perf_counter() - t_root) / k
    batch = int(max(1, min(batch, 0.05 * timeout / (2 * per_domain + 1e-9))))
    if root_upper is not None:
        up = torch.minimum(up, root_upper.to(up.dtype))
    lower = torch.full((k,), -math.inf, dtype=F64, device=dev)
    lower_x: list = [None] * k
    if not relus:  # nothing to branch on (smooth activations only): the root bound is the answer
        return BabResult(up, lower, lower_x, "bounded", k, time.perf_counter() - t0)
    # with smooth activations a fully split domain is still relaxed: its bound is not an attained value
    exact_leaves = len(relus) == len(jg.activations) and not jg.pools and not jg.products
    # the LP of a fully split domain is built in float64 on the CPU (a heuristic: infeasibility is certified
    # separately, on the search's device)
    lp_graph = graph.with_dtype(F64).to("cpu")
    lp_relus = [n for n in lp_graph.nodes if isinstance(n.op, Relu)]
    closed_upper = torch.full((k,), -math.inf, dtype=F64, device=dev)  # bounds of settled (feasible) domains
    q_seed, q_up, q_scores, q_full = seed_idx, up, scores, full
    q_splits, q_ref = splits, ref
    q_gates = gates
    keep = feas
    n_domains = k

    def filt(mask: Tensor):
        nonlocal q_seed, q_up, q_scores, q_full, q_splits, q_ref, q_gates
        q_seed, q_up, q_scores, q_full = q_seed[mask], q_up[mask], q_scores[mask], q_full[mask]
        q_splits = {a: b[mask] for a, b in q_splits.items()}
        q_ref = {a: (b[0][mask], b[1][mask]) for a, b in q_ref.items()}
        q_gates = {a: (b[0][mask], b[1][mask]) for a, b in q_gates.items()}

    filt(keep)
    status = "bounded"
    next_log = 0.0
    while True:
        glob = torch.maximum(_per_output(q_up, q_seed, k), closed_upper)
        if log.isEnabledFor(logging.DEBUG) and time.perf_counter() > next_log:  # progress for -v, every 2 s
            next_log = time.perf_counter() + 2.0
            log.debug("domains %d, open %d, upper %.6g, attained lower %.6g, %.1f s of %.1f s", n_domains,
                      q_up.numel(), float(glob.max()), float(lower.max()), time.perf_counter() - t0, timeout)
        if stop_below is not None and float(glob.max()) <= stop_below:
            status = "proved"
            break
        if q_up.numel() == 0:
            status = "converged"
            break
        if known_lower is not None and float(glob.max()) <= known_lower + 1e-6 * max(1.0, abs(known_lower)):
            status = "converged"
            break
        if time.perf_counter() - t0 > timeout or q_up.numel() > max_domains:
            break
        if should_stop is not None and should_stop():
            break
        # fully split domains among the top batch are settled by LP, all at once (one queue filter per batch)
        top_b = q_up.argsort(descending=True)[:batch]
        leaves = top_b[q_full[top_b]]
        if leaves.numel():
            mask = torch.ones(q_up.numel(), dtype=torch.bool, device=dev)
            refuted = False
            for top in leaves.tolist():
                mask[top] = False
                if exact_leaves:  # the net is affine on the domain: the LP decides whether the pattern is realised
                    row = {n.name: q_gates[o.name][0][top].cpu() for n, o in zip(lp_relus, relus, strict=True)}
                    b_lo, b_hi = (b[top:top + 1].cpu() for b in q_ref[graph.input_name])
                    ok, x, t, coef = _pattern_lp(lp_graph, lp_relus, row, b_lo.double(), b_hi.double())
                    coef = {a: c.to(dev) for a, c in coef.items()}
                    if not ok:  # dropped only when the duals prove it; else kept, closed with its sound bound
                        leaf = {a: (b[0][top:top + 1], b[1][top:top + 1]) for a, b in q_ref.items()}
                        ok = not bool(_certified_infeasible(graph, coef, leaf)[0])
                else:  # other nonlinearities remain: no exact test, keep the domain's (sound) bound as settled
                    ok, x, t = True, None, -math.inf
                if not ok:
                    continue
                j, val = int(q_seed[top]), q_up[top]
                closed_upper[j] = torch.maximum(closed_upper[j], val)
                if exact_leaves and t > 1e-9 and val > lower[j]:
                    lower[j], lower_x[j] = val, x
                    if stop_below is not None and float(val) > stop_below:
                        refuted = True
                        break
            filt(mask)
            if refuted:
                status = "refuted"
                break
            glob = torch.maximum(_per_output(q_up, q_seed, k), closed_upper)
            if exact_leaves and bool((lower >= glob).all()):  # a realised pattern attains every output's upper
                status = "converged"
                break
            continue
        # pop the worst (largest upper) domains that still have unstable neurons
        cand = (~q_full).nonzero().flatten()
        order = q_up[cand].argsort(descending=True)[:batch]
        pick = cand[order]
        rest = torch.ones(q_up.numel(), dtype=torch.bool, device=dev)
        rest[pick] = False
        p_seed, p_up, p_scores = q_seed[pick], q_up[pick], q_scores[pick]
        p_splits = {a: b[pick] for a, b in q_splits.items()}
        p_ref = {a: (b[0][pick], b[1][pick]) for a, b in q_ref.items()}
        filt(rest)
        m = pick.numel()
        neuron_scores = p_scores[:, :offsets[-1]]
        # low-dimensional inputs: bisect the box while many ReLUs are unstable, then split ReLUs (the leaves' LPs
        # settle the last patterns exactly, which bisection alone approaches only in the limit)
        by_input = torch.zeros(m, dtype=torch.bool, device=dev)
        if input_split_above is not None:
            # ... but never below 1/1024 of the box per input: where more than that many kinks meet, ReLU splits
            # still end the search
            b_lo, b_hi = (b.reshape(m, -1) for b in p_ref[graph.input_name])
            rel = ((b_hi - b_lo) / (x_hi - x_lo).reshape(1, -1).clamp(min=1e-300)).amax(1)
            by_input = ((neuron_scores > 0).sum(1) > input_split_above) & (rel > MIN_INPUT_FRACTION)
        choice = torch.where(by_input, -1, neuron_scores.argmax(1))
        c_splits = {a: torch.cat([b, b]).clone() for a, b in p_splits.items()}
        for li, nm in enumerate(names):
            sel = (choice >= offsets[li]) & (choice < offsets[li + 1])
            if sel.any():
                idx = sel.nonzero().flatten()
                local = choice[idx] - int(offsets[li])
                flat = c_splits[nm].reshape(2 * m, -1)
                flat[idx, local] = 1
                flat[idx + m, local] = -1
        c_seed = torch.cat([p_seed, p_seed])
        c_ref = {a: (torch.cat([b[0], b[0]]), torch.cat([b[1], b[1]])) for a, b in p_ref.items()}
        if bool(by_input.any()):
            idx = by_input.nonzero().flatten()
            dim = p_scores[idx, offsets[-1]:].argmax(1, keepdim=True)
            b_lo, b_hi = (b.reshape(2 * m, -1).clone() for b in c_ref[graph.input_name])
            mid = (b_lo[idx].gather(1, dim) + b_hi[idx].gather(1, dim)) / 2
            b_hi[idx] = b_hi[idx].scatter(1, dim, mid)  # first child: the lower half
            b_lo[idx + m] = b_lo[idx + m].scatter(1, dim, mid)  # second child: the upper half
            c_ref[graph.input_name] = (b_lo.reshape(2 * m, *graph.input_shape), b_hi.reshape(2 * m, *graph.input_shape))
        up, feas, scores, full, ref, gates = ev(c_seed, c_splits, c_ref)
        up = torch.minimum(up, torch.cat([p_up, p_up]))
        n_domains += 2 * m
        keep = feas
        q_seed = torch.cat([q_seed, c_seed[keep]])
        q_up = torch.cat([q_up, up[keep]])
        q_scores = torch.cat([q_scores, scores[keep]])
        q_full = torch.cat([q_full, full[keep]])
        q_splits = {a: torch.cat([q_splits[a], c_splits[a][keep]]) for a in q_splits}
        q_ref = {a: (torch.cat([q_ref[a][0], ref[a][0][keep]]), torch.cat([q_ref[a][1], ref[a][1][keep]]))
                 for a in q_ref}
        q_gates = {a: (torch.cat([q_gates[a][0], gates[a][0][keep]]), torch.cat([q_gates[a][1], gates[a][1][keep]]))
                   for a in q_gates}
    upper = torch.maximum(_per_output(q_up, q_seed, k), closed_upper)
    if status == "converged" and q_up.numel() > 0:
        status = "converged"
    return BabResult(upper, lower, lower_x, status, n_domains, time.perf_counter() - t0,
                     {"farkas_pruned": ev.pruned})


MAX_INPUTS = 10
"""Input splitting (:func:`split_search`) is tried up to this many inputs (each bisection halves one of them)."""
INPUT_SPLIT_ABOVE = 8
"""In :func:`split_search`, domains with more unstable ReLUs than this bisect their box."""
REFINE_SHARE = 0.3
"""At most this share of :func:`split_search`'s time goes to the MIP refinement of intermediate bounds."""
MIN_INPUT_FRACTION = 2.0 ** -10
"""A sub-box no wider than this fraction of the box in every input splits ReLUs only."""


def split_search(graph: Graph, x_lo: Tensor, x_hi: Tensor, outputs: Sequence[int], timeout: float,
                 root_upper: Tensor | None = None, known_lower: float | None = None,
                 should_stop: Callable[[], bool] | None = None, refine: bool = True) -> BabResult:
    """The l1 Jacobian search of ``verify.lipschitz.bab``; on inputs of at most ``MAX_INPUTS`` dimensions and two
    or more ReLU layers a domain bisects its box while more than ``INPUT_SPLIT_ABOVE`` of its ReLUs are unstable,
    then splits ReLUs. (With one ReLU layer the first-layer Farkas pruning makes ReLU splits alone converge fast;
    measured on the random nets of ``benchmarks/lipschitz.py --random``: 3-hidden-layer nets of 7-9 inputs went
    from 3.5-23 to 2.5-10 in 10 s, one-hidden-layer nets of 8-11 inputs from converged in 0.5-2.7 s to open.)
    ``refine``: on nets of two or more ReLU layers without input splits (more inputs) and with an exact MIP encoding,
    first tighten the ReLU inputs' bounds by MIP (``verify.lipschitz.refine``, at most ``REFINE_SHARE`` of the
    time) and search below those. Measured on 10 s runs of the random nets: 2-3 hidden layers on 20-31 inputs
    8.08 -> 7.21, 4.35 -> 3.96, 5.49 -> 4.90, 5.76 -> 5.36; with input splits (<= 10 inputs) it cost more time than
    it saved (2.53 -> 2.91, 9.49 -> 11.7), so those nets skip it."""
    t0 = time.perf_counter()
    layers = sum(isinstance(n.op, Relu) for n in graph.nodes)
    above = INPUT_SPLIT_ABOVE if graph.input_numel <= MAX_INPUTS and layers >= 2 else None
    reference = None
    if refine and above is None and layers >= 2 and x_lo.shape[0] == 1 and graph.device.type == "cpu":
        from verify import mip
        from verify.lipschitz.refine import mip_refined_bounds

        if mip.mip_supported(graph) and mip.installed_backends():
            ref = mip_refined_bounds(graph, x_lo, x_hi, REFINE_SHARE * timeout)
            reference = ref.bounds
            log.info("MIP refinement: %d -> %d unstable ReLUs, %d solves, %.2f s (%s)", ref.unstable_before,
                     ref.unstable_after, ref.solves, ref.seconds, ref.stopped)
    return bab(graph, x_lo, x_hi, outputs, Objective("l1"), timeout=max(timeout - (time.perf_counter() - t0), 0.0),
               root_upper=root_upper, known_lower=known_lower, should_stop=should_stop, input_split_above=above,
               reference=reference)


def _per_output(values: Tensor, seed_idx: Tensor, k: int) -> Tensor:
    """Max of domain values per output index (``-inf`` where none)."""
    out = torch.full((k,), -math.inf, dtype=values.dtype, device=values.device)
    if values.numel():
        out = out.scatter_reduce(0, seed_idx, values, reduce="amax")
    return out
