"""alpha-CROWN (Xu et al., ICLR 2021): every relaxation slope in its valid range gives a sound bound,
so maximise ``B(alpha)`` by projected Adam, keeping the best bound seen per spec row.

Defaults follow auto_LiRPA 0.7.1: 20 iterations, lr 0.5, decay 0.98. By default intermediate bounds
stay at their CROWN values; ``optimize_intermediate`` also optimises the slopes used for them.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from verify.bounds.crown import (
    AlphaStore,
    RoundingCache,
    backward_pass,
    concretize_lower,
    intermediate_bounds,
    lower_bound,
)
from verify.graph import Graph

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 2.0  # a debug line at most this often (``-v``)


def final_alphas(graph: Graph, bounds, b: int, s: int) -> dict[str, Tensor]:
    out = {}
    for n in graph.ancestors(graph.output):
        if hasattr(n.op, "init_alpha"):
            lo, hi = bounds[n.inputs[0]]
            init = n.op.init_alpha(lo.unsqueeze(1), hi.unsqueeze(1))
            # per neuron of the op's input (activations) or of its output (products): the shape init_alpha gives
            out[n.name] = init.detach().expand(init.shape[0], b, s, *init.shape[3:]).clone().requires_grad_(True)
    return out


def alpha_crown_lower(graph: Graph, x_lo: Tensor, x_hi: Tensor, lam: Tensor, iterations: int = 20,
                      lr: float = 0.5, decay: float = 0.98, optimize_intermediate: bool = False,
                      bounds=None, time_limit: float | None = None, return_bounds: bool = False,
                      linear: dict | None = None, ball=None, done=None):
    """Best lower bound of ``<lam, f(x)>`` (``lam [B, S, *out_shape]``) over the box: float64 ``[B, S]``,
    rigorous in real arithmetic (``verify.bounds.crown``).

    ``time_limit`` (seconds) stops the optimisation early; the best bound so far is still sound.
    ``return_bounds``: also return the intermediate bounds used last (with ``optimize_intermediate``
    the tightest found, each the intersection of all passes), as ``(lower, bounds)``. ``linear`` (a dict) receives
    the linear bound behind each row's best value: ``"A"`` (``Lambda_x [B, S, *input_shape]``) and ``"bias"``
    (float64 ``[B, S]``, rounding paid), with ``lower >= <A, x> + bias`` on the box. ``done(best, bounds)`` true
    (e.g. the property is proved) ends the optimisation early."""
    t_end = None if time_limit is None else time.perf_counter() + time_limit
    # past the time limit, intermediate passes keep interval bounds for the nodes left (sound): on large networks
    # one pass can take minutes
    stop = None if t_end is None else (lambda: time.perf_counter() > t_end)
    with torch.no_grad():
        if bounds is None:
            bounds = intermediate_bounds(graph, x_lo, x_hi, "crown", stop=stop, ball=ball)
        cache = RoundingCache()  # rounding allowances, valid while the intermediate bounds stay the same
        best = _pass(graph, lam, bounds, None, cache, x_lo, x_hi, linear, None, ball)

    def out(cur):
        return (best, {k: (v[0].detach(), v[1].detach()) for k, v in cur.items()}) if return_bounds else best

    if iterations <= 0:
        return out(bounds)
    b, s = lam.shape[:2]
    alphas = final_alphas(graph, bounds, b, s)
    store = AlphaStore(graph) if optimize_intermediate else None
    params = list(alphas.values())
    cur_bounds = bounds
    if store is not None:
        cur_bounds = intermediate_bounds(graph, x_lo, x_hi, "crown", alpha_store=store, reference=bounds, stop=stop,
                                         ball=ball)
        params += list(store.params.values())
    if not params:
        return out(cur_bounds)
    opt = _Adam(params, lr, decay)
    lam = lam.detach()
    t0 = next_log = time.perf_counter()
    for it in range(iterations + 1):
        with torch.enable_grad():
            if store is not None and it > 0:
                cur_bounds = intermediate_bounds(graph, x_lo, x_hi, "crown", alpha_store=store, reference=bounds,
                                                 stop=stop, ball=ball)
            if store is not None:
                cache = RoundingCache()
            lb = _pass(graph, lam, cur_bounds, alphas, cache, x_lo, x_hi, linear, best, ball)
        best = torch.fmax(best, lb.detach())  # a NaN pass (a diverged step) never replaces a sound bound
        if it == iterations or (t_end is not None and time.perf_counter() > t_end):
            break
        if done is not None and done(best, cur_bounds):
            break
        if log.isEnabledFor(logging.DEBUG) and time.perf_counter() >= next_log:
            next_log = time.perf_counter() + PROGRESS_SECONDS
            log.debug("alpha-CROWN iteration %d of %d: worst lower bound %.6g, %.1f s", it, iterations,
                      float(best.min()), time.perf_counter() - t0)
        # autograd.grad, not backward(): model parameters must not accumulate .grad here.
        with torch.enable_grad():
            grads = torch.autograd.grad(-lb.sum(), params, allow_unused=True)
        opt.step(grads)
        with torch.no_grad():
            for name, p in alphas.items():
                n = graph.node(name)
                lo, hi = cur_bounds[n.inputs[0]]
                p.copy_(n.op.project_alpha(p, lo.unsqueeze(1).detach(), hi.unsqueeze(1).detach()))
            if store is not None:
                store.project({k: (v[0].detach(), v[1].detach()) for k, v in cur_bounds.items()})
                # Later passes start from the tightest sound bounds found so far.
                bounds = {k: (v[0].detach(), v[1].detach()) for k, v in cur_bounds.items()}
    return out(cur_bounds)


def _pass(graph: Graph, lam: Tensor, bounds, alphas, cache: RoundingCache, x_lo: Tensor, x_hi: Tensor,
          linear: dict | None, best: Tensor | None, ball=None) -> Tensor:
    """One CROWN pass; with ``linear``, also keeps the linear bound of every row this pass improves."""
    if linear is None:
        return lower_bound(graph, graph.output, lam, bounds, alphas, cache=cache, ball=ball)
    lam_x, kappa = backward_pass(graph, graph.output, lam, bounds, alphas, cache=cache)
    lb = concretize_lower(lam_x, kappa, x_lo, x_hi, ball)
    a = lam_x.detach() if lam_x is not None else x_lo.new_zeros(*lam.shape[:2], *x_lo.shape[1:])
    if best is None:
        linear["A"], linear["bias"] = a.clone(), kappa.detach().clone()
    else:
        better = lb.detach() > best
        view = better.reshape(*better.shape, *([1] * (a.dim() - 2)))
        linear["A"] = torch.where(view, a, linear["A"])
        linear["bias"] = torch.where(better, kappa.detach(), linear["bias"])
    return lb


class _Adam:
    """Adam (Kingma & Ba, 2015) with exponential learning-rate decay, minimising. Hand-rolled because
    ``torch.optim`` pulls in torch._dynamo on first use, which costs seconds per CLI call."""

    def __init__(self, params: list[Tensor], lr: float, decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.decay, self.betas, self.eps = params, lr, decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1 ** self.t)
            v_hat = v / (1 - b2 ** self.t)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
        self.lr *= self.decay
