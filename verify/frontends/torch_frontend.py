"""torch.nn.Module -> graph IR via ``torch.fx`` symbolic tracing.

Supported: Linear, Conv2d, ReLU, Sigmoid, Tanh, Flatten, BatchNorm1d/2d (eval), AvgPool2d, MaxPool2d,
Dropout/Identity, nested Sequential, residual ``+``/``-``, ``torch.flatten``, ``x.view(x.size(0), -1)``; calls on
constants only (buffers, ``torch.zeros(x.shape[0], 1)``) are evaluated by torch, with the batch size read as 1.
Weights are referenced, not copied, so bounds stay differentiable w.r.t. the module's parameters.
The per-sample shape carries a leading 1 (the module's own batch axis), as in ONNX.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from verify.errors import UnsupportedOperator
from verify.frontends import composites, torch_functions, torch_layers
from verify.frontends import constants as K
from verify.graph import Graph, GraphBuilder
from verify.ops import AddVars, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale, Sigmoid, Tanh
from verify.ops.activation import Erf, LeakyRelu
from verify.ops.bilinear import Mul, Power, Reciprocal, Square
from verify.ops.exp_log import Exp, Log, Sqrt
from verify.ops.periodic import Cos, Sin
from verify.ops.shape import Concat
from verify.ops.softmax import LogSoftmax
from verify.rounding import unit_roundoff

_ACT_MODULES = {nn.ReLU: Relu, nn.Sigmoid: Sigmoid, nn.Tanh: Tanh}
_ACT_FUNCS = {torch.relu: Relu, F.relu: Relu, torch.sigmoid: Sigmoid, F.sigmoid: Sigmoid,
              torch.tanh: Tanh, F.tanh: Tanh}
_MONOTONE = {torch.exp: Exp, torch.log: Log, torch.sqrt: Sqrt, "exp": Exp, "log": Log, "sqrt": Sqrt}  # fn or method


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BatchNormScale(Scale):
    """Eval-mode BatchNorm as ``y = w x + b``, recomputed from the module on each use so that gradients
    reach its current parameters."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, rank: int):
        self.module, self.tail = module, (1,) * (rank - 2)
        self.compute_dtype: torch.dtype | None = None  # set by cast(); the module itself is never changed
        self.compute_device: torch.device | None = None  # set by to_device()

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        t = t if self.compute_dtype is None else t.to(self.compute_dtype)
        return t if self.compute_device is None else t.to(self.compute_device)

    def to_device(self, device):
        self.compute_device = device

    def _scale(self) -> torch.Tensor:
        """``gamma / sqrt(var + eps)``, computed in the compute precision (float64 when bounds are)."""
        m = self.module
        inv = torch.rsqrt(self._cast(m.running_var) + m.eps)
        return inv if m.weight is None else self._cast(m.weight) * inv

    @property
    def weight(self):
        return self._scale().reshape(-1, *self.tail)

    @property
    def bias(self):
        m = self.module
        b = -self._cast(m.running_mean) * self._scale()
        if m.bias is not None:
            b = b + self._cast(m.bias)
        return b.reshape(-1, *self.tail)

    # w = gamma / sqrt(var + eps) and b = beta - mean w are rounded (rsqrt is not correctly rounded either):
    # generous bounds on their distance to the exact values, for the rounding allowance of Scale.
    @property
    def weight_err(self):
        w = self.weight.detach()
        return 16 * unit_roundoff(w.dtype) * w.abs()

    @property
    def bias_err(self):
        m = self.module
        w = self.weight.detach().reshape(-1)
        mag = self._cast(m.running_mean.detach()).abs() * w.abs()
        if m.bias is not None:
            mag = mag + self._cast(m.bias.detach()).abs()
        return (20 * unit_roundoff(w.dtype) * mag).reshape(-1, *self.tail)

    def tensors(self):
        return {"weight": self.weight.detach(), "bias": self.bias.detach()}

    def cast(self, dtype):
        self.compute_dtype = dtype


def _constant(value: np.ndarray, err: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Python/float64 constant in the model's precision, with the bound on its distance to the exact value."""
    t = torch.as_tensor(value, dtype=dtype, device="cpu")
    e = K.cast_error(value, t.double().numpy()) + err
    if not np.any(e > 0):
        return t, None
    up = torch.tensor(float("inf"), dtype=dtype, device="cpu")
    return t, torch.nextafter(torch.as_tensor(e, device="cpu").to(dtype), up)


def _bn_scale(m: nn.modules.batchnorm._BatchNorm, rank: int) -> Scale:
    if m.training or m.running_mean is None:
        raise UnsupportedOperator("BatchNorm", "", None, "only eval-mode BatchNorm with running statistics")
    return BatchNormScale(m, rank)


def _module_op(m: nn.Module, in_shape: tuple[int, ...], name: str):
    if isinstance(m, nn.Linear):
        return Dense(m.weight, m.bias)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedOperator("Conv2d", name, None, "padding mode/strings")
        return Conv2d(m.weight, m.bias, _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups)
    for cls, act in _ACT_MODULES.items():
        if isinstance(m, cls):
            return act()
    if isinstance(m, nn.LeakyReLU):
        return _leaky(m.negative_slope, name)
    if isinstance(m, nn.Flatten):
        return Reshape(_flattened(in_shape, m.start_dim, m.end_dim))
    if isinstance(m, nn.Unflatten) and isinstance(m.dim, int):
        d = m.dim % len(in_shape)
        if d == 0:
            raise UnsupportedOperator("Unflatten", name, None, "unflattening the batch axis")
        return Reshape([*in_shape[:d], *torch.Size(m.unflattened_size), *in_shape[d + 1:]])
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return _bn_scale(m, len(in_shape))
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode or m.divisor_override:
            raise UnsupportedOperator("AvgPool2d", name, None, "ceil_mode/divisor_override")
        k = _pair(m.kernel_size)
        return AvgPool2d(k, _pair(m.stride or k), _pair(m.padding), m.count_include_pad)
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or _pair(m.dilation) != (1, 1) or m.return_indices:
            raise UnsupportedOperator("MaxPool2d", name, None, "ceil_mode/dilation/indices")
        k = _pair(m.kernel_size)
        return MaxPool2d(k, _pair(m.stride or k), _pair(m.padding))
    if isinstance(m, nn.Dropout | nn.Identity):
        return None
    op = torch_layers.module_op(m, in_shape, name)
    if op is torch_layers.UNHANDLED:
        raise UnsupportedOperator(type(m).__name__, name, None)
    return op


def _leaky(slope: float, name: str) -> LeakyRelu:
    if not 0.0 <= float(slope) <= 1.0:
        raise UnsupportedOperator("LeakyReLU", name, None, f"negative_slope {slope} outside [0, 1]")
    return LeakyRelu(float(slope))


def _clamp_limits(target, args: list, kwargs: dict) -> tuple[float | None, float | None]:
    if target is F.relu6:
        return 0.0, 6.0
    if target is F.hardtanh:
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        return float(lo), float(args[2] if len(args) > 2 else kwargs.get("max_val", 1.0))
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    if isinstance(lo, str | torch.Tensor) or isinstance(hi, str | torch.Tensor):
        raise UnsupportedOperator("clamp", "", None, "only constant (number) limits")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _clip(b: GraphBuilder, name: str, x: str, lo: float | None, hi: float | None, dtype: torch.dtype) -> str:
    """``clamp(x, lo, hi)`` through ReLUs (``verify.frontends.composites``)."""
    def const(v):
        return _constant(v, np.zeros(()), dtype)
    return composites.clamp(b, name, x, None if lo is None else np.asarray(lo), None if hi is None else np.asarray(hi),
                            const)


def _gelu(b: GraphBuilder, name: str, x: str, dtype: torch.dtype, approximate: str) -> str:
    """GELU through Erf (or Tanh) and a product (``verify.frontends.composites.gelu``)."""
    def const(v, err):
        return _constant(v, err, dtype)
    return composites.gelu(b, name, x, const, approximate)


# Keyword arguments each traced function / method is read with (by name); any other keyword argument is refused,
# so that an argument a rule does not read can never change the network silently (torch.add's alpha once did).
# An unlisted argument set to None or False (off; fx spells out some defaults) passes.
_POOL_KW = {"kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override",
            "return_indices"}
_KWARGS: dict[str, set[str]] = {
    "add": {"alpha", "other"}, "sub": {"alpha", "other"}, "flatten": {"start_dim", "end_dim"},
    "softmax": {"dim", "_stacklevel"}, "log_softmax": {"dim", "_stacklevel"},
    "gelu": {"approximate"}, "leaky_relu": {"negative_slope", "inplace"},
    "clamp": {"min", "max"}, "clip": {"min", "max"}, "hardtanh": {"min_val", "max_val", "inplace"},
    "relu6": {"inplace"}, "relu": {"inplace"}, "elu": {"alpha", "inplace"}, "selu": {"inplace"},
    "silu": {"inplace"}, "hardsigmoid": {"inplace"}, "hardswish": {"inplace"}, "softplus": {"beta", "threshold"},
    "cat": {"dim"}, "concat": {"dim"}, "stack": {"dim"}, "sum": {"dim", "keepdim", "dtype"},
    "mean": {"dim", "keepdim", "dtype"}, "amax": {"dim", "keepdim"}, "amin": {"dim", "keepdim"},
    "max": {"dim", "keepdim"}, "min": {"dim", "keepdim"},
    "permute": {"dims"}, "transpose": {"dim0", "dim1"}, "unsqueeze": {"dim"}, "squeeze": {"dim"},
    "split": {"split_size_or_sections", "dim"}, "chunk": {"chunks", "dim"},
    "interpolate": {"size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"},
    "upsample": {"size", "scale_factor", "mode", "align_corners"}, "max_pool2d": _POOL_KW, "avg_pool2d": _POOL_KW,
    "mul": {"other"}, "div": {"other", "rounding_mode"}, "true_divide": {"other"}, "truediv": set(),
    "clamp_min": {"min"}, "clamp_max": {"max"}, "dropout": {"p", "training", "inplace"},
    "pad": {"pad", "mode", "value"},
    "flip": {"dims"}, "roll": {"shifts", "dims"}, "norm": {"p", "dim", "keepdim"}, "mish": {"inplace"},
    "var": {"dim", "keepdim", "correction", "unbiased"}, "std": {"dim", "keepdim", "correction", "unbiased"},
}


def _check_kwargs(n: fx.Node) -> None:
    name = _target_name(n)
    # None / False are "off" (fx spells out defaults such as interpolate's antialias=False)
    extra = sorted(k for k, v in n.kwargs.items() if k not in _KWARGS.get(name, set()) and v is not None
                   and v is not False)
    if extra:
        raise UnsupportedOperator(name, n.name, None, f"the argument(s) {', '.join(extra)}")


_ARITH = {operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", operator.sub: "sub",
          operator.isub: "sub", torch.sub: "sub", "sub": "sub", operator.mul: "mul", operator.imul: "mul",
          torch.mul: "mul", "mul": "mul", operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
          torch.true_divide: "div", "div": "div", "true_divide": "div"}


def _arith(n: fx.Node) -> str | None:
    """``add`` / ``sub`` / ``mul`` / ``div`` for those functions, operators and tensor methods, else None."""
    if n.op not in ("call_function", "call_method"):
        return None
    try:
        return _ARITH.get(n.target)
    except TypeError:  # an unhashable target
        return None


def _target_name(n: fx.Node) -> str:
    """The traced function's or method's name (``add``, ``softmax``, ...)."""
    return str(getattr(n.target, "__name__", n.target))


def _two_operands(n: fx.Node, args: list, kwargs: dict, key: str) -> tuple:
    """The two operands of a binary function, the second possibly passed by keyword (``torch.add(x, other=y)``)."""
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1 and key in kwargs:
        return args[0], kwargs[key]
    raise UnsupportedOperator(_target_name(n), n.name, None, "these arguments")


def _flattened(shape: Sequence[int], start: int = 0, end: int = -1) -> list[int]:
    """The shape after ``flatten(start_dim, end_dim)`` (torch's defaults 0 and -1; nn.Flatten's are 1 and -1)."""
    s = list(shape)
    start, end = start % len(s), end % len(s)
    return s[:start] + [int(torch.Size(s[start:end + 1]).numel())] + s[end + 1:]


def _flatten_dims(args: list, kwargs: dict) -> tuple[int, int]:
    """``(start_dim, end_dim)`` of a traced ``flatten`` call."""
    return (args[1] if len(args) > 1 else kwargs.get("start_dim", 0)), \
        (args[2] if len(args) > 2 else kwargs.get("end_dim", -1))


_FACTORIES = ("zeros", "ones", "full")
"""Tensor factories a forward may call with traced sizes (``torch.zeros(x.shape[0], 1)``): constants of the graph."""


@contextlib.contextmanager
def _traceable_factories() -> Iterator[None]:
    """During ``fx.symbolic_trace``: ``torch.zeros`` / ``ones`` / ``full`` given a traced size record a node instead
    of failing on it (fx traces tensor arguments, not sizes). Restored on exit."""
    originals = {f: getattr(torch, f) for f in _FACTORIES}

    def traceable(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            proxies = [a for a in _leaves((args, kwargs)) if isinstance(a, fx.Proxy)]
            if proxies:
                return proxies[0].tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)
        return call

    try:
        for f, fn in originals.items():
            setattr(torch, f, traceable(fn))
        yield
    finally:
        for f, fn in originals.items():
            setattr(torch, f, fn)


def _leaves(v) -> Iterator:
    if isinstance(v, list | tuple):
        for a in v:
            yield from _leaves(a)
    elif isinstance(v, dict):
        for a in v.values():
            yield from _leaves(a)
    else:
        yield v


def _fold(n: fx.Node, args: list, kwargs: dict):
    """A call on constants only (a buffer's ``expand``, ``torch.zeros(x.shape[0], 1)``, shape arithmetic), evaluated
    by torch itself. A size read off a variable's shape has the batch axis as 1, so the value is per sample, as the
    graph's values are. In-place methods are refused: they would change the module's own buffers."""
    if n.op == "call_method":
        if n.target.endswith("_") and not n.target.endswith("__"):
            raise UnsupportedOperator(str(n.target), n.name, None, "an in-place method on a constant")
        value = getattr(args[0], n.target)(*args[1:], **kwargs)
    else:
        value = n.target(*args, **kwargs)
    return value.detach() if isinstance(value, torch.Tensor) else value


def _on_constants(n: fx.Node, env: dict) -> bool:
    """No argument of ``n`` is a variable (a value of the graph, named by a string, or a transposed one) or a refused
    value."""
    return not any(isinstance(v, str | torch_layers.Refused | _Transposed)
                   for a in _leaves((n.args, dict(n.kwargs))) if isinstance(a, fx.Node) for v in _leaves(env[a]))


class _Transposed:
    """``x.T`` of a per-sample row ``(1, k)``: its batch axis moved, so not a value of the graph. It is read only by
    ``C @ x.T`` for a constant matrix (``(x @ C.T).T``: a dense layer, still transposed) and by ``.T`` back."""

    def __init__(self, name: str):
        self.name = name


def _is_transpose(n: fx.Node, args: list) -> bool:
    """``x.T``, ``x.t()`` or ``torch.t(x)``."""
    return (n.op == "call_function" and n.target is getattr and args[1] == "T") or \
        torch_layers._is(n, (torch.t,), ("t",))


def _transposed_rule(b: GraphBuilder, n: fx.Node, args: list, dtype: torch.dtype):
    """The rules that read a :class:`_Transposed` row (``(C @ p.T).T``, ml4acopf's incidence products)."""
    if _is_transpose(n, args):
        return args[0].name
    if torch_layers._is(n, (torch.matmul, operator.matmul), ("matmul",)) and len(args) == 2 \
            and isinstance(args[0], torch.Tensor) and isinstance(args[1], _Transposed):
        # C @ x.T = (x @ C.T).T: the dense layer of x @ C.T, still transposed
        c = torch_layers.numeric(args[0])
        return _Transposed(torch_layers.matmul_constant(b, n.name, args[1].name, c.T,
                                                        lambda v: _constant(v, np.zeros(()), dtype)))
    raise UnsupportedOperator(_target_name(n), n.name, None, "a transposed batch axis (only (C @ x.T).T is read)")


class _Tracer(fx.Tracer):
    proxy_buffer_attributes = True  # buffers become graph constants: calls on them (expand, neg) are traced too


def from_torch(module: nn.Module, input_shape: Sequence[int]) -> Graph:
    """Trace ``module`` for inputs of per-sample shape ``input_shape`` (without the batch axis)."""
    if not any(True for _ in module.children()):
        # A bare layer (nn.Linear, nn.Conv2d, ...) traces to raw parameter reads; as the one child of a
        # Sequential it is a module call, which the layer rules below understand.
        module = nn.Sequential(module)
    with _traceable_factories():
        graph = _Tracer().trace(module)
        traced = fx.GraphModule(module, graph, type(module).__name__)
    mods = dict(traced.named_modules())
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedOperator("forward", "", None, f"expected one input, found {len(placeholders)}")
    b = GraphBuilder(placeholders[0].name, (1, *input_shape), source=type(module).__name__)
    env: dict[fx.Node, object] = {placeholders[0]: placeholders[0].name}
    floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
    dtype = floats[0] if floats else torch.get_default_dtype()  # constants of the trace in the model's precision

    def var(a):
        return env[a] if isinstance(a, fx.Node) else a

    output = None
    for n in traced.graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            output = var(n.args[0])
            break
        if n.op == "get_attr":  # a constant tensor of the trace (torch.tensor(...) in forward, a buffer)
            value = functools.reduce(getattr, n.target.split("."), traced)
            if isinstance(value, nn.Parameter) and value.requires_grad:
                raise UnsupportedOperator("parameter", n.name, None, "a trainable parameter read outside a layer "
                                          "(its bounds would not follow training): freeze it or use a layer")
            env[n] = value.detach()
            continue
        args = [var(a) for a in n.args]
        nested = [type(a)(var(v) for v in a) if isinstance(a, list | tuple) else a for a in args]  # stack, cat
        kwargs = {k: var(v) for k, v in n.kwargs.items()}
        if n.op in ("call_function", "call_method") and _on_constants(n, env):
            env[n] = _fold(n, nested, kwargs)
            continue
        if any(isinstance(v, _Transposed) for v in _leaves((nested, kwargs))):
            env[n] = _transposed_rule(b, n, nested, dtype)
            continue
        if _is_transpose(n, args) and isinstance(args[0], str) and len(b.shapes[args[0]]) == 2:
            env[n] = _Transposed(args[0])  # a row (1, k): C @ x.T may follow
            continue
        if n.op in ("call_function", "call_method"):
            _check_kwargs(n)
        used = [a for a in args if isinstance(a, torch_layers.Refused)]
        if used and not (n.target is operator.getitem or n.target is getattr):
            raise UnsupportedOperator(used[0].what, n.name, None, "used by the network")
        if n.op == "call_module" and isinstance(mods[n.target], nn.Hardtanh):  # also ReLU6
            m = mods[n.target]
            env[n] = _clip(b, n.target.replace(".", "_"), args[0], float(m.min_val), float(m.max_val), dtype)
        elif (n.op == "call_module" and isinstance(mods[n.target], nn.Softmax | nn.LogSoftmax)) or \
                torch_layers._is(n, (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax),
                                 ("softmax", "log_softmax")):
            log = isinstance(mods[n.target], nn.LogSoftmax) if n.op == "call_module" else \
                _target_name(n) == "log_softmax"
            if n.op == "call_module":
                dim = mods[n.target].dim
            else:
                dim = args[1] if len(args) > 1 else n.kwargs.get("dim")
            if dim is None:
                raise UnsupportedOperator("softmax", n.name, None, "an implicit dim (give dim=)")
            rank = len(b.shapes[args[0]])
            axis = dim if dim >= 0 else rank + dim  # the graph's shapes keep the batch axis as a leading 1
            tag = n.name.replace(".", "_")
            env[n] = b.add(tag, LogSoftmax(axis), [args[0]]) if log else \
                composites.softmax(b, tag, args[0], axis, dtype)
        elif n.op == "call_module" and isinstance(mods[n.target], nn.GELU):
            env[n] = _gelu(b, n.target.replace(".", "_"), args[0], dtype, mods[n.target].approximate)
        elif n.op == "call_function" and n.target is F.gelu:
            env[n] = _gelu(b, n.name, args[0], dtype, n.kwargs.get("approximate", "none"))
        elif n.op == "call_function" and n.target in (torch.erf, torch.special.erf):
            env[n] = b.add(n.name, Erf(), [args[0]])
        elif n.op == "call_module" and torch_layers.is_composite(mods[n.target]):
            env[n] = torch_layers.module_composite(b, n.target.replace(".", "_"), mods[n.target], args[0],
                                                   lambda v: _constant(v, np.zeros(()), dtype))
        elif n.op == "call_module":
            op = _module_op(mods[n.target], b.shapes[args[0]], n.target)
            env[n] = args[0] if op is None else b.add(n.target.replace(".", "_"), op, [args[0]])
        elif n.op == "call_function" and n.target in _ACT_FUNCS:
            env[n] = b.add(n.name, _ACT_FUNCS[n.target](), [args[0]])
        elif _arith(n) in ("add", "sub"):
            x, y = _two_operands(n, args, kwargs, "other")
            # torch.add(x, y, alpha=a) = x + a y; sub: x - a y
            scale, scale_err = K.mul(np.asarray(float(n.kwargs.get("alpha", 1))), np.zeros(()),
                                     np.asarray(-1.0 if _arith(n) == "sub" else 1.0), np.zeros(()))
            if isinstance(x, str) and isinstance(y, str):
                if n.kwargs.get("alpha", 1) != 1:  # a scaled operand: its own rounding, then a plain sum
                    w, w_err = _constant(scale, scale_err, dtype)
                    y, scale = b.add(f"{n.name}_alpha", Scale(w, None, weight_err=w_err), [y]), np.asarray(1.0)
                env[n] = b.add(n.name, AddVars([1.0, float(scale)]), [x, y])
            elif isinstance(x, str):
                c, c_err = _constant(*K.mul(torch_layers.numeric(y), np.zeros(()), scale, scale_err), dtype)
                env[n] = b.add(n.name, Scale(None, c, bias_err=c_err), [x])
            else:
                c, c_err = _constant(torch_layers.numeric(x), np.zeros(()), dtype)
                w, w_err = _constant(scale, scale_err, dtype)
                env[n] = b.add(n.name, Scale(w, c, weight_err=w_err, bias_err=c_err), [y])
        elif _arith(n) in ("mul", "div"):
            x, y = _two_operands(n, args, kwargs, "other")
            divide = _arith(n) == "div"
            if divide and n.kwargs.get("rounding_mode") is not None:
                raise UnsupportedOperator("div", n.name, None, "a rounding mode")
            if divide and isinstance(y, str):  # x / y = x * (1 / y)
                inv = b.add(f"{n.name}_reciprocal", Reciprocal(), [y])
                if isinstance(x, str):
                    env[n] = b.add(n.name, Mul(), [x, inv])
                else:
                    c = torch_layers.numeric(x)
                    w, w_err = _constant(c, np.zeros(()), dtype)
                    env[n] = b.add(n.name, Scale(w, None, weight_err=w_err), [inv])
                continue
            if isinstance(x, str) and isinstance(y, str):
                env[n] = b.add(n.name, Square() if x == y else Mul(), [x] if x == y else [x, y])
                continue
            v, c = (x, y) if isinstance(x, str) else (y, x)
            c = torch_layers.numeric(c)
            c_err = np.zeros(())
            if divide:
                c, c_err = K.div(np.ones(()), np.zeros(()), c, np.zeros(()))
            w, w_err = _constant(c, c_err, dtype)
            env[n] = b.add(n.name, Scale(w, None, weight_err=w_err), [v])
        elif n.op == "call_function" and n.target is torch.flatten:
            env[n] = b.add(n.name, Reshape(_flattened(b.shapes[args[0]], *_flatten_dims(args, n.kwargs))), [args[0]])
        elif n.op == "call_method" and n.target == "size":
            s = b.shapes[args[0]]
            env[n] = s if len(args) == 1 else s[args[1]]
        elif n.op == "call_method" and n.target in ("view", "reshape", "flatten"):
            x = args[0]
            s = list(b.shapes[x])
            if n.target == "flatten":
                target = _flattened(s, *_flatten_dims(args, n.kwargs))
            else:
                dims = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
                target = list(dims)
                numel = int(torch.Size(s).numel())
                if -1 in target:
                    rest = int(torch.Size([d for d in target if d != -1]).numel())
                    target[target.index(-1)] = numel // rest
            env[n] = b.add(n.name, Reshape(target), [x])
        elif n.op == "call_method" and n.target in ("relu", "sigmoid", "tanh"):
            env[n] = b.add(n.name, {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}[n.target](), [args[0]])
        elif n.op == "call_function" and n.target is operator.getitem and isinstance(args[0], tuple):
            env[n] = args[0][args[1]]
        elif torch_layers._is(n, (operator.pow, torch.pow), ("pow",)) and len(args) == 2 and isinstance(args[1], int) \
                and 1 <= args[1] <= 16:
            env[n] = args[0] if args[1] == 1 else b.add(n.name, Power(args[1]), [args[0]])
        elif n.op == "call_function" and n.target is getattr and isinstance(args[0], tuple) \
                and args[1] in ("values", "indices"):
            env[n] = args[0][0 if args[1] == "values" else 1]  # torch.return_types of max / min
        elif n.op == "call_function" and n.target is getattr and args[1] == "shape":
            env[n] = tuple(b.shapes[args[0]])  # x.shape: the batch axis reads 1, which view/reshape keep
        elif torch_layers._is(n, (torch.clamp_min, torch.clamp_max), ("clamp_min", "clamp_max")):
            low = _target_name(n) == "clamp_min"
            limit = float(_two_operands(n, args, dict(n.kwargs), "min" if low else "max")[1])
            env[n] = _clip(b, n.name, args[0], limit if low else None, None if low else limit, dtype)
        elif n.op == "call_function" and n.target in (torch.sin, torch.cos):
            env[n] = b.add(n.name, Sin() if n.target is torch.sin else Cos(), [args[0]])
        elif (n.op == "call_function" and n.target in _MONOTONE) or (n.op == "call_method" and n.target in _MONOTONE):
            env[n] = b.add(n.name, _MONOTONE[n.target](), [args[0]])
        elif n.op == "call_function" and n.target is torch.reciprocal:
            env[n] = b.add(n.name, Reciprocal(), [args[0]])
        elif n.op == "call_function" and n.target in (torch.cat, torch.concat):
            env[n] = _cat(b, n, list(nested[0]), args[1] if len(args) > 1 else n.kwargs.get("dim", 0),
                          dtype)
        elif n.op == "call_function" and n.target in (F.leaky_relu, torch.nn.functional.leaky_relu):
            slope = args[1] if len(args) > 1 else n.kwargs.get("negative_slope", 0.01)
            env[n] = b.add(n.name, _leaky(slope, n.name), [args[0]])
        elif n.op == "call_function" and n.target in (operator.neg, torch.neg):
            env[n] = b.add(n.name, Scale(torch.tensor(-1.0, dtype=dtype, device="cpu"), None), [args[0]])
        elif torch_layers._is(n, (torch.clamp, torch.clip, F.hardtanh, F.relu6), ("clamp", "clip")):
            lo_c, hi_c = _clamp_limits(n.target, args, n.kwargs)
            env[n] = _clip(b, n.name, args[0], lo_c, hi_c, dtype)
        else:
            def const(v, err=None):
                return _constant(v, np.zeros(()) if err is None else err, dtype)
            value = torch_layers.function_rule(b, n, nested, const)
            if value is torch_layers.UNHANDLED:
                value = torch_functions.function_rule(b, n, nested, const)
            if value is torch_layers.UNHANDLED:
                raise UnsupportedOperator(_target_name(n), n.name, None)
            env[n] = value
    if not isinstance(output, str):
        raise UnsupportedOperator("output", "", None, "the module must return one tensor")
    graph = b.build(output)
    return _strip_batch_axis_view(graph, input_shape)


def _cat(b: GraphBuilder, n: fx.Node, parts: list, dim: int, dtype: torch.dtype) -> str:
    """``torch.cat`` of variables and constants (per sample: a constant's leading axis is the batch axis of 1)."""
    names = [p for p in parts if isinstance(p, str)]
    if not names:
        raise UnsupportedOperator("cat", n.name, None, "no variable among the parts")
    rank = len(b.shapes[names[0]])
    consts, errs = {}, {}
    for k, p in enumerate(parts):
        if isinstance(p, str):
            continue
        value = torch_layers.numeric(p)
        if value.ndim != rank or value.shape[0] != 1:
            raise UnsupportedOperator("cat", n.name, None, f"a constant of shape {tuple(value.shape)} beside "
                                      f"variables of per-sample shape {tuple(b.shapes[names[0]])} (batch axis 1)")
        consts[k], err = _constant(value, np.zeros(()), dtype)
        if err is not None:
            errs[k] = err
    return b.add(n.name, Concat(dim % rank, len(names), consts, errs), names)


def _strip_batch_axis_view(graph: Graph, input_shape: Sequence[int]) -> Graph:
    """Record the user-facing shape: callers pass ``[B, *input_shape]``, the IR adds the leading 1."""
    graph.user_input_shape = tuple(input_shape)
    return graph
