"""Python API: ``lipschitz(model, x_lo, x_hi, ...)`` and ``monotonicity(model, x_lo, x_hi, feature, ...)``."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from verify.api import as_graph
from verify.errors import ShapeError
from verify.graph import Graph
from verify.lipschitz.attack import gradients, kink_free
from verify.lipschitz.attack import lower_bound as attack_lower
from verify.lipschitz.bab import Objective, bab
from verify.lipschitz.bounds import forward_bounds, jacobian_bounds, naive_bound
from verify.lipschitz.jacobian import JacobianGraph
from verify.mip import _float64_copy
from verify.ops.linear import Conv2d

log = logging.getLogger(__name__)
METHODS = ("naive", "ibp", "crown", "alpha-crown", "bab", "mip", "lipsdp")
SMALL_NET = 4096  # neurons; above it BaB starts from CROWN instead of alpha-CROWN
F32_MARGIN = 1e-5  # relative (and absolute) widening of bounds computed in float32


@dataclass
class LipschitzResult:
    """``upper``: certified bound on ``max_j sup_{x in X} ||J_j||_1`` (local l_inf Lipschitz constant);
    ``lower``: attained by a gradient at some point of the box; ``per_output``: ``[{output, upper, lower}]``.
    ``status``: "converged" when ``upper - lower <= 1e-6 * max(1, upper)``, else "bounded"."""

    upper: float
    lower: float
    per_output: list[dict]
    method: str
    seconds: float
    status: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


@dataclass
class MonotonicityResult:
    """Sign of ``d f_output / d x_feature`` over the box. ``status``: "increasing" / "decreasing" (certified),
    "not_monotone" (``counterexample`` has a gradient of the wrong sign), "unknown" (timeout).
    ``lower``/``upper`` bound the partial derivative over the box."""

    status: str
    lower: float
    upper: float
    feature: int
    output: int
    counterexample: list | None = None
    gradient: float | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _prepare(model: Any, x_lo, x_hi, input_shape=None, precision: str = "auto") -> tuple[Graph, Tensor, Tensor]:
    """A detached copy of the graph in the working precision and the box ``[1, *input_shape]``.

    ``precision``: "float64", "float32" or "auto" (float64 unless the graph has convolutions, whose float64
    CPU kernels are ~10x slower; float32 results get a relative safety margin, see :data:`F32_MARGIN`)."""
    lo_t = torch.as_tensor(np.asarray(x_lo) if not isinstance(x_lo, Tensor) else x_lo).detach()
    hi_t = torch.as_tensor(np.asarray(x_hi) if not isinstance(x_hi, Tensor) else x_hi).detach()
    if isinstance(model, torch.nn.Module):
        shape = tuple(input_shape) if input_shape is not None else tuple(lo_t.shape)
        graph = as_graph(model, shape)
    else:
        graph = as_graph(model)
    graph = _float64_copy(graph)
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, float32 or float64")
    has_conv = any(isinstance(n.op, Conv2d) for n in graph.nodes)
    dtype = torch.float32 if precision == "float32" or (precision == "auto" and has_conv) else torch.float64
    if dtype == torch.float32:
        graph.cast(torch.float32)
    lo = lo_t.to(torch.float64).reshape(-1)
    hi = hi_t.to(torch.float64).reshape(-1)
    if lo.numel() != graph.input_numel or hi.numel() != graph.input_numel:
        raise ShapeError(f"box has {lo.numel()}/{hi.numel()} values but the model input has {graph.input_numel} "
                         f"({graph.input_shape})")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ShapeError("box bounds must be finite")
    if bool((lo > hi).any()):
        raise ShapeError(f"empty input box: lower > upper at input index {int((lo > hi).nonzero()[0])}")
    if dtype == torch.float32:  # round the box outwards so the float32 box contains the float64 one
        lo32, hi32 = lo.float(), hi.float()
        lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, torch.tensor(-math.inf)), lo32)
        hi32 = torch.where(hi32.double() < hi, torch.nextafter(hi32, torch.tensor(math.inf)), hi32)
        lo, hi = lo32, hi32
    return graph, lo.reshape(1, *graph.input_shape), hi.reshape(1, *graph.input_shape)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the previous setting. The Jacobian passes are many small
    ops; on a shared 2-core CPU a second thread made them 3-40x slower (measured), so the API uses 1."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _outputs(graph: Graph, outputs) -> list[int]:
    k = graph.output_numel
    if outputs is None:
        return list(range(k))
    outs = [int(outputs)] if isinstance(outputs, int | np.integer) else [int(o) for o in outputs]
    for o in outs:
        if not 0 <= o < k:
            raise ShapeError(f"output index {o} out of range: the model has {k} outputs")
    return outs


def _n_neurons(graph: Graph) -> int:
    return sum(int(torch.Size(n.shape).numel()) for n in graph.nodes if n.op.needs_input_bounds)


def upper_bounds(graph: Graph, lo: Tensor, hi: Tensor, outs: Sequence[int], method: str,
                 timeout: float = 10.0, known_lower: float | None = None) -> tuple[Tensor, dict]:
    """Per-output upper bounds ``[K]`` (float64) by one method (each also capped by the naive bound)."""
    up, extra = _upper_bounds(graph, lo, hi, outs, method, timeout, known_lower)
    up = up.double()
    if graph.dtype == torch.float32:  # accumulated float32 rounding of the bound computation
        up = up * (1 + F32_MARGIN) + F32_MARGIN
    return up, extra


def _upper_bounds(graph: Graph, lo: Tensor, hi: Tensor, outs: Sequence[int], method: str,
                  timeout: float = 10.0, known_lower: float | None = None) -> tuple[Tensor, dict]:
    extra: dict = {}
    naive = naive_bound(graph, outs)
    if method == "naive":
        return naive, extra
    with torch.no_grad():
        if method in ("ibp", "crown"):
            fb = forward_bounds(graph, lo, hi, "ibp" if method == "ibp" else "crown")
            up, _ = jacobian_bounds(JacobianGraph(graph), fb, outs, crown=method != "ibp")
            return torch.minimum(up[0], naive), extra
    if method == "alpha-crown":
        crown, _ = _upper_bounds(graph, lo, hi, outs, "crown")
        fb = forward_bounds(graph, lo, hi, "alpha")
        with torch.no_grad():
            up, _ = jacobian_bounds(JacobianGraph(graph), fb, outs)
        return torch.minimum(up[0], crown), extra
    if method == "bab":
        t0 = time.perf_counter()
        root, _ = _upper_bounds(graph, lo, hi, outs, "alpha-crown" if _n_neurons(graph) <= SMALL_NET else "crown")
        res = bab(graph, lo, hi, outs, Objective("l1"), timeout=max(timeout - (time.perf_counter() - t0), 0.0),
                  root_upper=root, known_lower=known_lower)
        extra.update(domains=res.domains, bab_status=res.status, bab_lower=res.lower, bab_points=res.lower_x)
        return torch.minimum(res.upper, root), extra
    if method == "mip":
        from verify.lipschitz.lipmip import lipmip

        crown, _ = _upper_bounds(graph, lo, hi, outs, "crown")
        if graph.dtype != torch.float64:  # the MILP is encoded in float64
            graph, lo, hi = _float64_copy(graph), lo.double(), hi.double()
            crown = crown.double() * (1 + F32_MARGIN) + F32_MARGIN
        res = lipmip(graph, lo, hi, outs, timeout=timeout, crown_upper=crown.tolist())
        extra.update(mip_status=res.status, mip_value=res.value, mip_x=res.x)
        return torch.minimum(torch.tensor(res.upper, dtype=torch.float64), naive), extra
    if method == "lipsdp":
        from verify.lipschitz.sdp import lipsdp_l2

        l2 = lipsdp_l2(graph, outs)
        extra["l2"] = l2
        return torch.minimum(torch.tensor(l2, dtype=torch.float64) * math.sqrt(graph.input_numel), naive), extra
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def lipschitz(model: Any, x_lo, x_hi, outputs: int | Sequence[int] | None = None, method: str = "crown",
              timeout: float = 10.0, *, input_shape: Sequence[int] | None = None, attack: bool = True,
              samples: int = 2000, precision: str = "auto", threads: int | None = 1) -> LipschitzResult:
    """Certified upper bound (and an attained lower bound) on the local l_inf Lipschitz constant
    ``max_j sup_{x in [x_lo, x_hi]} ||J_j(x)||_1`` over the selected outputs (default: all).

    ``model``: a Graph, an ONNX path or a torch module (``input_shape`` per sample, default the box's shape).
    ``method``: naive, ibp, crown, alpha-crown, bab (``timeout`` seconds), mip (exact LipMIP, dual bound on
    timeout), lipsdp (global l2 bound times sqrt(d)). ``precision``: see :func:`_prepare`; ``threads``: torch
    intra-op threads during the call (None: leave as is)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    with torch_threads(threads):
        return _lipschitz(model, x_lo, x_hi, outputs, method, timeout, input_shape, attack, samples, precision)


def _lipschitz(model, x_lo, x_hi, outputs, method, timeout, input_shape, attack, samples, precision
               ) -> LipschitzResult:
    t0 = time.perf_counter()
    graph, lo, hi = _prepare(model, x_lo, x_hi, input_shape, precision)
    outs = _outputs(graph, outputs)
    low = torch.full((len(outs),), -math.inf, dtype=torch.float64)
    if attack:  # first, so that BaB can stop as soon as its bound meets an attained value
        log.info("phase attack: %d sampled gradients + PGD (lower bound)", samples)
        low, _ = attack_lower(graph, lo, hi, outs, samples=samples)
        low = low.double().clamp(min=0.0)  # a norm: 0 is always attained (and -inf is not JSON)
    known = float(low.max()) if attack else None
    log.info("phase %s upper bound: %d output(s), %d inputs", method, len(outs), graph.input_numel)
    up, extra = upper_bounds(graph, lo, hi, outs, method, max(timeout - (time.perf_counter() - t0), 0.0), known)
    for k, x in enumerate(extra.get("bab_points", [])):
        if x is not None:  # gradients at interior points of exact BaB leaves (MIP optima sit on kinks)
            xt = torch.as_tensor(x, dtype=graph.dtype).reshape(1, *graph.input_shape)
            if bool(kink_free(graph, xt)[0]):
                low[k] = torch.maximum(low[k], gradients(graph, xt, [outs[k]]).abs().sum().double())
    # an attained value above a sound bound can only be rounding; clamp that, but let a larger excess
    # (which would reveal a bug) show in the result instead of hiding it
    low = low.double()
    low = torch.where(low <= up * (1 + 1e-6) + 1e-9, torch.minimum(low, up), low)
    per = [{"output": j, "upper": float(u), "lower": float(lv)} for j, u, lv in zip(outs, up, low, strict=True)]
    upper, lower = float(up.max()), float(low.max())
    status = "converged" if upper - lower <= 1e-6 * max(1.0, abs(upper)) else "bounded"
    return LipschitzResult(upper, lower, per, method, time.perf_counter() - t0, status, extra)


def monotonicity(model: Any, x_lo, x_hi, feature: int, output: int = 0, direction: str | None = None,
                 timeout: float = 10.0, *, input_shape: Sequence[int] | None = None, precision: str = "auto",
                 threads: int | None = 1) -> MonotonicityResult:
    """Certify the sign of ``d f_output / d x_feature`` over the box, or find a point with the wrong sign.

    ``direction``: "increasing" / "decreasing" / None (prove whichever the box allows; if neither is proved,
    the sign at the centre is taken as the expected one and BaB looks for the opposite)."""
    with torch_threads(threads):
        return _monotonicity(model, x_lo, x_hi, feature, output, direction, timeout, input_shape, precision)


def _monotonicity(model, x_lo, x_hi, feature, output, direction, timeout, input_shape, precision
                  ) -> MonotonicityResult:
    t0 = time.perf_counter()
    graph, lo, hi = _prepare(model, x_lo, x_hi, input_shape, precision)
    outs = _outputs(graph, output)
    if not 0 <= feature < graph.input_numel:
        raise ShapeError(f"feature index {feature} out of range: the model has {graph.input_numel} inputs")
    jg = JacobianGraph(graph)
    with torch.no_grad():
        fb = forward_bounds(graph, lo, hi, "crown")
        _, parts = jacobian_bounds(jg, fb, outs)
        dlo, dhi = jg.entry_bounds(feature, parts["gates"], parts["gb"], parts["seeds"])
    dlo, dhi = float(dlo[0]), float(dhi[0])

    def done(status, cx=None, grad=None):
        return MonotonicityResult(status, dlo, dhi, feature, outs[0],
                                  None if cx is None else np.asarray(cx, dtype=np.float64).reshape(-1).tolist(),
                                  grad, time.perf_counter() - t0)

    if direction in (None, "increasing") and dlo >= 0:
        return done("increasing")
    if direction in (None, "decreasing") and dhi <= 0:
        return done("decreasing")
    if direction is None:
        g0 = float(gradients(graph, (lo + hi) / 2, outs)[0, 0, feature])
        direction = "increasing" if g0 >= 0 else "decreasing"
    # wrong sign for "increasing" is a negative derivative: maximise -d (sign -1), prove max <= 0
    sign = -1.0 if direction == "increasing" else 1.0
    val, pts = attack_lower(graph, lo, hi, outs, samples=1000, objective="neg" if sign < 0 else "pos",
                            feature=feature)
    if float(val[0]) > 0:
        return done("not_monotone", pts[0].numpy(), float(-val[0] if sign < 0 else val[0]))
    res = bab(graph, lo, hi, outs, Objective("entry", feature, sign), timeout=timeout - (time.perf_counter() - t0),
              stop_below=0.0)
    if sign < 0:
        dlo = max(dlo, -float(res.upper[0]))
    else:
        dhi = min(dhi, float(res.upper[0]))
    if res.status == "proved" or res.status == "converged" and float(res.upper[0]) <= 0:
        dlo, dhi = (max(dlo, 0.0), dhi) if sign < 0 else (dlo, min(dhi, 0.0))
        return done(direction)
    if res.status == "refuted" and res.lower_x[0] is not None:
        x = torch.as_tensor(res.lower_x[0], dtype=graph.dtype).reshape(1, *graph.input_shape)
        g = float(gradients(graph, x, outs)[0, 0, feature])
        if sign * g > 0 and bool(kink_free(graph, x)[0]):
            return done("not_monotone", x.numpy(), g)
    # smooth activations (nothing to split in ReLU BaB) or an undecided ReLU BaB: bisect the input box
    verdict, x, g = _input_split_sign(graph, jg, lo, hi, outs, feature, sign, t0 + timeout)
    if verdict == "proved":  # the sign is certified on every sub-box: the derivative bound follows
        dlo, dhi = (max(dlo, 0.0), dhi) if sign < 0 else (dlo, min(dhi, 0.0))
        return done(direction)
    if verdict == "refuted":
        return done("not_monotone", x, g)
    return done("unknown")


def _input_split_sign(graph: Graph, jg: JacobianGraph, lo: Tensor, hi: Tensor, outs: list[int], feature: int,
                      sign: float, deadline: float, max_boxes: int = 256) -> tuple[str, Any, float | None]:
    """Prove ``sign * d f / d x_feature <= 0`` on the box by bisecting it (widest side first), bounding all
    sub-boxes in one batch; sub-box centres with the wrong sign are counterexamples."""
    boxes_lo, boxes_hi = lo, hi
    while time.perf_counter() < deadline:
        with torch.no_grad():
            fb = forward_bounds(graph, boxes_lo, boxes_hi, "crown")
            _, parts = jacobian_bounds(jg, fb, outs)
            dl, du = jg.entry_bounds(feature, parts["gates"], parts["gb"], parts["seeds"])
        worst = du if sign > 0 else -dl
        open_ = worst > 0
        if not bool(open_.any()):
            return "proved", None, None
        boxes_lo, boxes_hi, worst = boxes_lo[open_], boxes_hi[open_], worst[open_]
        centres = (boxes_lo + boxes_hi) / 2
        g = gradients(graph, centres, outs)[:, 0, feature]
        bad = (sign * g > 0) & kink_free(graph, centres)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            return "refuted", centres[i].reshape(-1).detach().numpy(), float(g[i])
        order = worst.argsort(descending=True)[: max_boxes // 2]
        boxes_lo, boxes_hi = boxes_lo[order], boxes_hi[order]
        m = boxes_lo.shape[0]
        width = (boxes_hi - boxes_lo).reshape(m, -1)
        dim = width.argmax(1)
        mid = ((boxes_lo + boxes_hi) / 2).reshape(m, -1)
        lo_a, hi_a = boxes_lo.reshape(m, -1).clone(), boxes_hi.reshape(m, -1).clone()
        lo_b, hi_b = lo_a.clone(), hi_a.clone()
        rows = torch.arange(m)
        hi_a[rows, dim] = mid[rows, dim]
        lo_b[rows, dim] = mid[rows, dim]
        shape = boxes_lo.shape[1:]
        boxes_lo = torch.cat([lo_a, lo_b]).reshape(2 * m, *shape)
        boxes_hi = torch.cat([hi_a, hi_b]).reshape(2 * m, *shape)
    return "unknown", None, None
