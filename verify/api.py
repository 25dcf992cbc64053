"""Python API: ``bound(model, x_lo, x_hi, C=None, method=...) -> (lower, upper)`` on a batch of boxes.

The bounds are rigorous in real arithmetic (``verify.rounding``): they contain the exact value of the network
as stored, and its floating-point evaluation in its own precision, for every input in the box."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from verify.bounds.alpha import alpha_crown_lower
from verify.bounds.crown import (
    Ball,
    RoundingCache,
    backward_pass,
    behind_relaxation,
    concretize_lower,
    intermediate_bounds,
    lower_bound,
)
from verify.device import exact_float32, resolve_device
from verify.errors import InputError, ShapeError
from verify.graph import Graph
from verify.ops.linear import Dense
from verify.rounding import F64, accounted, bound_dtype, cast_box, cast_down, cast_up, down, gamma, magnitude, up

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
"""``crown-ibp``: interval intermediate bounds and one CROWN pass from the spec (Zhang et al., ICLR 2020)."""


def as_graph(model: Any, input_shape: tuple[int, ...] | None = None) -> Graph:
    """A Graph from a Graph, an ONNX path, or a torch module (``input_shape`` per sample, no batch)."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, str | os.PathLike):
        from verify.frontends.onnx_frontend import load_onnx
        return load_onnx(model)
    if isinstance(model, torch.nn.Module):
        from verify.frontends.torch_frontend import from_torch
        if input_shape is None:
            raise ShapeError("a torch module needs the input shape (pass boxes shaped [B, *input_shape])")
        return from_torch(model, input_shape)
    raise TypeError(f"cannot build a graph from {type(model).__name__}")


def _as_tensor(x) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))


def _box(graph: Graph, x_lo, x_hi) -> tuple[Tensor, Tensor]:
    """The box ``[B, *input_shape]`` in the graph's precision, rounded outward where the cast is inexact."""
    lo, hi = _as_tensor(x_lo), _as_tensor(x_hi)
    if lo.shape != hi.shape:
        raise ShapeError(f"box bounds have different shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputError("box bounds must be finite (found NaN or inf)")
    lo, hi = graph.prepare_input(lo), graph.prepare_input(hi)
    if bool((lo > hi).any()):
        i = int((lo > hi).reshape(lo.shape[0], -1).any(0).nonzero()[0])
        raise InputError(f"empty input box: lower > upper at input index {i}")
    return cast_box(lo, hi, graph.dtype)


def _ball(graph: Graph, ball: tuple | None, b: int, device: torch.device) -> Ball | None:
    """``(center, eps, p)`` checked: p in 1, 2, inf (inf: the box alone), eps finite >= 0, one centre per box."""
    if ball is None:
        return None
    center, eps, p = ball
    p = float(p)
    if p not in (1.0, 2.0, float("inf")):
        raise InputError(f"norm must be 1, 2 or inf, got {p!r}")
    if not (np.isfinite(float(eps)) and float(eps) >= 0):
        raise InputError(f"eps must be a finite non-negative number, got {eps!r}")
    if p == float("inf"):
        return None
    c = _as_tensor(center).to(F64).to(device)
    if not bool(torch.isfinite(c).all()):
        raise InputError("the ball's centre must be finite")
    c = graph.prepare_input(c).reshape(-1, graph.input_numel)
    if c.shape[0] == 1 and b > 1:
        c = c.expand(b, -1)
    if c.shape[0] != b:
        raise ShapeError(f"the ball has {c.shape[0]} centres for {b} boxes")
    return Ball(c, float(eps), p)


def _spec(graph: Graph, C, b: int, dtype, device=None) -> Tensor:
    k = graph.output_numel
    if C is None:
        C = torch.eye(k, dtype=dtype, device=device)
    C = C.to(dtype=dtype, device=device) if isinstance(C, Tensor) else torch.as_tensor(C, dtype=dtype, device=device)
    if C.dim() == 1:
        C = C.unsqueeze(0)
    if C.shape[-1] != k:
        raise ShapeError(f"spec matrix C has {C.shape[-1]} columns but the model has {k} outputs")
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(b, *C.shape)
    if C.dim() != 3 or C.shape[0] != b:
        raise ShapeError(f"spec matrix C must be [S, {k}] or [B, S, {k}], got {tuple(C.shape)}")
    return C


def method_name(method: str) -> str:
    """A bounding method by any capitalisation (``"CROWN"``, ``"alpha-CROWN"``, ``"IBP"``)."""
    name = str(method).lower()
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return name


def _prepared(model: Any, x_lo, x_hi, C, precision: str, device: str | torch.device | None = None):
    """The graph in the bounding precision on the boxes' device (or ``device``), the model's dtype, the boxes and the
    spec ``C`` as ``[B, S, K]``."""
    model_dtype = as_graph(model).dtype
    graph = as_graph(model).with_dtype(bound_dtype(model_dtype, precision))
    lo, hi = _box(graph, x_lo, x_hi)
    if device is not None:
        target = resolve_device(device)
        lo, hi = lo.to(target), hi.to(target)
    graph = graph.to(lo.device)
    return graph, model_dtype, lo, hi, _spec(graph, C, lo.shape[0], lo.dtype, lo.device)


def bound(model: Any, x_lo, x_hi, C=None, method: str = "crown", *, iterations: int = 20, lr: float = 0.5,
          optimize_intermediate: bool = False, input_shape: tuple[int, ...] | None = None,
          precision: str = "float64", bound_upper: bool = True, linear: dict | None = None,
          ball: tuple | None = None, device: str | torch.device | None = None) -> tuple[Tensor, Tensor | None]:
    """Sound bounds ``lower <= C f(x) <= upper`` for all ``x`` in ``[x_lo, x_hi]``.

    ``x_lo``/``x_hi``: ``[B, *input_shape]`` (or flattened ``[B, n]``, or one sample). ``C``: ``[S, K]`` or
    ``[B, S, K]`` over the flattened outputs (default: identity). Returns two ``[B, S]`` tensors in the model's
    precision, rounded outward. Differentiable w.r.t. a torch model's parameters for ``ibp``, ``crown-ibp`` and
    ``crown``.
    A torch module is traced for ``input_shape`` (per sample); without it, for ``x_lo.shape[1:]`` (a batch) or,
    if the module does not take that, for ``x_lo.shape`` (one sample). ``precision``: ``float64`` (default) or
    ``model`` (see ``verify.rounding.PRECISIONS``); the bounds are rigorous either way. ``bound_upper=False``
    (auto_LiRPA's name) returns ``(lower, None)``: the CROWN passes carry half the rows (certified training).
    Method names are case-insensitive.

    ``linear`` (a dict; CROWN methods only) receives the linear bounds behind the result, auto_LiRPA's ``A``:
    ``lA``, ``uA`` (``[B, S, *input_shape]``) and ``lbias``, ``ubias`` (float64 ``[B, S]``, rounding paid) with
    ``<lA, x> + lbias <= C f(x) <= <uA, x> + ubias`` on the box (the returned bounds can be tighter: they also use
    interval bounds).

    ``ball = (center, eps, p)`` with p = 1 or 2: the inputs are ``{x : ||x - center||_p <= eps}`` intersected with
    the box (pass the box ``center -+ eps``, clipped to the data range, as ``x_lo``/``x_hi``); CROWN concretises over
    both (dual norm), IBP uses the ball for layers affine in the input.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; ``verify.device``): where to compute; the model and the
    boxes are moved there and the bounds come back on it. Default: the boxes' device.
    """
    method = method_name(method)
    if linear is not None and method == "ibp":
        raise ValueError("linear bounds (return_A) need a CROWN method, not ibp")
    for name, v in (("iterations", iterations), ("lr", lr)):
        if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite non-negative number, got {v!r}")
    if isinstance(model, torch.nn.Module):
        model = _trace(model, _as_tensor(x_lo).shape, input_shape)
    graph, model_dtype, lo, hi, C = _prepared(model, x_lo, x_hi, C, precision, device)
    b = lo.shape[0]
    lp = _ball(graph, ball, b, lo.device)
    chunk = boxes_per_pass(graph, method, C.shape[1])
    with exact_float32(lo.device):
        return _bound_chunks(graph, lo, hi, C, lp, chunk, method, model_dtype, iterations, lr, optimize_intermediate,
                             bound_upper, linear)


def _bound_chunks(graph: Graph, lo: Tensor, hi: Tensor, C: Tensor, lp: Ball | None, chunk: int, method: str,
                  model_dtype: torch.dtype, iterations: int, lr: float, optimize_intermediate: bool,
                  bound_upper: bool, linear: dict | None) -> tuple[Tensor, Tensor | None]:
    """:func:`bound` over the boxes, ``chunk`` at a time."""
    b = lo.shape[0]
    pieces: list[dict] = []
    parts = []
    for i in range(0, b, chunk):
        piece = {} if linear is not None else None
        part_ball = None if lp is None else Ball(lp.center[i:i + chunk], lp.eps, lp.p)
        parts.append(_bound_boxes(graph, lo[i:i + chunk], hi[i:i + chunk], C[i:i + chunk], method, model_dtype,
                                  iterations, lr, optimize_intermediate, bound_upper, piece, part_ball))
        pieces.append(piece)
    if linear is not None:
        linear.update({k: torch.cat([p[k] for p in pieces]) for k in pieces[0]})
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if bound_upper else None


MEMORY_BUDGET_GIB = 4.0
"""Memory one bound pass may plan for (``CLARKE_BOUND_MEMORY_GB`` overrides): larger batches are split."""


def boxes_per_pass(graph: Graph, method: str, spec_rows: int) -> int:
    """How many boxes one pass may bound at once. CROWN's linear coefficients of an n-neuron node over an earlier
    m-value node take ``n m`` floats per box (``2 S m`` for the spec's S rows under ``crown-ibp``); a pass keeps
    a few such tensors alive (coefficients, their positive and negative parts, a product), so a box is planned
    at ``6 * 8 n m`` bytes with n, m the largest node sizes. Independent boxes split without changing a bound."""
    if method == "ibp":
        return 1 << 30
    try:
        budget = float(os.environ.get("CLARKE_BOUND_MEMORY_GB", MEMORY_BUDGET_GIB))
    except ValueError:
        budget = MEMORY_BUDGET_GIB
    sizes = [graph.input_numel] + [int(torch.Size(n.shape).numel()) for n in graph.nodes]
    widest = max(sizes)
    rows = widest if method in ("crown", "alpha-crown") else 2 * spec_rows
    per_box = 6 * 8 * rows * widest
    return max(1, int(budget * 2**30 // per_box))


def _bound_boxes(graph: Graph, lo: Tensor, hi: Tensor, C: Tensor, method: str, model_dtype: torch.dtype,
                 iterations: int, lr: float, optimize_intermediate: bool, bound_upper: bool = True,
                 linear: dict | None = None, ball: Ball | None = None) -> tuple[Tensor, Tensor | None]:
    """:func:`bound` on prepared boxes ``[B, *input_shape]`` and spec ``[B, S, K]`` (one pass)."""
    b = lo.shape[0]
    if method == "ibp":
        ibp = intermediate_bounds(graph, lo, hi, method="ibp", ball=ball)
        lower, upper = spec_interval(graph, ibp, C, model_dtype)
        if ball is not None and graph.output not in behind_relaxation(graph):  # affine: the dual-norm rule
            lam = torch.cat([C, -C], dim=1).reshape(b, 2 * C.shape[1], *graph.output_shape)
            res = lower_bound(graph, graph.output, lam, ibp, ball=ball)
            lower = torch.maximum(lower, cast_down(res[:, :C.shape[1]], model_dtype))
            upper = torch.minimum(upper, cast_up(-res[:, C.shape[1]:], model_dtype))
        return lower, upper if bound_upper else None
    s = C.shape[1]
    rows = torch.cat([C, -C], dim=1) if bound_upper else C
    lam = rows.reshape(b, rows.shape[1], *graph.output_shape)
    cache = RoundingCache()
    bounds = intermediate_bounds(graph, lo, hi, "ibp" if method == "crown-ibp" else "crown", ball=ball, cache=cache)
    found: dict | None = {} if linear is not None else None
    if method in ("crown", "crown-ibp") and found is None:
        res = lower_bound(graph, graph.output, lam, bounds, ball=ball, cache=cache)
    elif method in ("crown", "crown-ibp"):
        lam_x, kappa = backward_pass(graph, graph.output, lam, bounds, cache=cache)
        res = concretize_lower(lam_x, kappa, lo, hi, ball)
        found.update(A=lam_x if lam_x is not None else lo.new_zeros(b, lam.shape[1], *lo.shape[1:]),
                     bias=kappa)
    else:
        res = alpha_crown_lower(graph, lo, hi, lam, iterations=iterations, lr=lr,
                                optimize_intermediate=optimize_intermediate, bounds=bounds, linear=found, ball=ball)
    if linear is not None:
        linear.update(lA=found["A"][:, :s], lbias=found["bias"][:, :s])
        if bound_upper:
            linear.update(uA=-found["A"][:, s:], ubias=-found["bias"][:, s:])
    # Both are sound, so the final answer is their intersection (CROWN alone can lose to IBP).
    ilo, ihi = spec_interval(graph, bounds, C, model_dtype)
    lower = torch.maximum(cast_down(res[:, :s], model_dtype), ilo)
    return lower, torch.minimum(cast_up(-res[:, s:], model_dtype), ihi) if bound_upper else None


def _trace(module: torch.nn.Module, shape: torch.Size, input_shape: tuple[int, ...] | None) -> Graph:
    if input_shape is not None:
        return as_graph(module, tuple(input_shape))
    try:
        return as_graph(module, tuple(shape[1:]))
    except (ShapeError, RuntimeError) as batched:
        try:  # one unbatched sample
            return as_graph(module, tuple(shape))
        except (ShapeError, RuntimeError):
            raise batched from None


def spec_interval(graph: Graph, bounds: dict, C: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Interval bounds of ``C f(x)`` from the nodes' interval bounds: ``C`` applied to the output's interval, and
    where the output is a dense layer ``W h + b``, ``C`` folded into it, ``(C W) h + C b`` over ``h``'s interval
    (tighter: the usual elision of the last layer, Gowal et al. 2018). Both are sound; returns the intersection."""
    lower, upper = _interval_spec(bounds[graph.output], C, dtype)
    node = graph.node(graph.output)
    op = node.op
    if not isinstance(op, Dense) or op.weight_err is not None or op.bias_err is not None:
        return lower, upper
    h_lo, h_hi = bounds[node.inputs[0]]
    b, n = h_lo.shape[0], op.weight.shape[1]
    if h_lo[0].numel() != n:
        return lower, upper
    h_lo, h_hi = h_lo.reshape(b, n, 1).to(F64), h_hi.reshape(b, n, 1).to(F64)
    C64, W = C.to(F64), op.weight.to(F64)
    M = C64 @ W  # [B, S, n]
    mp, mn = M.clamp(min=0), M.clamp(max=0)
    cb = 0.0 if op.bias is None else C64 @ op.bias.to(F64)
    flo = (mp @ h_lo + mn @ h_hi).squeeze(-1) + cb
    fhi = (mp @ h_hi + mn @ h_lo).squeeze(-1) + cb
    if not accounted():  # training losses (verify.rounding.training_losses)
        return torch.maximum(lower, flo.to(dtype)), torch.minimum(upper, fhi.to(dtype))
    with torch.no_grad():
        mag = torch.maximum(h_lo.abs(), h_hi.abs())
        absC = C64.abs()
        size = absC @ W.abs() @ mag
        if op.bias is not None:
            size = size + absC @ op.bias.to(F64).abs().unsqueeze(-1)
        # C W and the dots, in float64; and the layer's own rounding allowance (a float evaluation of it)
        slack = gamma(C.shape[-1] + n + 2, F64) * size.squeeze(-1)
        e = op.interval_radius([magnitude(*bounds[node.inputs[0]])])
        if e is not None:
            slack = slack + (absC @ e.reshape(b, -1, 1).to(F64)).squeeze(-1) * (1 + 1e-6)
    flo, fhi = cast_down(down(flo - slack), dtype), cast_up(up(fhi + slack), dtype)
    return torch.maximum(lower, flo), torch.minimum(upper, fhi)


def _interval_spec(out_bounds: tuple[Tensor, Tensor], C: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Interval arithmetic for ``C y`` with ``y`` in ``[lo, hi]``, in float64 with its rounding paid, returned
    in ``dtype`` rounded outward."""
    b = C.shape[0]
    out_lo, out_hi = out_bounds[0].reshape(b, -1, 1).to(F64), out_bounds[1].reshape(b, -1, 1).to(F64)
    C64 = C.to(F64)
    cp, cn = C64.clamp(min=0), C64.clamp(max=0)
    lower = (cp @ out_lo + cn @ out_hi).squeeze(-1)
    upper = (cp @ out_hi + cn @ out_lo).squeeze(-1)
    slack = gamma(C.shape[-1] + 2, F64) * (C64.abs() @ torch.maximum(out_lo.abs(), out_hi.abs())).squeeze(-1)
    return cast_down(down(lower - slack), dtype), cast_up(up(upper + slack), dtype)


class BoundedModel:
    """A torch module traced once for per-sample inputs of ``input_shape``; every call reads the module's current
    parameters, so bounds stay differentiable in them (certified training). For auto_LiRPA's own interface see
    ``verify.lirpa``.

    ``precision``: ``model`` by default here (float32 arithmetic for a float32 module: training speed; the
    bounds are rigorous either way, ``float64`` is tighter)."""

    def __init__(self, module: torch.nn.Module, input_shape: tuple[int, ...], precision: str = "model"):
        from verify.frontends.torch_frontend import from_torch
        self.module, self.precision = module, precision
        self.graph = from_torch(module, tuple(input_shape))

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)

    def bound(self, x_lo, x_hi, C=None, method: str = "crown", **options) -> tuple[Tensor, Tensor | None]:
        """:func:`bound` on the traced graph: ``lower <= C f(x) <= upper`` over the boxes, ``[B, S]`` each
        (``bound_upper=False``: ``(lower, None)`` at about half the cost of a CROWN pass)."""
        options.setdefault("precision", self.precision)
        return bound(self.graph, x_lo, x_hi, C=C, method=method, **options)

    def interval_then_crown(self, x_lo, x_hi, C, rows: Callable[[Tensor, Tensor], Tensor]
                            ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`interval_then_crown` on the traced graph, in this model's precision."""
        return interval_then_crown(self.graph, x_lo, x_hi, C, rows, precision=self.precision)


def interval_then_crown(model: Any, x_lo, x_hi, C, rows: Callable[[Tensor, Tensor], Tensor], *,
                        precision: str = "float64") -> tuple[Tensor, Tensor, Tensor]:
    """Interval bounds ``ilo <= C f(x) <= ihi`` and a CROWN lower bound of ``D f(x)`` for the spec
    ``D = rows(ilo, ihi)`` (``[B, S', K]``, may depend on the interval bounds, differentiably), both over one
    interval pass: CROWN-IBP with a spec chosen from IBP, as loss fusion needs (a linear upper bound on
    ``sum_j exp(z_j - z_y)`` through the chords of exp on the IBP margin ranges; Xu et al., NeurIPS 2020).
    Returns ``(ilo, ihi, lower)``, each in the model's precision, rounded outward; all rigorous."""
    graph, model_dtype, lo, hi, C = _prepared(model, x_lo, x_hi, C, precision)
    with exact_float32(lo.device):
        cache = RoundingCache()
        bounds = intermediate_bounds(graph, lo, hi, "ibp", cache=cache)
        ilo, ihi = spec_interval(graph, bounds, C, model_dtype)
        D = _spec(graph, rows(ilo, ihi), lo.shape[0], lo.dtype, lo.device)
        lam = D.reshape(D.shape[0], D.shape[1], *graph.output_shape)
        res = lower_bound(graph, graph.output, lam, bounds, cache=cache)
    return ilo, ihi, cast_down(res, model_dtype)
