"""Shared parts of the ONNX frontend: the conversion context (builder, opset, precision, folded constants and their
error bounds) and attribute / constant-input helpers used by both the variable-node handlers and constant folding."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from verify.errors import ModelError, ShapeError, UnsupportedOperator
from verify.frontends import constants as K
from verify.graph import GraphBuilder

Value = np.ndarray | str  # a folded constant, or the name of an IR node


class Ctx:
    def __init__(self, builder: GraphBuilder, opset: int, dtype: torch.dtype):
        self.b, self.opset, self.dtype = builder, opset, dtype
        self.values: dict[str, Value] = {}
        self.errs = K.Errors()
        # id(t) -> (t, its float64 value, that value's error bound or None): for ops computed in float64 later
        self.precise: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def t(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.array(a, dtype=np.float64), dtype=self.dtype, device="cpu")

    def err(self, a: np.ndarray | None) -> np.ndarray | None:
        """Error bound of a folded constant (``None``: exact as stored)."""
        return self.errs.get(a)

    def param(self, a: np.ndarray, err: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A constant in the model's precision and the bound on its distance to the exact value (its own
        error ``err`` plus the rounding of the cast), or ``None`` when it is exact."""
        t = self.t(a)
        e = K.cast_error(a, t.double().numpy())
        if err is not None:
            e = e + np.broadcast_to(err, e.shape)
        if not np.any(e > 0):
            return t, None
        if self.dtype != torch.float64:  # the float64 value keeps its own (much smaller) error
            own = None if err is None or not np.any(err > 0) else \
                torch.tensor(np.broadcast_to(err, t.shape), dtype=torch.float64, device="cpu")
            self.precise[id(t)] = (t, torch.tensor(np.array(a, dtype=np.float64), device="cpu"), own)
        # the error bound is rounded up to the model's precision
        et = torch.tensor(e, dtype=torch.float64, device="cpu")
        return t, torch.nextafter(et.to(self.dtype), torch.tensor(float("inf"), dtype=self.dtype, device="cpu"))

    def shape(self, v: Value) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, np.ndarray) else self.b.shapes[v]


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def const_input(ctx: Ctx, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
    if i >= len(node.input) or node.input[i] == "":
        return None
    v = ctx.values[node.input[i]]
    if not isinstance(v, np.ndarray):
        raise UnsupportedOperator(node.op_type, node.name, ctx.opset, f"{what} must be a constant")
    return v


def axes_of(ctx, node, attrs, idx: int) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    a = const_input(ctx, node, idx, "axes")
    return None if a is None else [int(v) for v in a]


def resolve_reshape(in_shape, target, allowzero=0) -> tuple[int, ...]:
    target = [int(t) for t in target]
    out = [in_shape[i] if (t == 0 and not allowzero and i < len(in_shape)) else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        raise ShapeError(f"reshape target {target} has more than one -1")
    n = int(np.prod(in_shape))
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1]))
        if rest == 0 or n % rest:
            raise ShapeError(f"cannot reshape {tuple(in_shape)} to {target}")
        out[out.index(-1)] = n // rest
    if int(np.prod(out)) != n:
        raise ShapeError(f"cannot reshape {tuple(in_shape)} to {target}")
    return tuple(out)


def slices_of(ctx: Ctx, node: onnx.NodeProto, ins: list, shape: tuple[int, ...]) -> list[slice]:
    """ONNX Slice (attribute form before opset 10, inputs after) as one python slice per axis, with ONNX's
    clamping: negative starts / ends count from the end, out-of-range values are clamped, and a negative step's
    end below 0 means 'through index 0'."""
    attrs = attrs_of(node)
    if ctx.opset >= 10:
        def const(i: int, what: str):
            if len(ins) <= i or ins[i] is None:
                return None
            if isinstance(ins[i], str):
                raise UnsupportedOperator("Slice", node.name, ctx.opset, f"{what} that depend on the input")
            return [int(v) for v in np.asarray(ins[i]).reshape(-1)]
        starts, ends = const(1, "starts"), const(2, "ends")
        axes, steps = const(3, "axes"), const(4, "steps")
    else:
        starts, ends = [int(v) for v in attrs["starts"]], [int(v) for v in attrs["ends"]]
        axes, steps = attrs.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a %= len(shape)
        d = shape[a]
        if st == 0:
            raise ModelError(f"Slice node '{node.name}': step 0")
        s, e = (s + d if s < 0 else s), (e + d if e < 0 else e)
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        idx[a] = slice(s, None if e < 0 else e, st)
    return idx


def split_sizes(ctx: Ctx, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, list[int]]:
    """``(axis, sizes)`` of an ONNX Split (sizes from the input at opset 13+, the attribute before, equal parts
    otherwise; opset 18's ``num_outputs`` makes the last part smaller)."""
    attrs = attrs_of(node)
    axis = int(attrs.get("axis", 0)) % len(shape)
    sizes = None
    if ctx.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = const_input(ctx, node, 1, "Split sizes")
    elif "split" in attrs:
        sizes = attrs["split"]
    n = len(node.output)
    d = shape[axis]
    if sizes is None:
        if "num_outputs" in attrs:
            k = -(-d // n)
            sizes = [min(k, d - i * k) for i in range(n)]
        elif d % n:
            raise ShapeError(f"Split node '{node.name}': axis of {d} does not split into {n} equal parts")
        else:
            sizes = [d // n] * n
    sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
    if len(sizes) != n or sum(sizes) != d or min(sizes) < 0:
        raise ShapeError(f"Split node '{node.name}': sizes {sizes} do not cut an axis of {d} into {n}")
    return axis, sizes


def reduce_axes(ctx: Ctx, node: onnx.NodeProto, x: str, axes_input_since: int) -> list[int] | None:
    """The axes of an ONNX Reduce* node (an input from opset ``axes_input_since``, an attribute before; none means
    all), or None for a no-op (``noop_with_empty_axes``)."""
    attrs = attrs_of(node)
    shape = ctx.shape(x)
    axes = axes_of(ctx, node, {}, 1) if ctx.opset >= axes_input_since else attrs.get("axes")
    if axes is None or len(axes) == 0:
        if attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(len(shape)))
    return [int(a) % len(shape) for a in axes]


def unsupported(ctx: Ctx, node: onnx.NodeProto, why: str) -> UnsupportedOperator:
    return UnsupportedOperator(node.op_type, node.name, ctx.opset, why)


def exact_constants(ctx: Ctx, node, ins: list) -> None:
    """Refuse constant inputs that carry an error bound (computed by folding): these rules read them as exact."""
    if any(not isinstance(v, str) and v is not None and ctx.err(v) is not None for v in ins):
        raise unsupported(ctx, node, "a computed (rounded) constant input")
