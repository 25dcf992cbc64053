"""torch.fx rules for tensor methods and functions that are compositions of existing ops: ``neg`` / ``sin`` /
``cos`` / ``erf`` / ``sign`` / ``square`` / ``rsqrt`` / ``log1p`` / ``expm1`` / ``round`` (functions and methods),
identities
(``contiguous``, ``detach``, ``clone``, ``dropout`` in evaluation), ``F.pad`` (constant), ``expand``, ``repeat``,
``flip`` / ``roll`` (Gathers), ``torch.where`` with a constant condition (``m a + (1 - m) b``), ``F.logsigmoid``
(``-softplus(-x)``), ``F.softsign``, ``F.mish``, ``F.celu`` (``verify.frontends.composites``), ``F.tanhshrink``,
and the 2-norm / variance / standard deviation over sample axes (``sqrt(relu(sum x^2))``, ``sum (x - m)^2 / (n -
correction)``). Each identity holds in real arithmetic; the ops carry their own rounding allowances."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from verify.errors import UnsupportedOperator
from verify.frontends import composites
from verify.frontends.torch_layers import UNHANDLED, _batch_safe, _dims, _is, numeric, reduction_dims
from verify.graph import GraphBuilder
from verify.ops import (
    AddVars,
    Concat,
    Cos,
    Erf,
    Exp,
    Floor,
    Gather,
    Log,
    Pad,
    Reciprocal,
    ReduceSum,
    Relu,
    Scale,
    Sign,
    Sin,
    Softplus,
    Sqrt,
    Square,
    Tanh,
)
from verify.ops.shape import Expand

_UNARY = {"neg": None, "sin": Sin, "cos": Cos, "erf": Erf, "sign": Sign, "square": Square}


def _arg(args: list, kwargs: dict, i: int, key: str, default=None):
    return args[i] if len(args) > i else kwargs.get(key, default)


def _scale(b: GraphBuilder, name: str, x: str, w: float | None, c: float | None, const) -> str:
    """``w x + c`` with the constants' distance to their exact values carried."""
    wt, we = (None, None) if w is None else const(np.asarray(w, dtype=np.float64))
    ct, ce = (None, None) if c is None else const(np.asarray(c, dtype=np.float64))
    return b.add(b.fresh(name), Scale(wt, ct, we, ce), [x])


def _gather_dims(b: GraphBuilder, name: str, x: str, dims: list[int], index) -> str:
    """A Gather along each of ``dims`` with the permutation ``index(size, position)`` of that axis."""
    rank = len(b.shapes[x])
    dims = [d % rank for d in dims]
    _batch_safe(name, name, dims)
    for k, d in enumerate(dims):
        size = b.shapes[x][d]
        idx = torch.as_tensor([index(size, k, i) for i in range(size)], dtype=torch.long)
        x = b.add(b.fresh(f"{name}_gather{d}"), Gather(d, idx), [x])
    return x


def _where(b: GraphBuilder, name: str, cond, x, y, const) -> str:
    if isinstance(cond, str) or not isinstance(cond, torch.Tensor):
        raise UnsupportedOperator("where", name, None, "a condition that depends on the input")
    x, y = (v if isinstance(v, str) else (numeric(v), None) for v in (x, y))
    shapes = [b.shapes[v] if isinstance(v, str) else v[0].shape for v in (x, y)]
    shape = tuple(np.broadcast_shapes(tuple(cond.shape), *shapes))
    if len(shape) != len(b.shapes[x if isinstance(x, str) else y]) or shape[0] != 1:
        raise UnsupportedOperator("where", name, None, "a condition that broadcasts over the batch axis")
    mask = np.broadcast_to(cond.detach().cpu().numpy().astype(bool), shape)
    return composites.select(b, name, mask, x, y, const)


def _sum_of_squares(b: GraphBuilder, name: str, x: str, dims: list[int], keep: bool) -> str:
    sq = b.add(b.fresh(f"{name}_square"), Square(), [x])
    return b.add(b.fresh(f"{name}_sum"), ReduceSum(dims, keep), [sq])


def _sqrt_nonneg(b: GraphBuilder, name: str, s: str) -> str:
    """``sqrt(s)`` of a sum of squares: ``relu(s) = s`` takes a lower bound that allowances pushed below 0 back."""
    return b.add(b.fresh(name), Sqrt(), [b.add(b.fresh(f"{name}_nonneg"), Relu(), [s])])


def _variance(b: GraphBuilder, name: str, x: str, args: list, kwargs: dict, const) -> str:
    dims = reduction_dims(b, "var", name, x, _arg(args, kwargs, 1, "dim"))
    keep = bool(kwargs.get("keepdim", False))
    correction = kwargs.get("correction")
    if correction is None:
        correction = 1 if kwargs.get("unbiased", True) else 0
    n = int(np.prod([b.shapes[x][d] for d in dims]))
    if n - correction <= 0:
        raise UnsupportedOperator("var", name, None, f"{n} values with correction {correction}")
    mean = b.add(b.fresh(f"{name}_mean"), ReduceSum(dims, True, True), [x])
    centred = b.add(b.fresh(f"{name}_centred"), AddVars([1.0, -1.0]),
                    [x, b.add(b.fresh(f"{name}_spread"), Expand(b.shapes[x]), [mean])])
    total = _sum_of_squares(b, name, centred, dims, keep)
    w, we = const(np.asarray(1.0 / (n - correction)), np.asarray(np.finfo(np.float64).eps / (n - correction)))
    return b.add(b.fresh(f"{name}_var"), Scale(w, None, weight_err=we), [total])


def function_rule(b: GraphBuilder, n: fx.Node, args: list, const):
    """The graph value of the fx node ``n``, or ``UNHANDLED``. ``const(value[, error])``: a float64 constant in
    the model's precision with the bound on its distance to the exact value."""
    kwargs = dict(n.kwargs)
    x = args[0] if args else None
    if not isinstance(x, str):
        if n.op == "call_function" and n.target is torch.where and len(args) == 3:
            return _where(b, n.name, *args, const)
        return UNHANDLED
    name = n.name
    for what, op in _UNARY.items():
        if _is(n, (getattr(torch, what),), (what,)):
            if op is None:
                return _scale(b, name, x, -1.0, None, const)
            return b.add(b.fresh(name), op(), [x])
    if _is(n, (torch.clone,), ("contiguous", "detach", "clone")):
        return x
    if _is(n, (F.dropout,)):
        if _arg(args, kwargs, 2, "training", True):
            raise UnsupportedOperator("dropout", name, None, "training=True (random): trace the module in eval()")
        return x
    if _is(n, (torch.rsqrt,), ("rsqrt",)):
        return b.add(b.fresh(name), Reciprocal(), [b.add(b.fresh(f"{name}_sqrt"), Sqrt(), [x])])
    if _is(n, (torch.log1p,), ("log1p",)):
        return b.add(b.fresh(name), Log(), [_scale(b, f"{name}_plus1", x, None, 1.0, const)])
    if _is(n, (torch.expm1,), ("expm1",)):
        return _scale(b, name, b.add(b.fresh(f"{name}_exp"), Exp(), [x]), None, -1.0, const)
    if _is(n, (F.logsigmoid,)):
        neg = _scale(b, f"{name}_neg", x, -1.0, None, const)
        return _scale(b, name, b.add(b.fresh(f"{name}_softplus"), Softplus(), [neg]), -1.0, None, const)
    if _is(n, (F.softsign,)):
        return composites.softsign(b, name, x, const)
    if _is(n, (F.mish,)):
        return composites.mish(b, name, x)
    if _is(n, (F.celu,)):
        return composites.celu(b, name, x, float(_arg(args, kwargs, 1, "alpha", 1.0)), const)
    if _is(n, (torch.round,), ("round",)):
        if _arg(args, kwargs, 1, "decimals", 0):
            raise UnsupportedOperator("round", name, None, "decimals")
        return b.add(b.fresh(name), Floor(mode="round"), [x])
    if _is(n, (F.tanhshrink,)):
        return b.add(b.fresh(name), AddVars([1.0, -1.0]), [x, b.add(b.fresh(f"{name}_tanh"), Tanh(), [x])])
    if _is(n, (F.pad,)):
        pads, mode = _arg(args, kwargs, 1, "pad"), _arg(args, kwargs, 2, "mode", "constant")
        value = _arg(args, kwargs, 3, "value", None)
        if mode != "constant" or any(p < 0 for p in pads):
            raise UnsupportedOperator("pad", name, None, f"mode {mode!r} / negative pads")
        if len(pads) // 2 >= len(b.shapes[x]):
            raise UnsupportedOperator("pad", name, None, "padding the batch axis")
        return b.add(b.fresh(name), Pad(list(pads), float(value or 0.0)), [x])
    if _is(n, (), ("expand",)):
        sizes, shape = _dims(args, kwargs), b.shapes[x]
        target = [s if t == -1 else int(t) for s, t in zip(shape, sizes[len(sizes) - len(shape):], strict=True)]
        if len(sizes) != len(shape) or target[0] != shape[0]:
            raise UnsupportedOperator("expand", name, None, "new axes or the batch axis")
        return x if tuple(target) == shape else b.add(b.fresh(name), Expand(target), [x])
    if _is(n, (), ("repeat",)):
        reps = _dims(args, kwargs)
        if len(reps) != len(b.shapes[x]) or reps[0] != 1 or any(r < 1 for r in reps):
            raise UnsupportedOperator("repeat", name, None, "new axes or copies along the batch axis")
        for d, r in enumerate(reps):
            if r > 1:
                x = b.add(b.fresh(f"{name}_repeat{d}"), Concat(d, r), [x] * r)
        return x
    if _is(n, (torch.flip,), ("flip",)):
        dims = _dims(args, kwargs) if n.op == "call_method" else list(_arg(args, kwargs, 1, "dims"))
        return _gather_dims(b, name, x, dims, lambda size, k, i: size - 1 - i)
    if _is(n, (torch.roll,), ("roll",)):
        shifts, dims = _arg(args, kwargs, 1, "shifts"), _arg(args, kwargs, 2, "dims")
        if dims is None:
            raise UnsupportedOperator("roll", name, None, "a roll of the flattened tensor (give dims)")
        shifts = [shifts] if isinstance(shifts, int) else list(shifts)
        dims = [dims] if isinstance(dims, int) else list(dims)
        return _gather_dims(b, name, x, dims, lambda size, k, i: (i - shifts[k]) % size)
    if _is(n, (torch.norm,), ("norm",)):
        p = _arg(args, kwargs, 1, "p", 2)
        if p not in (2, 2.0, "fro"):
            raise UnsupportedOperator("norm", name, None, f"p = {p} (only 2)")
        dims = reduction_dims(b, "norm", name, x, _arg(args, kwargs, 2, "dim"))
        keep = bool(_arg(args, kwargs, 3, "keepdim", False))
        return _sqrt_nonneg(b, name, _sum_of_squares(b, name, x, dims, keep))
    if _is(n, (torch.var,), ("var",)):
        return _variance(b, name, x, args, kwargs, const)
    if _is(n, (torch.std,), ("std",)):
        return _sqrt_nonneg(b, name, _variance(b, name, x, args, kwargs, const))
    return UNHANDLED
