"""Python API: ``lipschitz(model, x_lo, x_hi, ...)`` and ``monotonicity(model, x_lo, x_hi, feature, ...)``.

Every reported bound holds for the exact real-arithmetic network as stored: upper bounds and derivative bounds are
rigorous (``verify.lipschitz.jacobian``), a reported ``lower`` and a counterexample's sign are certified at a point
(``verify.lipschitz.attack.point_gradient_bounds``). The model is computed in its own precision or a wider one
(``Graph.with_dtype``), never a narrower one, and every rounding allowance is sized for that precision."""

from __future__ import annotations

import contextlib
import copy
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
from verify.device import device_or_cpu, exact_float32
from verify.errors import InputError, ModelError, ShapeError, UnsupportedOperator
from verify.graph import Graph, Node
from verify.lipschitz.attack import certified_l1, gradients, kink_free, point_gradient_bounds
from verify.lipschitz.attack import lower_bound as attack_lower
from verify.lipschitz.bab import Objective, bab, split_search
from verify.lipschitz.bounds import forward_bounds, jacobian_bounds, naive_bound
from verify.lipschitz.gates import unbounded_derivative
from verify.lipschitz.jacobian import JacobianGraph
from verify.ops.linear import Conv2d
from verify.rounding import F64, cast_box
from verify.rounding import up as round_up

log = logging.getLogger(__name__)
METHODS = ("naive", "ibp", "crown", "alpha-crown", "bab", "mip", "lipsdp")
SMALL_NET = 4096  # neurons; above it BaB starts from CROWN instead of alpha-CROWN
PRECISIONS = ("auto", "float32", "float64")


@dataclass
class LipschitzResult:
    """``upper``: certified bound on ``max_j sup_{x in X} ||J_j||_1`` (local l_inf Lipschitz constant);
    ``lower``: certified at a point of the box (at most the norm of every Clarke Jacobian there; the point is
    ``extra["witness"][k]``); ``per_output``: ``[{output, upper, lower}]``.
    ``status``: "exact" when the value is proved optimal (``upper - lower <= 1e-6 * max(1, upper)``, or the exact
    MIP solved to optimality for every output), else "bounded"."""

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
    "not_monotone" (``counterexample``: a point where every Clarke derivative has the wrong sign, certified;
    ``gradient`` is its float64 value there), "unknown" (timeout). ``lower``/``upper`` bound the partial
    derivative over the box."""

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


def _prepare(model: Any, x_lo, x_hi, input_shape=None, precision: str = "auto",
             device: torch.device | None = None) -> tuple[Graph, Tensor, Tensor]:
    """A detached graph in the working precision and the box ``[1, *input_shape]`` (rounded outward).

    ``precision``: "float64" (any model, widened exactly), "float32" (float32 models only: narrowing would round
    the weights, i.e. bound another network) or "auto" (float64, except float32 models with convolutions, whose
    float64 CPU kernels are ~10x slower: those stay in float32 with float32-sized rounding allowances).
    ``device``: where the graph and the box go (default: the CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    lo_t, hi_t = _host(x_lo), _host(x_hi)
    if isinstance(model, torch.nn.Module):
        shape = tuple(input_shape) if input_shape is not None else tuple(lo_t.shape)
        graph = as_graph(model, shape)
    else:
        graph = as_graph(model)
    model_dtype = graph.dtype
    has_conv = any(isinstance(n.op, Conv2d) for n in graph.nodes)
    if precision == "float32" and model_dtype != torch.float32:
        raise ModelError(f"{graph.source}: cannot compute a {model_dtype} model in float32 (its weights would be "
                         "rounded); use precision 'float64' or 'auto'")
    keep = precision == "float32" or (precision == "auto" and has_conv and model_dtype == torch.float32)
    graph = _detached(graph.with_dtype(model_dtype if keep else F64))
    lo, hi = _box64(graph, lo_t, hi_t)
    lo, hi = cast_box(lo, hi, graph.dtype)  # a float32 box containing the float64 one
    device = torch.device("cpu") if device is None else device
    return graph.to(device), lo.to(device), hi.to(device)


def _host(x) -> Tensor:
    """A user's array or tensor, detached, on the CPU (the default device may be another one)."""
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), device="cpu")


def _box64(graph: Graph, x_lo, x_hi) -> tuple[Tensor, Tensor]:
    """The user's box in float64 ``[1, *input_shape]`` (exact: witnesses and counterexamples must lie in it)."""
    lo = _host(x_lo).to(F64).reshape(-1)
    hi = _host(x_hi).to(F64).reshape(-1)
    if lo.numel() != graph.input_numel or hi.numel() != graph.input_numel:
        raise ShapeError(f"box has {lo.numel()}/{hi.numel()} values but the model input has {graph.input_numel} "
                         f"({graph.input_shape})")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ShapeError("box bounds must be finite")
    if bool((lo > hi).any()):
        raise ShapeError(f"empty input box: lower > upper at input index {int((lo > hi).nonzero()[0])}")
    return lo.reshape(1, *graph.input_shape).to(graph.device), hi.reshape(1, *graph.input_shape).to(graph.device)


def _detached(graph: Graph) -> Graph:
    """``graph`` with its tensors detached (no autograd through a torch model's parameters): ops copied,
    tensors detached, wrapped modules (e.g. BatchNorm) deep-copied without gradients."""
    nodes = []
    for n in graph.nodes:
        op = copy.copy(n.op)
        for k, v in list(vars(op).items()):
            if isinstance(v, Tensor):
                setattr(op, k, v.detach())
            elif isinstance(v, torch.nn.Module):
                setattr(op, k, copy.deepcopy(v).requires_grad_(False))
        nodes.append(Node(n.name, op, n.inputs, n.shape))
    return Graph(graph.input_name, graph.input_shape, nodes, graph.output, graph.source, graph.user_input_shape)


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


def box_bounds(graph: Graph, lo: Tensor, hi: Tensor, outs: Sequence[int], method: str, naive: Tensor) -> Tensor:
    """``[B, K]`` IBP / CROWN Jacobian bounds for each of B boxes at once, capped by the ``naive`` bound ``[K]``."""
    with torch.no_grad():
        fb = forward_bounds(graph, lo, hi, "ibp" if method == "ibp" else "crown")
        up, _ = jacobian_bounds(JacobianGraph(graph), fb, outs, crown=method != "ibp")
    return torch.minimum(up, naive)


def upper_bounds(graph: Graph, lo: Tensor, hi: Tensor, outs: Sequence[int], method: str,
                 timeout: float = 10.0, known_lower: float | None = None) -> tuple[Tensor, dict]:
    """Per-output upper bounds ``[K]`` (float64, rigorous) by one method (each also capped by the naive bound)."""
    up_, extra = _upper_bounds(graph, lo, hi, outs, method, timeout, known_lower)
    return up_.to(F64), extra


def _upper_bounds(graph: Graph, lo: Tensor, hi: Tensor, outs: Sequence[int], method: str,
                  timeout: float = 10.0, known_lower: float | None = None) -> tuple[Tensor, dict]:
    extra: dict = {}
    naive = naive_bound(graph, outs)
    if method == "naive":
        if not bool(torch.isfinite(naive).all()):
            op = next(n for n in graph.nodes if unbounded_derivative(n.op))
            raise UnsupportedOperator(type(op.op).__name__, op.name,
                                      detail="its derivative has no global bound: use a local method (crown)")
        return naive, extra
    if method in ("ibp", "crown"):
        return box_bounds(graph, lo, hi, outs, method, naive)[0], extra
    if method == "alpha-crown":
        crown, _ = _upper_bounds(graph, lo, hi, outs, "crown")
        fb = forward_bounds(graph, lo, hi, "alpha")
        with torch.no_grad():
            up, _ = jacobian_bounds(JacobianGraph(graph), fb, outs)
        return torch.minimum(up[0], crown), extra
    if method == "bab":
        from verify.lipschitz.race import mip_fits, race

        t0 = time.perf_counter()
        root, _ = _upper_bounds(graph, lo, hi, outs, "alpha-crown" if _n_neurons(graph) <= SMALL_NET else "crown")
        left = max(timeout - (time.perf_counter() - t0), 0.0)
        if mip_fits(graph):  # the exact MIP in a worker beside the BaB: whichever closes the gap first wins
            up, res, race_extra = race(graph, lo, hi, outs, left, root, known_lower)
            extra.update(race_extra)
        else:
            res = split_search(graph, lo, hi, outs, left, root_upper=root, known_lower=known_lower)
            up = torch.minimum(res.upper, root)
        extra.update(domains=res.domains, bab_status=res.status, bab_lower=res.lower, bab_points=res.lower_x)
        return up, extra
    if method == "mip":
        from verify.lipschitz.lipmip import lipmip

        crown, _ = _upper_bounds(graph, lo, hi, outs, "crown")
        # the MILP is encoded in float64 (widening is exact), on the CPU (the solvers read numpy arrays)
        graph, lo, hi = graph.with_dtype(F64).to("cpu"), lo.to(F64).cpu(), hi.to(F64).cpu()
        res = lipmip(graph, lo, hi, outs, timeout=timeout, crown_upper=crown.tolist())
        extra.update(mip_status=res.status, mip_value=res.value, mip_x=res.x)
        return torch.minimum(torch.tensor(res.upper, dtype=torch.float64, device=naive.device), naive), extra
    if method == "lipsdp":
        from verify.lipschitz.sdp import lipsdp_l2

        l2 = lipsdp_l2(graph.to("cpu"), outs)  # certified (inf when no certificate was found); cvxpy on the CPU
        extra["l2"] = l2
        # ||g||_1 <= sqrt(d) ||g||_2; both factors and the product rounded up
        sqrt_d = round_up(torch.tensor(math.sqrt(graph.input_numel), dtype=F64, device=naive.device))
        return torch.minimum(round_up(torch.tensor(l2, dtype=F64, device=naive.device) * sqrt_d), naive), extra
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def lipschitz(model: Any, x_lo, x_hi, outputs: int | Sequence[int] | None = None, method: str = "crown",
              timeout: float = 10.0, *, input_shape: Sequence[int] | None = None, attack: bool = True,
              samples: int = 2000, precision: str = "auto", threads: int | None = 1,
              device: str | torch.device | None = None) -> LipschitzResult:
    """Certified upper bound (and an attained lower bound) on the local l_inf Lipschitz constant
    ``max_j sup_{x in [x_lo, x_hi]} ||J_j(x)||_1`` over the selected outputs (default: all).

    ``model``: a Graph, an ONNX path or a torch module (``input_shape`` per sample, default the box's shape).
    ``method``: naive, ibp, crown, alpha-crown, bab (``timeout`` seconds; on affine + ReLU networks of at most
    ``verify.lipschitz.race.MAX_RELUS`` neurons raced against the exact MIP in a worker process), mip (exact
    LipMIP, dual bound on timeout), lipsdp (global l2 bound times sqrt(d)). ``precision``: see :func:`_prepare`;
    ``threads``: torch intra-op threads during the call (None: leave as is). ``device`` (``auto``, ``cpu``,
    ``cuda[:N]``; default the CPU): where the attack, the bounds and the split search run; the MIP, LipSDP and the
    LPs of fully split BaB domains use the CPU, and the race against the MIP is CPU-only (a fork)."""
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    _check_options(timeout=timeout, samples=samples)
    target = device_or_cpu(device)
    with torch_threads(threads), exact_float32(target):
        return _lipschitz(model, x_lo, x_hi, outputs, method, timeout, input_shape, attack, samples, precision,
                          target)


def _lipschitz(model, x_lo, x_hi, outputs, method, timeout, input_shape, attack, samples, precision, device
               ) -> LipschitzResult:
    t0 = time.perf_counter()
    graph, lo, hi = _prepare(model, x_lo, x_hi, input_shape, precision, device)
    box = _box64(graph, x_lo, x_hi)
    outs = _outputs(graph, outputs)
    low = torch.full((len(outs),), -math.inf, dtype=F64, device=graph.device)
    witness: list = [None] * len(outs)  # per output: the point where ``lower`` is certified
    if attack:  # first, so that BaB can stop as soon as its bound meets an attained value
        log.info("phase attack: %d sampled gradients + PGD (lower bound)", samples)
        low, pts = attack_lower(graph, lo, hi, outs, samples=samples, exact_box=box)  # certified at pts
        low = low.to(F64).clamp(min=0.0)  # a norm is >= 0 (and -inf is not JSON)
        witness = [p.to(F64).reshape(-1).tolist() for p in pts]
    known = float(low.max()) if attack else None
    log.info("phase %s upper bound: %d output(s), %d inputs", method, len(outs), graph.input_numel)
    up, extra = upper_bounds(graph, lo, hi, outs, method, max(timeout - (time.perf_counter() - t0), 0.0), known)
    # interior points of feasible BaB leaves and the MIP's incumbents (its optima may sit on kinks, where the
    # certificate is the smaller one-sided value): certified there too
    leaves = [(k, x) for key in ("bab_points", "mip_x") for k, x in enumerate(extra.get(key) or []) if x is not None]
    if leaves:
        xs = torch.stack([_clamp(torch.as_tensor(x, dtype=F64, device=graph.device).reshape(1, *graph.input_shape),
                                 box)[0]
                          for _, x in leaves])
        vals = certified_l1(graph, xs, [outs[k] for k, _ in leaves])
        for (k, _), v, x in zip(leaves, vals, xs, strict=True):
            if bool(v > low[k]):
                low[k], witness[k] = v, x.reshape(-1).tolist()
    extra["witness"] = witness
    # both are rigorous (upper for the box, lower at a point of it): nothing to reconcile
    per = [{"output": j, "upper": float(u), "lower": float(lv)} for j, u, lv in zip(outs, up, low, strict=True)]
    upper, lower = float(up.max()), float(low.max())
    mip_optimal = bool(extra.get("mip_status")) and all(st == "optimal" for st in extra["mip_status"])
    status = "exact" if mip_optimal or upper - lower <= 1e-6 * max(1.0, abs(upper)) else "bounded"
    return LipschitzResult(upper, lower, per, method, time.perf_counter() - t0, status, extra)


def monotonicity(model: Any, x_lo, x_hi, feature: int, output: int = 0, direction: str | None = None,
                 timeout: float = 10.0, *, input_shape: Sequence[int] | None = None, precision: str = "auto",
                 threads: int | None = 1, device: str | torch.device | None = None) -> MonotonicityResult:
    """Certify the sign of ``d f_output / d x_feature`` over the box, or find a point with the wrong sign.

    ``direction``: "increasing" / "decreasing" / None (prove whichever the box allows; if neither is proved,
    the sign at the centre is taken as the expected one and BaB looks for the opposite)."""
    _check_options(timeout=timeout)
    target = device_or_cpu(device)
    with torch_threads(threads), exact_float32(target):
        return _monotonicity(model, x_lo, x_hi, feature, output, direction, timeout, input_shape, precision,
                             target)


def _check_options(**options: float) -> None:
    """Finite, non-negative numbers (a NaN timeout would silently mean "no time"): ``InputError`` otherwise."""
    for name, v in options.items():
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite non-negative number, got {v!r}")


def _monotonicity(model, x_lo, x_hi, feature, output, direction, timeout, input_shape, precision, device
                  ) -> MonotonicityResult:
    t0 = time.perf_counter()
    graph, lo, hi = _prepare(model, x_lo, x_hi, input_shape, precision, device)
    box = _box64(graph, x_lo, x_hi)
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
                            feature=feature, exact_box=box)
    if float(val[0]) > 0:  # certified at the point: every Clarke derivative there has the wrong sign
        return done("not_monotone", pts[0].cpu().numpy(), _grad64(graph, pts[:1], outs, feature))
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
        x = _clamp(torch.as_tensor(res.lower_x[0], dtype=F64, device=graph.device).reshape(1, *graph.input_shape),
                   box)
        if bool(_wrong_sign(graph, x, outs, feature, sign)[0]):
            return done("not_monotone", x.cpu().numpy(), _grad64(graph, x, outs, feature))
    # smooth activations (nothing to split in ReLU BaB) or an undecided ReLU BaB: bisect the input box
    verdict, x, g = _input_split_sign(graph, jg, lo, hi, outs, feature, sign, t0 + timeout, box)
    if verdict == "proved":  # the sign is certified on every sub-box: the derivative bound follows
        dlo, dhi = (max(dlo, 0.0), dhi) if sign < 0 else (dlo, min(dhi, 0.0))
        return done(direction)
    if verdict == "refuted":
        return done("not_monotone", x, g)
    return done("unknown")


def _input_split_sign(graph: Graph, jg: JacobianGraph, lo: Tensor, hi: Tensor, outs: list[int], feature: int,
                      sign: float, deadline: float, box: tuple[Tensor, Tensor], max_boxes: int = 256
                      ) -> tuple[str, Any, float | None]:
    """Prove ``sign * d f / d x_feature <= 0`` on the box by bisecting it (widest side first), bounding all
    sub-boxes in one batch; sub-box centres (clamped into the float64 ``box``) with a certified wrong sign are
    counterexamples."""
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
        centres = _clamp((boxes_lo.to(F64) + boxes_hi.to(F64)) / 2, box)
        g = gradients(graph, centres.to(graph.dtype), outs)[:, 0, feature]
        bad = ((sign * g > 0) & kink_free(graph, centres.to(graph.dtype))).nonzero().flatten()
        if bad.numel():  # float candidates; a counterexample must be certified at its point
            ok = _wrong_sign(graph, centres[bad], outs, feature, sign).nonzero().flatten()
            if ok.numel():
                x = centres[bad[ok[0]]].unsqueeze(0)
                return "refuted", x.reshape(-1).cpu().numpy(), _grad64(graph, x, outs, feature)
        order = worst.argsort(descending=True)[: max_boxes // 2]
        boxes_lo, boxes_hi = boxes_lo[order], boxes_hi[order]
        m = boxes_lo.shape[0]
        width = (boxes_hi - boxes_lo).reshape(m, -1)
        dim = width.argmax(1)
        mid = ((boxes_lo + boxes_hi) / 2).reshape(m, -1)
        lo_a, hi_a = boxes_lo.reshape(m, -1).clone(), boxes_hi.reshape(m, -1).clone()
        lo_b, hi_b = lo_a.clone(), hi_a.clone()
        rows = torch.arange(m, device=dim.device)
        hi_a[rows, dim] = mid[rows, dim]
        lo_b[rows, dim] = mid[rows, dim]
        shape = boxes_lo.shape[1:]
        boxes_lo = torch.cat([lo_a, lo_b]).reshape(2 * m, *shape)
        boxes_hi = torch.cat([hi_a, hi_b]).reshape(2 * m, *shape)
    return "unknown", None, None


def _wrong_sign(graph: Graph, x: Tensor, outs: list[int], feature: int, sign: float) -> Tensor:
    """``[P]``: ``sign * d f / d x_feature > 0`` at ``x[p]`` for every Clarke Jacobian there (certified)."""
    lo, hi = point_gradient_bounds(graph, x, [outs[0]] * x.shape[0])
    return lo[:, feature] > 0 if sign > 0 else hi[:, feature] < 0


def _grad64(graph: Graph, x: Tensor, outs: list[int], feature: int) -> float:
    """The float64 gradient entry at ``x[0]`` (reported beside a certified counterexample)."""
    return float(gradients(graph.with_dtype(F64), x[:1].to(F64), outs)[0, 0, feature])


def _clamp(x: Tensor, box: tuple[Tensor, Tensor]) -> Tensor:
    """Float64 points clamped into the float64 box (exact)."""
    return torch.minimum(torch.maximum(x.to(F64), box[0]), box[1])
