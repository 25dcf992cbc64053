"""CROWN: backward linear bound propagation (Zhang et al., NeurIPS 2018; Xu et al., NeurIPS 2020).

To lower-bound ``C f(x)`` keep ``Lambda`` per node (``[B, S, *shape]``), start from ``Lambda_out = C`` and
push it to the inputs in reverse topological order; each op adds its constant to ``kappa``. The
result ``Lambda_x x + kappa`` is concretised over the box: ``Lambda_x m - |Lambda_x| r + kappa``.
Intermediate pre-activation bounds come from the same pass started at each bounded node (rows only
for neurons IBP does not show stable), intersected with interval bounds.

Rounding (``verify.rounding``): ``Lambda`` is propagated in the graph's precision and is exact for nothing;
what makes the bound rigorous is the constant. Each node ``N`` reached with ``Lambda_N`` costs
``<|Lambda_N|, e_N>`` (its rounding allowance). Rather than forming ``|Lambda_N|`` at every node, the allowances
are carried forward through the ops' absolute maps (``Op.abs_forward``: ``|Lambda_in| <= |op|^T |Lambda|``) into
an accumulated radius ``E_start``, and the pass pays ``<|lam|, E_start>`` once. ``kappa`` is accumulated in
float64 with the error of that sum; concretisation is done in float64 and rounded down. So the returned bound
holds for the exact real-arithmetic network and for any floating-point evaluation of it in the graph's precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from verify.bounds.ibp import allowance_args, sound_interval
from verify.bounds.patches import concretize_patches, patch_chain, patch_pass, start_patches
from verify.graph import Graph
from verify.ops.activation import Relu
from verify.ops.affine import Scale
from verify.ops.base import Bounds
from verify.ops.linear import Dense
from verify.ops.shape import Pad, Reshape, Slice, Transpose
from verify.rounding import F64, accounted, cast_down, cast_up, dot_error, down, gamma, magnitude, unit_roundoff

MAX_ROWS = 2048  # spec rows per backward pass when bounding an intermediate node (memory cap)
STOPPABLE_ROWS = 256  # the same with a stop() condition: checked often enough on networks with slow passes


class RoundingCache:
    """Rounding allowances of nodes (and bounds derived for nodes the bounds dict lacks) for passes over the
    same bounds; valid while the bounds of the nodes' inputs do not change."""

    def __init__(self) -> None:
        self.radii: dict[str, Tensor | None] = {}
        self.accumulated: dict[str, Tensor | None] = {}
        self.derived: dict[str, Bounds] = {}
        self.fan_out: set[str] | None = None


def node_bounds(graph: Graph, bounds: Mapping[str, Bounds], name: str, cache: dict[str, Bounds]) -> Bounds:
    """Bounds of ``name`` from ``bounds``, or by interval rules from its inputs where ``bounds`` lacks it
    (branch and bound keeps only the inputs of relaxed ops)."""
    if name in bounds:
        return bounds[name]
    if name not in cache:
        n = graph.node(name)
        cache[name] = sound_interval(n.op, [node_bounds(graph, bounds, i, cache) for i in n.inputs])
    return cache[name]


def error_radius(graph: Graph, name: str, bounds: Mapping[str, Bounds], cache: RoundingCache) -> Tensor | None:
    """Rounding allowance of node ``name`` (``Op.error_radius`` on its inputs' magnitudes)."""
    if name not in cache.radii:
        n = graph.node(name)
        with torch.no_grad():
            ins = [node_bounds(graph, bounds, i, cache.derived) for i in n.inputs]
            cache.radii[name] = n.op.error_radius(allowance_args(n.op, ins))
    return cache.radii[name]


def _magnitude_of(graph: Graph, bounds: Mapping[str, Bounds], name: str, cache: RoundingCache) -> Tensor:
    with torch.no_grad():
        return magnitude(*node_bounds(graph, bounds, name, cache.derived))


def accumulated_error(graph: Graph, name: str, bounds: Mapping[str, Bounds], cache: RoundingCache) -> Tensor | None:
    """``E_N = e_N + |op_N|(E_inputs)`` (module docstring): ``<|Lambda_N|, E_N>`` bounds the rounding allowances
    of ``N`` and every node upstream of it in a backward pass that reaches ``N`` with ``Lambda_N``. A node with
    several consumers also pays for the rounded sum of their contributions (``2 u a``)."""
    if not accounted():  # training losses (verify.rounding.training_losses)
        return None
    if cache.fan_out is None:
        cache.fan_out = {k for k, v in graph.consumers().items() if len(v) > 1}
    x_lo = bounds[graph.input_name][0]
    with torch.no_grad():
        for n in graph.ancestors(name):
            if n.name in cache.accumulated:
                continue
            e = error_radius(graph, n.name, bounds, cache)
            ups = [cache.accumulated.get(i) for i in n.inputs]
            if any(t is not None for t in ups):
                ts = [t if t is not None else x_lo.new_zeros(x_lo.shape[0], *graph.shape_of(i))
                      for t, i in zip(ups, n.inputs, strict=True)]
                if getattr(n.op, "allowance_from_bounds", False):  # slopes bounded through the inputs' bounds
                    pushed = n.op.abs_forward(ts, [node_bounds(graph, bounds, i, cache.derived) for i in n.inputs])
                else:
                    pushed = n.op.abs_forward(ts)
                e = pushed if e is None else e + pushed
            if n.name in cache.fan_out:
                fan = 2 * unit_roundoff(x_lo.dtype) * _magnitude_of(graph, bounds, n.name, cache)
                e = fan if e is None else e + fan
            if e is not None:  # one radius per box, also for allowances shared by all boxes
                e = e.expand(x_lo.shape[0], *n.shape)
            cache.accumulated[n.name] = e
    return cache.accumulated.get(name)


def backward_pass(graph: Graph, start: str, lam: Tensor, bounds: Mapping[str, Bounds],
                  alphas: Mapping[str, Tensor] | None = None, betas: Mapping[str, Tensor] | None = None,
                  record: dict[str, Tensor] | None = None, cache: RoundingCache | None = None
                  ) -> tuple[Tensor | None, Tensor]:
    """Back-substitute ``<lam, v_start>`` to the input: returns ``(Lambda_x, kappa)`` with ``kappa`` a float64
    constant that already pays for every rounding (module docstring): ``<lam, v_start> >= <Lambda_x, x> + kappa``
    on the box, in real arithmetic, for the ``Lambda_x`` as computed.

    ``betas[name]`` (``[B, S, *shape]``, already multiplied by the split signs ``s``) adds the
    beta-CROWN term ``sum_i beta_i s_i z_i`` at node ``name`` (Wang et al., NeurIPS 2021): valid for
    ``beta >= 0`` on sub-domains where ``s_i z_i <= 0``. ``record`` receives the Lambda of its keys.
    ``cache``: rounding allowances to share between passes over the same bounds.
    """
    cache = RoundingCache() if cache is None else cache
    kappa = torch.zeros(lam.shape[:2], dtype=F64, device=lam.device)
    acc = accumulated_error(graph, start, bounds, cache)
    err = torch.zeros_like(kappa) if acc is None else dot_error(lam, acc)
    return _propagate(graph, start, {start: lam}, kappa, torch.zeros_like(kappa), 0, err, bounds, alphas, betas,
                      record, cache)


def _propagate(graph: Graph, start: str, lams: dict[str, Tensor], kappa: Tensor, kappa_abs: Tensor, n_terms: int,
               err: Tensor, bounds: Mapping[str, Bounds], alphas: Mapping[str, Tensor] | None,
               betas: Mapping[str, Tensor] | None, record: dict[str, Tensor] | None, cache: RoundingCache
               ) -> tuple[Tensor | None, Tensor]:
    """The loop of :func:`backward_pass` from the ``Lambda`` in ``lams`` (and the constant accumulated so far);
    ``err`` is the pass's rounding allowance ``<|lam|, E_start>``."""
    alphas = alphas or {}
    u = unit_roundoff(next(iter(lams.values())).dtype)
    for n in reversed(graph.ancestors(start)):
        lam_n = lams.pop(n.name, None)
        if lam_n is None:
            continue
        if betas is not None and n.name in betas:
            # |lam + beta| <= |lam| + |beta|: the beta part pays for this node and everything upstream of it,
            # and the rounded sum for itself
            beta = betas[n.name]
            lam_n = lam_n + beta
            acc_n = accumulated_error(graph, n.name, bounds, cache)
            if acc_n is not None:
                err = err + dot_error(beta, acc_n)
            err = err + dot_error(lam_n, 2 * u * _magnitude_of(graph, bounds, n.name, cache))
        if record is not None and n.name in record:
            record[n.name] = lam_n
        in_b = [bounds[i] for i in n.inputs] if n.op.needs_input_bounds else [None] * len(n.inputs)
        lam_ins, k = n.op.backward(lam_n, in_b, alphas.get(n.name))
        if k is not None:
            kappa = kappa + k
            kappa_abs = kappa_abs + k.detach().abs()
            n_terms += 1
        for i, li in zip(n.inputs, lam_ins, strict=True):
            if li is not None:
                lams[i] = lams[i] + li if i in lams else li
    return lams.get(graph.input_name), kappa - _slack(err, kappa_abs, n_terms)


def _slack(err: Tensor, kappa_abs: Tensor, n_terms: int) -> Tensor:
    """The float64 sum of the kappa terms and of the allowances themselves round too."""
    return err * (1 + 1e-6) + gamma(n_terms + 1, F64) * (kappa_abs + err)


def concretize_lower(lam_x: Tensor | None, kappa: Tensor, x_lo: Tensor, x_hi: Tensor, ball: Ball | None = None
                     ) -> Tensor:
    """``min over the box of <Lambda_x, x> + kappa`` = ``<Lambda_x+, l> + <Lambda_x-, u> + kappa``, in float64,
    minus the error of that sum, rounded down: a float64 ``[B, S]`` lower bound in real arithmetic. With an l_p
    ``ball`` inside the box, also ``<Lambda_x, c> - eps ||Lambda_x||_q + kappa`` (dual norm, 1/p + 1/q = 1); the
    inputs lie in both, so the larger of the two is a lower bound."""
    if lam_x is None:
        return down(kappa.to(F64))
    b, s = lam_x.shape[:2]
    lam = lam_x.reshape(b, s, -1).to(F64)
    lo = x_lo.reshape(b, -1, 1).to(F64)
    hi = x_hi.reshape(b, -1, 1).to(F64)
    val = (lam.clamp(min=0) @ lo + lam.clamp(max=0) @ hi).squeeze(-1) + kappa
    mass = (lam.detach().abs() @ torch.maximum(lo.abs(), hi.abs())).squeeze(-1)
    slack = gamma(lam.shape[-1] + 2, F64) * (mass + kappa.detach().abs())
    box = down(val - slack)
    return box if ball is None else torch.maximum(box, ball.concretize(lam, kappa))


class Ball:
    """An l_p ball ``{x : ||x - c||_p <= eps}`` (p = 1 or 2), centre ``c [B, n]`` in float64: the perturbation set
    (with the box that holds it) of ``verify.bound(..., ball=...)``."""

    def __init__(self, center: Tensor, eps: float, p: float):
        if p not in (1.0, 2.0):
            raise ValueError(f"an l_p ball needs p = 1 or 2 (use a box for l_inf), got {p!r}")
        self.center, self.eps, self.p = center.reshape(center.shape[0], -1).to(F64), float(eps), float(p)

    def concretize(self, lam: Tensor, kappa: Tensor) -> Tensor:
        """``min over the ball of <lam, x> + kappa`` for float64 ``lam [B, S, n]``, rounded down, rounding paid:
        the float64 dual norm of ``n`` terms is within a relative ``gamma_n`` of the exact one."""
        n = lam.shape[-1]
        c = self.center.unsqueeze(-1)
        # vector_norm's gradient at a zero row is 0 (sqrt's is inf: NaN slopes in alpha-CROWN)
        dual = torch.linalg.vector_norm(lam, 2.0 if self.p == 2.0 else float("inf"), dim=-1)
        val = (lam @ c).squeeze(-1) + kappa - self.eps * dual
        mass = (lam.detach().abs() @ c.abs()).squeeze(-1) + kappa.detach().abs() + self.eps * dual.detach()
        return down(val - gamma(n + 4, F64) * mass)


def lower_bound(graph: Graph, start: str, lam: Tensor, bounds: Mapping[str, Bounds],
                alphas: Mapping[str, Tensor] | None = None, betas: Mapping[str, Tensor] | None = None,
                record: dict[str, Tensor] | None = None, cache: RoundingCache | None = None,
                ball: Ball | None = None) -> Tensor:
    """Rigorous float64 lower bound ``[B, S]`` of ``<lam, v_start>`` over the box (and ``ball``)."""
    lam_x, kappa = backward_pass(graph, start, lam, bounds, alphas, betas, record, cache)
    x_lo, x_hi = bounds[graph.input_name]
    return concretize_lower(lam_x, kappa, x_lo, x_hi, ball)


def _relu_only_consumers(graph: Graph) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for n in graph.nodes:
        if n.op.needs_input_bounds:
            for i in n.inputs:
                out[i] = out.get(i, True) and isinstance(n.op, Relu)
    return out


def behind_relaxation(graph: Graph) -> set[str]:
    """Nodes with a relaxed (nonlinear) op among their ancestors."""
    out: set[str] = set()
    for n in graph.nodes:
        if n.op.needs_input_bounds or any(i in out for i in n.inputs):
            out.add(n.name)
    return out


def relu_chain(chain) -> bool:
    """Whether every activation of a patch chain is a ReLU (the ones whose slopes a patch pass can optimise)."""
    return all(isinstance(n.op, Relu) or not n.op.needs_input_bounds for n in chain)


_BOX_PRESERVING = (Reshape, Transpose, Pad, Slice, Scale)
"""Ops that map a box onto a box (each output coordinate one input coordinate, scaled, or a constant)."""


def exact_interval_nodes(graph: Graph) -> set[str]:
    """Nodes whose interval rule on the input box is their exact range: the input box moved by box-preserving ops
    (:data:`_BOX_PRESERVING`), one linear map of one variable applied to such a box (its centre-radius rule is
    exact there), and such nodes moved on by box-preserving ops. A composition of two mixing maps is not: IBP gives
    ``|W2| |W1| r`` where the range is ``|W2 W1| r`` (a ViT's patch embedding then its query map: 6x wider)."""
    box, exact = {graph.input_name}, {graph.input_name}
    for n in graph.nodes:
        if len(n.inputs) != 1 or not getattr(n.op, "linear", False):
            continue
        i = n.inputs[0]
        if isinstance(n.op, _BOX_PRESERVING) and (not isinstance(n.op, Scale) or n.shape == graph.shape_of(i)):
            # (a Scale that broadcasts its input to a larger shape copies coordinates: not a box any more)
            if i in box:
                box.add(n.name)
            if i in exact:
                exact.add(n.name)
        elif i in box:
            exact.add(n.name)
    return exact


def refine_rows(lo: Tensor, hi: Tensor, relu_only: bool) -> Tensor:
    """Flat indices of neurons worth a CROWN pass (unstable for ReLU inputs, non-degenerate otherwise)."""
    lo_f, hi_f = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
    mask = (lo_f < 0) & (hi_f > 0) if relu_only else hi_f > lo_f
    return mask.any(0).nonzero().flatten()


def bound_rows(graph: Graph, name: str, rows: Tensor, bounds: Mapping[str, Bounds],
               alphas: StartAlphas | None = None, functions: dict | None = None,
               cache: RoundingCache | None = None, ball: Ball | None = None) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of the given flat neurons of ``name``: two ``[B, R]`` tensors in the
    model's precision, rounded outward. Rows of a feature map behind convolutions go through the patch form
    (``verify.bounds.patches``; same bounds, less work), also with optimised slopes when the activations on the
    way are ReLUs (the slopes then live on each row's windows).

    With ``functions``, also stores the linear bounds ``(Lambda_x [B, 2R, n], kappa [B, 2R])`` (lower
    rows, then negated upper rows; ``kappa`` float64 with its rounding paid) under ``name``: they stay valid
    on any sub-box."""
    x_lo, x_hi = bounds[graph.input_name]
    b, shape = x_lo.shape[0], graph.shape_of(name)
    r = rows.numel()
    cache = RoundingCache() if cache is None else cache
    plan = patch_chain(graph, name) if ball is None and USE_PATCHES else None
    if plan is not None and alphas is not None and not relu_chain(plan[0]):
        plan = None  # window slopes exist for ReLUs only
    if plan is not None:
        res, lam_x, kappa = _patch_rows(graph, name, rows, bounds, plan, cache, functions is not None, alphas)
    elif USE_DENSE_START and _dense_rows_apply(graph, name, alphas):
        lam_x, kappa = _dense_start(graph, name, rows, bounds, alphas, cache)
        res = concretize_lower(lam_x, kappa, x_lo, x_hi, ball)
    else:
        numel = int(torch.Size(shape).numel())
        eye = torch.zeros(r, numel, dtype=x_lo.dtype, device=x_lo.device)
        eye[torch.arange(r, device=rows.device), rows] = 1.0
        lam = torch.cat([eye, -eye]).expand(b, 2 * r, numel).reshape(b, 2 * r, *shape)
        lam_x, kappa = backward_pass(graph, name, lam, bounds, alphas, cache=cache)
        res = concretize_lower(lam_x, kappa, x_lo, x_hi, ball)
    if functions is not None:
        functions.setdefault(name, []).append((rows, lam_x.reshape(b, 2 * r, -1), kappa))
    return cast_down(res[:, :r], x_lo.dtype), cast_up(-res[:, r:], x_lo.dtype)


def _row_allowance(graph: Graph, name: str, rows: Tensor, bounds: Mapping[str, Bounds], cache: RoundingCache
                   ) -> Tensor:
    """The pass's rounding allowance ``<|lam|, E_start>`` for the rows ``[e_r; -e_r]`` at ``name``: ``E`` at the
    rows, exactly (float64 ``[B, 2R]``)."""
    x_lo = bounds[graph.input_name][0]
    acc = accumulated_error(graph, name, bounds, cache)
    if acc is None:
        return torch.zeros(x_lo.shape[0], 2 * rows.numel(), dtype=F64, device=x_lo.device)
    return acc.reshape(x_lo.shape[0], -1)[:, rows].to(F64).repeat(1, 2)


def _dense_rows_apply(graph: Graph, name: str, alphas: Mapping[str, Tensor] | None) -> bool:
    """Whether :func:`_dense_start` serves a pass started at ``name``: a dense layer over a per-sample vector."""
    n = graph.node(name)
    if not isinstance(n.op, Dense) or (alphas is not None and name in alphas):
        return False
    out_f, in_f = n.op.weight.shape
    return int(torch.Size(n.shape).numel()) == out_f and int(torch.Size(graph.shape_of(n.inputs[0])).numel()) == in_f


def _dense_start(graph: Graph, name: str, rows: Tensor, bounds: Mapping[str, Bounds],
                 alphas: Mapping[str, Tensor] | None, cache: RoundingCache) -> tuple[Tensor | None, Tensor]:
    """:func:`backward_pass` from the rows ``[e_r; -e_r]`` at a dense layer ``W h + b``: its step is exactly
    ``[W_r; -W_r]`` with constants ``[b_r; -b_r]`` and allowance ``E_r`` (the products with one non-zero factor
    of the dense pass, without forming them), and the pass continues from ``h``."""
    n = graph.node(name)
    x_lo = bounds[graph.input_name][0]
    b, r = x_lo.shape[0], rows.numel()
    w = n.op.weight[rows]
    lam = torch.cat([w, -w]).expand(b, 2 * r, -1).reshape(b, 2 * r, *graph.shape_of(n.inputs[0]))
    err = _row_allowance(graph, name, rows, bounds, cache)
    if n.op.bias is None:
        kappa, n_terms = torch.zeros(b, 2 * r, dtype=F64, device=x_lo.device), 0
    else:
        c = n.op.bias[rows].to(F64)
        kappa, n_terms = torch.cat([c, -c]).expand(b, 2 * r), 1
    return _propagate(graph, n.inputs[0], {n.inputs[0]: lam}, kappa, kappa.detach().abs(), n_terms, err, bounds,
                      alphas, None, None, cache)


USE_PATCHES = True
"""Patch-form intermediate passes behind convolutions (``verify.bounds.patches``); False: always dense."""
USE_DENSE_START = True
"""Passes started at a dense layer begin with its rows (:func:`_dense_start`); False: the generic first step."""


def _patch_rows(graph: Graph, name: str, rows: Tensor, bounds: Mapping[str, Bounds], plan, cache: RoundingCache,
                want_lam: bool, alphas: StartAlphas | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`bound_rows`' pass in patch form: ``(lower bounds [B, 2R], Lambda_x or None, kappa)``."""
    chain, end = plan
    x_lo, x_hi = bounds[graph.input_name]
    b = x_lo.shape[0]
    err = _row_allowance(graph, name, rows, bounds, cache)
    out = patch_pass(graph, chain, end, start_patches(graph, name, rows, x_lo.dtype), bounds, b, alphas)
    if out.node is not None:  # the rest of the pass is dense
        lam_x, kappa = _propagate(graph, out.node, {out.node: out.lam}, out.kappa, out.kappa_abs, out.n_terms, err,
                                  bounds, alphas, None, None, cache)
        return concretize_lower(lam_x, kappa, x_lo, x_hi), lam_x, kappa
    kappa = out.kappa - _slack(err, out.kappa_abs, out.n_terms)
    res = concretize_patches(out.lam, kappa, x_lo, x_hi, graph.input_shape)
    return res, out.lam.dense(b, graph.input_shape) if want_lam else None, kappa


def intersect_rows(lo: Tensor, hi: Tensor, rows: Tensor, new_lo: Tensor, new_hi: Tensor,
                   straight_through: bool = False) -> Bounds:
    """Tighten ``[lo, hi]`` at ``rows`` with new bounds (out of place, so autograd sees it). ``straight_through``:
    the gradient of each result is the new bound's, also where the old bound is tighter (see
    :class:`_GradientOf`)."""
    b = lo.shape[0]
    lo_f, hi_f = lo.reshape(b, -1).clone(), hi.reshape(b, -1).clone()
    t_lo, t_hi = torch.maximum(lo_f[:, rows], new_lo), torch.minimum(hi_f[:, rows], new_hi)
    if straight_through:
        t_lo, t_hi = _GradientOf.apply(t_lo, new_lo), _GradientOf.apply(t_hi, new_hi)
    lo_f[:, rows], hi_f[:, rows] = t_lo, t_hi
    return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)


class _GradientOf(torch.autograd.Function):
    """``value`` exactly, with the gradient of ``source``. alpha-CROWN's intermediate passes: an old bound tighter
    than the pass (even by a rounding, as when a patch pass set it and a dense pass recomputes it) would give the
    pass's slopes no gradient at all, and they would never move (measured: the conv layer of the issue-15 CNN kept
    its CROWN bounds through every iteration)."""

    @staticmethod
    def forward(ctx, value: Tensor, source: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad


def apply_splits(lo: Tensor, hi: Tensor, split: Tensor) -> Bounds:
    """ReLU split ``+1``: ``z >= 0`` (``l := max(l, 0)``); ``-1``: ``z <= 0`` (``u := min(u, 0)``).
    An infeasible split leaves ``l > u``, which callers treat as an empty domain."""
    lo = torch.where(split > 0, lo.clamp(min=0), lo)
    hi = torch.where(split < 0, hi.clamp(max=0), hi)
    return lo, hi


def intermediate_bounds(graph: Graph, x_lo: Tensor, x_hi: Tensor, method: str = "crown",
                        alpha_store: AlphaStore | None = None,
                        reference: Mapping[str, Bounds] | None = None,
                        splits: Mapping[str, Tensor] | None = None,
                        functions: dict | None = None,
                        stop: Callable[[], bool] | None = None, ball: Ball | None = None,
                        cache: RoundingCache | None = None) -> dict[str, Bounds]:
    """Bounds of every node: interval rules forward, refined by CROWN at the inputs of relaxed ops.

    ``reference`` (earlier sound bounds) is intersected in; ``alpha_store`` supplies optimisable
    slopes for the intermediate passes (alpha-CROWN with intermediate optimisation); ``splits``
    (``[B, *shape]`` in {-1, 0, 1} per ReLU input node) restricts each box to a ReLU sub-domain.
    ``stop()`` true (a deadline passed): the remaining nodes keep their interval bounds (sound, looser), so
    a large network cannot hold a caller past its time limit inside one pass.
    ``ball``: the inputs also lie in this l_p ball; nodes affine in the input then get CROWN passes too (their box
    intervals are no longer exact), under ``ibp`` as well (the dual-norm rule for a first layer). ``cache``: an
    empty ``RoundingCache`` to fill; it stays valid for later passes over the returned bounds.
    """
    bounds: dict[str, Bounds] = {graph.input_name: (x_lo, x_hi)}
    bounded = set(graph.bounded_nodes())
    affine = bounded - behind_relaxation(graph)  # an affine function of the input
    refine = bounded - exact_interval_nodes(graph) if method == "crown" else set()
    if ball is not None:
        refine |= affine
    relu_only = _relu_only_consumers(graph)
    # each node's bounds are final once set, so allowances stay valid throughout (and for passes over the result)
    cache = RoundingCache() if cache is None else cache
    for n in graph.nodes:
        lo, hi = sound_interval(n.op, [bounds[i] for i in n.inputs])
        if reference is not None and n.name in reference:
            rlo, rhi = reference[n.name]
            lo, hi = torch.maximum(lo, rlo), torch.minimum(hi, rhi)
            if splits is None:
                hi = torch.maximum(hi, lo)
        if n.name in refine:
            rows = alpha_store.rows(n.name) if alpha_store is not None else None
            if rows is None:
                rows = refine_rows(lo, hi, relu_only.get(n.name, False))
                if alpha_store is not None:
                    alpha_store.set_rows(n.name, rows)
            step = MAX_ROWS if stop is None else STOPPABLE_ROWS
            for start in range(0, rows.numel(), step):
                if stop is not None and stop():
                    break
                chunk = rows[start:start + step]
                alphas = alpha_store.for_start(n.name, chunk, start, bounds) if alpha_store else None
                new_lo, new_hi = bound_rows(graph, n.name, chunk, bounds, alphas, functions, cache, ball)
                lo, hi = intersect_rows(lo, hi, chunk, new_lo, new_hi, straight_through=alpha_store is not None)
        if splits is not None and n.name in splits:
            lo, hi = apply_splits(lo, hi, splits[n.name])
        bounds[n.name] = (lo, hi)
    return bounds


class AlphaStore:
    """Optimisable slopes per (bounded start node, activation node), created lazily at first use."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.params: dict[tuple[str, int, str], Tensor] = {}
        self.patch_keys: set[tuple[str, int, str]] = set()  # slopes on row windows (patch passes)
        self._rows: dict[str, Tensor] = {}

    def rows(self, name: str) -> Tensor | None:
        return self._rows.get(name)

    def set_rows(self, name: str, rows: Tensor) -> None:
        self._rows[name] = rows

    def for_start(self, start: str, rows: Tensor, chunk_id: int, bounds: Mapping[str, Bounds]) -> StartAlphas:
        return StartAlphas(self, start, chunk_id, 2 * rows.numel(), bounds)

    def project(self, bounds: Mapping[str, Bounds]) -> None:
        with torch.no_grad():
            for key, p in self.params.items():
                n = self.graph.node(key[2])
                if key in self.patch_keys:  # ReLU slopes: [0, 1] whatever the bounds
                    p.copy_(n.op.project_alpha(p, None, None))
                    continue
                lo, hi = bounds[n.inputs[0]]
                p.copy_(n.op.project_alpha(p, lo.unsqueeze(1), hi.unsqueeze(1)))


class StartAlphas(Mapping):
    """The optimisable slopes of one intermediate pass (start node, chunk of ``s`` rows), each created at its first
    use: ``[n_alpha, B, s, *shape]`` per activation node reached by dense steps (the mapping), or one per row window
    ``[B, s, C, ph, pw]`` for the ReLUs a patch pass crosses (:meth:`patch`)."""

    def __init__(self, store: AlphaStore, start: str, chunk_id: int, s: int, bounds: Mapping[str, Bounds]):
        self.store, self.start, self.chunk_id, self.s, self.bounds = store, start, chunk_id, s, bounds
        self.names = [n.name for n in store.graph.ancestors(start) if hasattr(n.op, "init_alpha")]

    def __contains__(self, name) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.names:
            raise KeyError(name)
        key = (self.start, self.chunk_id, name)
        params = self.store.params
        if key not in params:
            n = self.store.graph.node(name)
            lo, hi = self.bounds[n.inputs[0]]
            init = n.op.init_alpha(lo.unsqueeze(1), hi.unsqueeze(1))
            params[key] = init.detach().expand(init.shape[0], lo.shape[0], self.s, *init.shape[3:]).clone()
            params[key].requires_grad_(True)
        return params[key]

    def patch(self, name: str, init: Tensor) -> Tensor:
        """The window slopes of the ReLU ``name``, first set to ``init`` (its default slopes on the windows)."""
        key = (self.start, self.chunk_id, name)
        params = self.store.params
        if key not in params:
            params[key] = init.detach().clone().requires_grad_(True)
            self.store.patch_keys.add(key)
        return params[key]
