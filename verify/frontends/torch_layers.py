"""torch.fx rules beyond the core layers of ``verify.frontends.torch_frontend``, each mapped onto an existing op:
tensor indexing (Slice, Reshape; one constant index tensor: Gather), ``x @ C`` for a constant matrix (Dense),
``permute`` / ``transpose`` (Transpose), ``unsqueeze`` / ``squeeze`` (Reshape),
``abs``, the max / min of a variable and a constant or of two variables and ``amax`` / ``amin`` (ReLU composites),
``sum`` / ``mean`` over sample axes (ReduceSum),
``matmul`` / ``bmm`` of two variables (products and a sum), ``split`` / ``chunk`` (Slices), ``stack`` (Reshapes and
a Concat), ``avg_pool2d`` / ``max_pool2d``, nearest ``interpolate``; modules ConvTranspose2d, Upsample, one-slope
PReLU, AdaptiveAvgPool2d to a divisor of the input, LayerNorm, SiLU, ELU, SELU, Hardsigmoid and Hardswish
(``verify.frontends.composites``); Softplus (beta 1, torch's threshold as an allowance), ``floor`` / ``ceil``.

Per-sample shapes keep the batch axis as a leading 1, so a torch dim ``d`` is the same per-sample axis; an index or
a dim on the batch axis itself is refused by name."""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from verify.errors import UnsupportedOperator
from verify.frontends import composites
from verify.graph import GraphBuilder
from verify.ops import (
    AvgPool2d,
    Concat,
    Floor,
    Gather,
    LeakyRelu,
    MaxPool2d,
    ReduceSum,
    Reshape,
    Slice,
    Softplus,
    Transpose,
    UpsampleNearest,
)
from verify.ops.base import Op
from verify.ops.linear import ConvTranspose2d, Dense

_MAX_POOLS = tuple(f for f in (F.max_pool2d, getattr(torch, "max_pool2d", None)) if f is not None)
_AVG_POOLS = tuple(f for f in (F.avg_pool2d, getattr(torch, "avg_pool2d", None)) if f is not None)
class Refused:
    """A traced value no rule can bound (the indices of ``x.max(dim)``): using it is refused by name."""

    def __init__(self, what: str):
        self.what = what


UNHANDLED = object()
"""Returned by :func:`function_rule` / :func:`module_op` for nodes that are not theirs."""


def numeric(v) -> np.ndarray:
    """A constant of the trace (number or tensor) in float64."""
    return np.asarray(v.detach().cpu().double() if isinstance(v, torch.Tensor) else v, dtype=np.float64)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _meta(shape) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _batch_safe(what: str, name: str, dims) -> None:
    if any(d == 0 for d in dims):
        raise UnsupportedOperator(what, name, None, "an index or dim on the batch axis")


def _index(b: GraphBuilder, name: str, x: str, idx) -> str:
    """``x[idx]`` with slices (positive steps), integers, ``None`` and ``...``: a Slice, then a Reshape; one constant
    tensor index with ``:`` / ``...`` elsewhere (``x[:, idx]``, repeats allowed, or a boolean mask): a Gather."""
    shape = b.shapes[x]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.Tensor) for i in idx):
        return _tensor_index(b, name, x, idx)
    if any(not (isinstance(i, slice | int) or i is None or i is Ellipsis) for i in idx):
        raise UnsupportedOperator("getitem", name, None, "this index")
    if idx and idx[0] is None:  # a new axis in front of the batch axis
        raise UnsupportedOperator("getitem", name, None, "an index or dim on the batch axis")
    real = [i for i in idx if i is not None and i is not Ellipsis]
    if Ellipsis in idx:
        at = idx.index(Ellipsis)
        fill = len(shape) - len(real)
        idx = idx[:at] + (slice(None),) * fill + idx[at + 1:]
    axes = [i for i in idx if i is not None]
    axes += [slice(None)] * (len(shape) - len(axes))
    if axes[0] != slice(None):
        raise UnsupportedOperator("getitem", name, None, "an index or dim on the batch axis")
    slices = []
    for i, dim in zip(axes, shape, strict=True):
        if isinstance(i, int):
            k = i + dim if i < 0 else i
            if not 0 <= k < dim:
                raise UnsupportedOperator("getitem", name, None, f"index {i} out of range for an axis of {dim}")
            slices.append(slice(k, k + 1, 1))
        else:
            start, stop, step = i.indices(dim)
            if step <= 0:
                raise UnsupportedOperator("getitem", name, None, "negative steps")
            slices.append(slice(start, stop, step))
    out = b.add(name, Slice(slices), [x])
    target = tuple(_meta(shape)[idx].shape)
    return out if target == b.shapes[out] else b.add(f"{name}_reshape", Reshape(target), [out])


def _tensor_index(b: GraphBuilder, name: str, x: str, idx: tuple) -> str:
    """``x[:, ..., t, :, ...]`` for one constant integer (or boolean) tensor ``t``: torch keeps that axis's place and
    puts ``t``'s shape there, which is ONNX Gather's result too."""
    shape = b.shapes[x]
    pos = [k for k, i in enumerate(idx) if isinstance(i, torch.Tensor)]
    others = [i for k, i in enumerate(idx) if k != pos[0]]
    if len(pos) > 1 or any(not (i is Ellipsis or i == slice(None)) for i in others):
        raise UnsupportedOperator("getitem", name, None, "a tensor index beside others than ':' and '...' "
                                  "(one tensor index with ':' elsewhere is supported)")
    k = pos[0]
    axis = len(shape) - (len(idx) - k) if Ellipsis in idx[:k] else k
    _batch_safe("getitem", name, [axis])
    t = idx[k].detach().cpu()
    if t.dtype == torch.bool:
        if tuple(t.shape) != (shape[axis],):
            raise UnsupportedOperator("getitem", name, None, f"a mask of shape {tuple(t.shape)} for an axis of "
                                      f"{shape[axis]}")
        t = t.nonzero().flatten()
    if t.is_floating_point() or t.is_complex():
        raise UnsupportedOperator("getitem", name, None, f"a {t.dtype} index tensor")
    t = torch.where(t < 0, t + shape[axis], t).to(torch.long)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= shape[axis]):
        raise UnsupportedOperator("getitem", name, None, f"an index out of range for an axis of {shape[axis]}")
    return b.add(name, Gather(axis, t), [x])


def matmul_constant(b: GraphBuilder, name: str, x: str, w: np.ndarray, const: composites.Constant) -> str:
    """``x @ W`` for a constant matrix ``W [k, m]`` (``x @ C.T`` of ml4acopf's incidence matrices): a dense layer on
    the last axis, with ``W``'s distance to its float64 reading carried."""
    k = b.shapes[x][-1]
    if w.ndim != 2 or w.shape[0] != k:
        raise UnsupportedOperator("matmul", name, None, f"a constant of shape {tuple(w.shape)} (a matrix with {k} "
                                  "rows is supported)")
    weight, err = const(np.ascontiguousarray(w.T))
    return b.add(name, Dense(weight, None, weight_err=err), [x])


def _dims(args: list, kwargs: dict, key: str = "dims") -> list[int]:
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], tuple | list):
        return list(rest[0])
    return list(rest) if rest else list(kwargs.get(key, ()))


def _permute(b: GraphBuilder, name: str, x: str, perm: list[int]) -> str:
    rank = len(b.shapes[x])
    perm = [p % rank for p in perm]
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise UnsupportedOperator("permute", name, None, "a permutation that moves the batch axis")
    return b.add(name, Transpose(perm), [x])


def _reshaped(b: GraphBuilder, what: str, name: str, x: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    target = tuple(fn(_meta(b.shapes[x])).shape)
    if not target or target[0] != 1:
        raise UnsupportedOperator(what, name, None, "an index or dim on the batch axis")
    return x if target == b.shapes[x] else b.add(name, Reshape(target), [x])


def _split(b: GraphBuilder, name: str, x: str, sizes, dim: int, chunks: bool) -> tuple[str, ...]:
    shape = b.shapes[x]
    axis = dim % len(shape)
    _batch_safe("split", name, [axis])
    parts = torch.chunk(_meta(shape), sizes, axis) if chunks else torch.split(_meta(shape), sizes, axis)
    outs, start = [], 0
    for k, p in enumerate(parts):
        n = p.shape[axis]
        sl = [slice(None)] * len(shape)
        sl[axis] = slice(start, start + n, 1)
        outs.append(b.add(f"{name}_{k}", Slice(sl), [x]))
        start += n
    return tuple(outs)


def _stack(b: GraphBuilder, name: str, xs: list, dim: int) -> str:
    if not xs or not all(isinstance(v, str) for v in xs):
        raise UnsupportedOperator("stack", name, None, "only variables can be stacked")
    shape = b.shapes[xs[0]]
    axis = dim % (len(shape) + 1)
    _batch_safe("stack", name, [axis])
    target = tuple(shape[:axis]) + (1,) + tuple(shape[axis:])
    parts = [b.add(f"{name}_unsqueeze", Reshape(target), [v]) for v in xs]
    return b.add(name, Concat(axis, len(parts)), parts)


def _upsample(name: str, shape, scale, size, mode, what: str = "interpolate") -> UpsampleNearest:
    if mode != "nearest":
        raise UnsupportedOperator(what, name, None, f"mode {mode} (only nearest)")
    spatial = shape[2:]
    if size is not None:
        size = _pair(size) if len(spatial) == 2 else tuple(size) if isinstance(size, tuple | list) else (size,)
        factors = [s / d for s, d in zip(size, spatial, strict=True)]
    elif scale is not None:
        factors = list(scale) if isinstance(scale, tuple | list) else [scale] * len(spatial)
    else:
        raise UnsupportedOperator(what, name, None, "neither size nor scale_factor")
    if any(f < 1 or f != int(f) for f in factors):
        raise UnsupportedOperator(what, name, None, f"scales {factors} (only integers >= 1)")
    return UpsampleNearest([1, 1, *(int(f) for f in factors)])


def _pool(kind: str, name: str, args: list, kwargs: dict) -> Op:
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    k = _pair(arg(1, "kernel_size"))
    stride = _pair(arg(2, "stride") or k)
    pad = _pair(arg(3, "padding", 0))
    if kind == "max":
        if _pair(arg(4, "dilation", 1)) != (1, 1) or arg(5, "ceil_mode", False) or arg(6, "return_indices", False):
            raise UnsupportedOperator("max_pool2d", name, None, "dilation/ceil_mode/indices")
        return MaxPool2d(k, stride, pad)
    if arg(4, "ceil_mode", False) or arg(6, "divisor_override") is not None:
        raise UnsupportedOperator("avg_pool2d", name, None, "ceil_mode/divisor_override")
    return AvgPool2d(k, stride, pad, bool(arg(5, "count_include_pad", True)))


_REDUCTIONS = {"sum": (torch.sum,), "mean": (torch.mean,), "amax": (torch.amax,), "amin": (torch.amin,)}


def reduction_dims(b: GraphBuilder, what: str, name: str, x: str, dim) -> list[int]:
    """The per-sample axes of a reduction's ``dim`` (an int or a sequence); none given, or the batch axis, is refused
    by name (a reduction over the batch axis mixes samples)."""
    rank = len(b.shapes[x])
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, tuple | list) else None
    if not dims or any(not isinstance(d, int) for d in dims):
        raise UnsupportedOperator(what, name, None, "give dim: a reduction over the batch axis mixes samples")
    dims = [d % rank for d in dims]
    _batch_safe(what, name, dims)
    return dims


def _reduction(b: GraphBuilder, what: str, name: str, x: str, args: list, kwargs: dict) -> str:
    """``x.sum / mean / amax / amin(dim, keepdim)`` over per-sample axes: ReduceSum, or a max / min tree."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    if kwargs.get("dtype") is not None:
        raise UnsupportedOperator(what, name, None, "a dtype argument")
    dims = reduction_dims(b, what, name, x, dim)
    if what in ("sum", "mean"):
        return b.add(name, ReduceSum(dims, keep, what == "mean"), [x])
    return composites.reduce_max(b, name, x, dims, keep, what == "amax")


def _is(n: fx.Node, funcs=(), methods=()) -> bool:
    return (n.op == "call_function" and n.target in funcs) or (n.op == "call_method" and n.target in methods)


def function_rule(b: GraphBuilder, n: fx.Node, args: list, const: composites.Constant):
    """The graph value (a node name or a tuple of them) of the fx node ``n``, or ``UNHANDLED``."""
    kwargs = dict(n.kwargs)
    x = args[0] if args else None
    if not isinstance(x, str) and not (n.target in (torch.stack,) and args):
        return UNHANDLED
    name = n.name
    if n.op == "call_function" and n.target is operator.getitem:
        return _index(b, name, x, args[1])
    if n.op == "call_function" and n.target is F.silu:
        return composites.silu(b, name, x)
    if n.op == "call_function" and n.target is F.elu:
        return composites.elu(b, name, x, float(args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)), const)
    if n.op == "call_function" and n.target is F.selu:
        return composites.selu(b, name, x, SELU_ALPHA, SELU_SCALE, const)
    if n.op == "call_function" and n.target is F.hardsigmoid:
        return composites.hard_sigmoid(b, name, x, 1.0 / 6.0, 0.5, const)
    if n.op == "call_function" and n.target is F.hardswish:
        return composites.hard_swish(b, name, x, const)
    if n.op == "call_function" and n.target is F.softplus:
        beta = args[1] if len(args) > 1 else kwargs.get("beta", 1.0)
        threshold = args[2] if len(args) > 2 else kwargs.get("threshold", 20.0)
        return b.add(name, _softplus(name, beta, threshold), [x])
    if _is(n, (torch.floor, torch.ceil), ("floor", "ceil")):
        return b.add(name, Floor("ceil" if n.target in (torch.ceil, "ceil") else "floor"), [x])
    if _is(n, (torch.abs,), ("abs",)):
        return composites.absolute(b, name, x, const(np.zeros(()))[0].dtype)
    if _is(n, (torch.max, torch.min), ("max", "min")) and (isinstance(args[1] if len(args) > 1 else None, int)
                                                         or "dim" in kwargs):
        # the dim overload: (values, indices); the indices are not a function the engine bounds
        dims = reduction_dims(b, str(getattr(n.target, "__name__", n.target)), name, x,
                              args[1] if len(args) > 1 else kwargs["dim"])
        keep = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        largest = n.target in (torch.max, "max")
        return composites.reduce_max(b, name, x, dims, keep, largest), Refused(f"{n.target}'s indices")
    if _is(n, (torch.maximum, torch.minimum, torch.max, torch.min), ("maximum", "minimum")) and len(args) == 2:
        largest = n.target in (torch.maximum, torch.max, "maximum")
        y = args[1]
        if isinstance(y, str):
            return composites.max_of_two(b, name, x, y, largest)
        if isinstance(y, int | float) or (isinstance(y, torch.Tensor) and not y.requires_grad):
            c = numeric(y)
            return (composites.maximum if largest else composites.minimum)(b, name, x, c, const)
        return UNHANDLED
    for what, funcs in _REDUCTIONS.items():
        if _is(n, funcs, (what,)):
            return _reduction(b, what, name, x, args, kwargs)
    if _is(n, (torch.permute,), ("permute",)):
        return _permute(b, name, x, _dims(args, kwargs))
    if _is(n, (torch.transpose,), ("transpose",)):
        d0, d1 = (args[1], args[2]) if len(args) > 2 else (kwargs["dim0"], kwargs["dim1"])
        perm = list(range(len(b.shapes[x])))
        d0, d1 = d0 % len(perm), d1 % len(perm)
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return _permute(b, name, x, perm)
    if _is(n, (torch.unsqueeze,), ("unsqueeze",)):
        d = args[1] if len(args) > 1 else kwargs["dim"]
        _batch_safe("unsqueeze", name, [d % (len(b.shapes[x]) + 1)])
        return _reshaped(b, "unsqueeze", name, x, lambda t: t.unsqueeze(d))
    if _is(n, (torch.squeeze,), ("squeeze",)):
        d = args[1] if len(args) > 1 else kwargs.get("dim")
        shape = b.shapes[x]
        dims = [i for i, s in enumerate(shape) if s == 1 and i > 0] if d is None else \
            [v % len(shape) for v in (d if isinstance(d, tuple | list) else (d,))]
        _batch_safe("squeeze", name, dims)
        return _reshaped(b, "squeeze", name, x, lambda t: t.squeeze(tuple(dims)) if dims else t)
    if _is(n, (torch.matmul, operator.matmul, torch.bmm), ("matmul", "bmm")) and isinstance(args[1], str):
        return composites.matmul_vars(b, name, x, args[1])
    if _is(n, (torch.matmul, operator.matmul), ("matmul",)) and isinstance(args[1], torch.Tensor):
        return matmul_constant(b, name, x, numeric(args[1]), const)
    if _is(n, (torch.split,), ("split",)) or _is(n, (torch.chunk,), ("chunk",)):
        chunks = n.target in (torch.chunk, "chunk")
        sizes = args[1] if len(args) > 1 else kwargs.get("chunks" if chunks else "split_size_or_sections")
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        return _split(b, name, x, sizes, dim, chunks)
    if n.op == "call_function" and n.target is torch.stack:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        return _stack(b, name, list(args[0]), dim)
    if n.op == "call_function" and n.target in (F.interpolate, F.upsample):
        def arg(i, key):
            return args[i] if len(args) > i else kwargs.get(key)
        op = _upsample(name, b.shapes[x], arg(2, "scale_factor"), arg(1, "size"), arg(3, "mode") or "nearest")
        return b.add(name, op, [x])
    if n.op == "call_function" and n.target in _MAX_POOLS + _AVG_POOLS:
        kind = "max" if n.target in _MAX_POOLS else "avg"
        return b.add(name, _pool(kind, name, args, kwargs), [x])
    return UNHANDLED


def module_op(m: nn.Module, in_shape: tuple[int, ...], name: str):
    """The op of a module not among the core layers, or ``UNHANDLED``."""
    if isinstance(m, nn.ConvTranspose2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedOperator("ConvTranspose2d", name, None, "padding mode/strings")
        return ConvTranspose2d(m.weight, m.bias, _pair(m.stride), _pair(m.padding), _pair(m.output_padding),
                               _pair(m.dilation), m.groups)
    if isinstance(m, nn.Upsample):
        return _upsample(name, in_shape, m.scale_factor, m.size, m.mode, "Upsample")
    if isinstance(m, nn.PReLU):
        if m.weight.numel() != 1:
            raise UnsupportedOperator("PReLU", name, None, "one slope per channel")
        slope = float(m.weight.detach().reshape(()))
        if not 0.0 <= slope <= 1.0:
            raise UnsupportedOperator("PReLU", name, None, f"slope {slope:g} outside [0, 1]")
        return LeakyRelu(slope)
    if isinstance(m, nn.Softplus):
        return _softplus(name, m.beta, m.threshold)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        h, w = in_shape[-2:]
        oh, ow = _pair(m.output_size)
        oh, ow = oh or h, ow or w
        if h % oh or w % ow:
            raise UnsupportedOperator("AdaptiveAvgPool2d", name, None, "an output size that does not divide the input")
        k = (h // oh, w // ow)
        return AvgPool2d(k, k, (0, 0), True)
    return UNHANDLED


def _softplus(name: str, beta, threshold) -> Softplus:
    if beta != 1:
        raise UnsupportedOperator("Softplus", name, None, f"beta {beta} (only 1)")
    return Softplus(threshold=float(threshold))


# torch's SELU constants (Klambauer et al., 2017)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def is_composite(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm | nn.SiLU | nn.ELU | nn.SELU | nn.Hardsigmoid | nn.Hardswish)


def module_composite(b: GraphBuilder, name: str, m: nn.Module, x: str, const: composites.Constant):
    """Modules written as several graph nodes (LayerNorm), or ``UNHANDLED``."""
    if isinstance(m, nn.LayerNorm):
        if getattr(m, "bias", None) is not None and m.weight is None:
            raise UnsupportedOperator("LayerNorm", name, None, "a bias without a weight")
        return composites.layer_norm(b, name, x, len(m.normalized_shape), const(np.asarray(m.eps, dtype=np.float64)),
                                     m.weight, getattr(m, "bias", None))
    if isinstance(m, nn.SiLU):
        return composites.silu(b, name, x)
    if isinstance(m, nn.ELU):
        return composites.elu(b, name, x, float(m.alpha), const)
    if isinstance(m, nn.SELU):
        return composites.selu(b, name, x, SELU_ALPHA, SELU_SCALE, const)
    if isinstance(m, nn.Hardsigmoid):
        return composites.hard_sigmoid(b, name, x, 1.0 / 6.0, 0.5, const)
    if isinstance(m, nn.Hardswish):
        return composites.hard_swish(b, name, x, const)
    return UNHANDLED
