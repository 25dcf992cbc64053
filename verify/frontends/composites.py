"""Piecewise-linear ops written with ReLUs, for both frontends: ``clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)``,
``max(x, c) = c + relu(x - c)``, ``min(x, c) = x - relu(x - c)``, ``|x| = relu(x) + relu(-x)``, and for two variables
``max(x, y) = y + relu(x - y)``, ``min(x, y) = y - relu(y - x)``, and reductions by max / min as halving trees of
those.

Each identity is exact in real arithmetic, and the model's own float evaluation of clamp / max / min / abs rounds
nothing, so bounds of the composition (whose Scale and sum nodes carry their rounding allowances) hold for the model.
Their CROWN relaxations are ReLU triangles. GELU (``gelu``) is written with Erf or Tanh and a product of two
variables, as torch evaluates it; ``matmul_vars`` writes ``A @ B`` of two variables as products and a sum,
``layer_norm`` LayerNorm as means, a square, a square root, a reciprocal and a product, ``softmax`` from the
pairwise differences of its input, ``silu`` as ``x sigmoid(x)``,
``elu`` with a ReLU and an exp, ``selu`` as a scaled ELU, ``celu`` as ``alpha elu(x / alpha)``, ``hard_sigmoid`` as
``clamp(alpha x + beta, 0, 1)``, ``hard_swish`` as ``x hard_sigmoid(x)``, ``softsign`` as ``x / (1 + |x|)`` and ``mish``
as ``x tanh(softplus(x))``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from verify.errors import ShapeError, UnsupportedOperator
from verify.graph import GraphBuilder
from verify.ops import AddVars, Dense, Mul, Reciprocal, ReduceSum, Relu, Reshape, Scale, Softmax, Sqrt, Square
from verify.ops.shape import Concat, Expand, Slice, Transpose
from verify.ops.softmax import SoftmaxOfDifferences

Constant = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]
"""A float64 constant -> (the constant in the model's precision, the bound on its cast error or None)."""


def _shift(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``x - c``."""
    v, err = const(-np.asarray(c, dtype=np.float64))
    return b.add(b.fresh(name), Scale(None, v, bias_err=err), [x])


def _relu_minus(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``relu(x - c)``."""
    return b.add(b.fresh(f"{name}_relu"), Relu(), [_shift(b, f"{name}_shift", x, c, const)])


def clamp(b: GraphBuilder, name: str, x: str, lo: np.ndarray | None, hi: np.ndarray | None, const: Constant) -> str:
    """``min(max(x, lo), hi)`` (either limit may be None)."""
    if lo is not None and hi is not None and bool(np.any(np.asarray(lo) > np.asarray(hi))):
        raise UnsupportedOperator("clamp", name, None, "a lower limit above the upper limit")
    if lo is None and hi is None:
        return x
    if hi is None:
        return maximum(b, name, x, lo, const)
    if lo is None:
        return minimum(b, name, x, hi, const)
    diff = b.add(b.fresh(f"{name}_diff"), AddVars([1.0, -1.0]),
                 [_relu_minus(b, f"{name}_min", x, lo, const), _relu_minus(b, f"{name}_max", x, hi, const)])
    return _shift(b, name, diff, -np.asarray(lo, dtype=np.float64), const)


def maximum(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``max(x, c) = c + relu(x - c)``."""
    return _shift(b, name, _relu_minus(b, name, x, c, const), -np.asarray(c, dtype=np.float64), const)


def minimum(b: GraphBuilder, name: str, x: str, c: np.ndarray, const: Constant) -> str:
    """``min(x, c) = x - relu(x - c)``."""
    return b.add(b.fresh(name), AddVars([1.0, -1.0]), [x, _relu_minus(b, name, x, c, const)])


def max_of_two(b: GraphBuilder, name: str, x: str, y: str, largest: bool = True) -> str:
    """``max(x, y) = y + relu(x - y)`` (``largest``) or ``min(x, y) = y - relu(y - x)`` of two variables of one
    shape."""
    if b.shapes[x] != b.shapes[y]:
        raise UnsupportedOperator("max" if largest else "min", name, None, "variables of different shapes")
    diff = b.add(b.fresh(f"{name}_diff"), AddVars([1.0, -1.0]), [x, y] if largest else [y, x])
    r = b.add(b.fresh(f"{name}_relu"), Relu(), [diff])
    return b.add(b.fresh(name), AddVars([1.0, 1.0 if largest else -1.0]), [y, r])


def reduce_max(b: GraphBuilder, name: str, x: str, axes: list[int], keepdims: bool, largest: bool = True) -> str:
    """``max`` (``largest``) or ``min`` over per-sample ``axes``: per axis a halving tree, each level the element-wise
    max of the first and second halves (an odd element carried on by a Concat), ``ceil(log2 k)`` levels."""
    if any(a < 1 for a in axes):
        raise UnsupportedOperator("ReduceMax" if largest else "ReduceMin", name, None,
                                  "a reduction over the batch axis")
    for axis in sorted(axes):
        while b.shapes[x][axis] > 1:
            shape = b.shapes[x]
            k, h = shape[axis], shape[axis] // 2

            def part(start: int, stop: int, tag: str, src: str = x, rank: int = len(shape), ax: int = axis) -> str:
                sl = [slice(None)] * rank
                sl[ax] = slice(start, stop, 1)
                return b.add(b.fresh(f"{name}_{tag}"), Slice(sl), [src])

            m = max_of_two(b, f"{name}_level", part(0, h, "lo"), part(h, 2 * h, "hi"), largest)
            if k % 2:
                m = b.add(b.fresh(f"{name}_carry"), Concat(axis, 2), [m, part(2 * h, k, "odd")])
            x = m
    if keepdims:
        return x
    shape = b.shapes[x]
    return b.add(b.fresh(name), Reshape(tuple(d for i, d in enumerate(shape) if i not in axes)), [x])


def matmul_vars(b: GraphBuilder, name: str, a: str, c: str) -> str:
    """``A @ C = sum_k A[..., n, k, 1] * C[..., 1, k, m]`` for two variables of rank >= 2: products of variables
    (McCormick planes), then the sum over ``k``."""
    sa, sc = b.shapes[a], b.shapes[c]
    if len(sa) < 2 or len(sc) < 2 or sa[-1] != sc[-2]:
        raise ShapeError(f"node '{name}': MatMul of shapes {sa} and {sc}")
    left = b.add(b.fresh(f"{name}_left"), Reshape((*sa, 1)), [a])
    right = b.add(b.fresh(f"{name}_right"), Reshape((*sc[:-2], 1, *sc[-2:])), [c])
    prod = b.add(b.fresh(f"{name}_products"), Mul(), [left, right])
    return b.add(b.fresh(name), ReduceSum([len(b.shapes[prod]) - 2], keepdims=False), [prod])


def absolute(b: GraphBuilder, name: str, x: str, dtype: torch.dtype) -> str:
    """``|x| = relu(x) + relu(-x)``."""
    neg = b.add(b.fresh(f"{name}_neg"), Scale(torch.tensor(-1.0, dtype=dtype, device="cpu")), [x])
    parts = [b.add(b.fresh(f"{name}_pos_relu"), Relu(), [x]), b.add(b.fresh(f"{name}_neg_relu"), Relu(), [neg])]
    return b.add(b.fresh(name), AddVars([1.0, 1.0]), parts)


SQRT1_2 = 0.7071067811865476  # the double nearest 1 / sqrt(2)
SQRT_2_OVER_PI = 0.7978845608028654  # the double nearest sqrt(2 / pi)
GELU_CUBIC = 0.044715

ConstantWithError = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]
"""A float64 constant and a bound on its distance to the exact value -> the constant in the model's precision and the
bound on its distance to the exact value (or None)."""


def gelu(b: GraphBuilder, name: str, x: str, const: ConstantWithError, approximate: str = "none") -> str:
    """``GELU(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`` (``approximate="none"``) or
    ``x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) / 2`` (``"tanh"``), in torch's order of evaluation. The irrational
    constants carry their distance to the exact value, so the bounds hold for the mathematical GELU and for its float
    evaluation."""
    from verify.ops import Mul, Tanh
    from verify.ops.activation import Erf
    from verify.ops.bilinear import Power

    def scale(tag: str, v: str, value: float, exact: bool) -> str:
        err = np.zeros(()) if exact else np.asarray(abs(value) * np.finfo(np.float64).eps)  # the double's own error
        w, w_err = const(np.asarray(value), err)
        return b.add(b.fresh(f"{name}_{tag}"), Scale(w, None, weight_err=w_err), [v])

    if approximate == "none":
        gate = b.add(b.fresh(f"{name}_erf"), Erf(), [scale("scaled", x, SQRT1_2, False)])
    elif approximate == "tanh":
        cube = scale("cubic", b.add(b.fresh(f"{name}_cube"), Power(3), [x]), GELU_CUBIC, True)
        inner = b.add(b.fresh(f"{name}_inner"), AddVars([1.0, 1.0]), [x, cube])
        gate = b.add(b.fresh(f"{name}_tanh"), Tanh(), [scale("scaled", inner, SQRT_2_OVER_PI, False)])
    else:
        raise UnsupportedOperator("gelu", name, None, f"approximate={approximate!r} (none or tanh)")
    one, _ = const(np.asarray(1.0), np.zeros(()))
    one_plus = b.add(b.fresh(f"{name}_one_plus"), Scale(None, one), [gate])
    return b.add(name, Mul(), [scale("half", x, 0.5, True), one_plus])


def silu(b: GraphBuilder, name: str, x: str) -> str:
    """SiLU (swish) ``x sigmoid(x)``: a sigmoid and a product of two variables."""
    from verify.ops import Sigmoid

    return b.add(b.fresh(name), Mul(), [x, b.add(b.fresh(f"{name}_sigmoid"), Sigmoid(), [x])])


def elu(b: GraphBuilder, name: str, x: str, alpha: float, const: Constant) -> str:
    """ELU ``x`` for ``x > 0``, ``alpha (e^x - 1)`` below, as ``relu(x) + alpha (exp(-relu(-x)) - 1)`` (the same
    function in real arithmetic; exp of a non-positive value cannot overflow)."""
    from verify.ops import Exp

    minus, minus_err = const(np.asarray(-1.0))
    neg = b.add(b.fresh(f"{name}_neg"), Scale(minus, None, weight_err=minus_err), [x])
    below = b.add(b.fresh(f"{name}_below"), Relu(), [neg])  # max(-x, 0)
    e = b.add(b.fresh(f"{name}_exp"), Exp(), [b.add(b.fresh(f"{name}_min"), Scale(minus, None, weight_err=minus_err),
                                                   [below])])
    a, a_err = const(np.asarray(alpha, dtype=np.float64))
    c, c_err = const(-np.asarray(alpha, dtype=np.float64))
    tail = b.add(b.fresh(f"{name}_tail"), Scale(a, c, weight_err=a_err, bias_err=c_err), [e])
    return b.add(b.fresh(name), AddVars([1.0, 1.0]), [b.add(b.fresh(f"{name}_relu"), Relu(), [x]), tail])


def selu(b: GraphBuilder, name: str, x: str, alpha: float, scale: float, const: Constant) -> str:
    """SELU ``scale elu_alpha(x)`` (Klambauer et al., 2017)."""
    e = elu(b, f"{name}_elu", x, alpha, const)
    w, w_err = const(np.asarray(scale, dtype=np.float64))
    return b.add(b.fresh(name), Scale(w, None, weight_err=w_err), [e])


def select(b: GraphBuilder, name: str, mask: np.ndarray, x, y, const: Constant) -> str:
    """``where(mask, x, y)`` for a constant 0/1 ``mask`` (of the output shape) as ``m x + (1 - m) y``: exact in floating
    point, one term being an exact zero. ``x`` / ``y``: a variable (broadcast to the mask's shape by copies) or a
    constant ``(value, error bound or None)`` in float64; at least one is a variable."""
    shape = tuple(mask.shape)
    m = mask.astype(np.float64)

    def spread(v: str) -> str:
        return v if b.shapes[v] == shape else b.add(b.fresh(f"{name}_expand"), Expand(shape), [v])

    picks = [b.add(b.fresh(f"{name}_pick"), Scale(const(w)[0]), [spread(v)])
             for v, w in ((x, m), (y, 1.0 - m)) if isinstance(v, str)]
    if len(picks) == 2:
        return b.add(b.fresh(name), AddVars([1.0, 1.0]), picks)
    var, (c, c_err), w = (x, y, 1.0 - m) if isinstance(x, str) else (y, x, m)  # w: where the constant is picked
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape)
    ct, ce = const(w * c, None if c_err is None else w * np.broadcast_to(c_err, shape))
    return b.add(b.fresh(name), Scale(const(1.0 - w)[0], ct, bias_err=ce), [spread(var)])


def celu(b: GraphBuilder, name: str, x: str, alpha: float, const: Constant) -> str:
    """CELU ``max(0, x) + min(0, alpha (exp(x / alpha) - 1)) = alpha elu_1(x / alpha)`` (Barron, 2017)."""
    w, w_err = const(np.asarray(1.0 / alpha, dtype=np.float64), np.asarray(np.finfo(np.float64).eps / abs(alpha)))
    e = elu(b, f"{name}_elu", b.add(b.fresh(f"{name}_in"), Scale(w, None, weight_err=w_err), [x]), 1.0, const)
    a, a_err = const(np.asarray(alpha, dtype=np.float64))
    return b.add(b.fresh(name), Scale(a, None, weight_err=a_err), [e])


def softsign(b: GraphBuilder, name: str, x: str, const: Constant) -> str:
    """``x / (1 + |x|)``: an absolute value, a reciprocal of a value >= 1 and a product."""
    one, one_err = const(np.ones(()))
    denom = b.add(b.fresh(f"{name}_denom"), Scale(None, one, bias_err=one_err),
                  [absolute(b, f"{name}_abs", x, one.dtype)])
    return b.add(b.fresh(name), Mul(), [x, b.add(b.fresh(f"{name}_inv"), Reciprocal(), [denom])])


def mish(b: GraphBuilder, name: str, x: str) -> str:
    """Mish ``x tanh(softplus(x))`` (Misra, 2019)."""
    from verify.ops import Softplus, Tanh

    soft = b.add(b.fresh(f"{name}_softplus"), Softplus(), [x])
    return b.add(b.fresh(name), Mul(), [x, b.add(b.fresh(f"{name}_tanh"), Tanh(), [soft])])


def hard_sigmoid(b: GraphBuilder, name: str, x: str, alpha: float, beta: float, const: Constant) -> str:
    """``clamp(alpha x + beta, 0, 1)`` (ONNX HardSigmoid; torch's hardsigmoid has alpha 1/6, beta 1/2)."""
    w, w_err = const(np.asarray(alpha, dtype=np.float64))
    c, c_err = const(np.asarray(beta, dtype=np.float64))
    lin = b.add(b.fresh(f"{name}_affine"), Scale(w, c, w_err, c_err), [x])
    return clamp(b, b.fresh(name), lin, np.zeros(()), np.ones(()), const)


def hard_swish(b: GraphBuilder, name: str, x: str, const: Constant) -> str:
    """``x hard_sigmoid(x)`` with alpha 1/6, beta 1/2 (Howard et al., 2019): a product of two variables."""
    return b.add(b.fresh(name), Mul(), [x, hard_sigmoid(b, f"{name}_gate", x, 1.0 / 6.0, 0.5, const)])


def layer_norm(b: GraphBuilder, name: str, x: str, n_axes: int, eps: tuple[torch.Tensor, torch.Tensor | None],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               weight_err: torch.Tensor | None = None, bias_err: torch.Tensor | None = None) -> str:
    """LayerNorm over the last ``n_axes`` axes (Ba et al., 2016; torch and ONNX LayerNormalization):
    ``(x - m) / sqrt(v + eps) * weight + bias`` with ``m`` the mean and ``v`` the mean of ``(x - m)^2`` (biased)."""
    shape = b.shapes[x]
    axes = list(range(len(shape) - n_axes, len(shape)))
    if not axes or axes[0] < 1:
        raise UnsupportedOperator("LayerNorm", name, None, "normalising over the batch axis")

    def spread(v: str, tag: str) -> str:  # [.., 1, 1] -> the input's shape (copies: no rounding)
        return b.add(b.fresh(f"{name}_{tag}_expand"), Expand(shape), [v])

    mean = b.add(b.fresh(f"{name}_mean"), ReduceSum(axes, keepdims=True, mean=True), [x])
    centred = b.add(b.fresh(f"{name}_centred"), AddVars([1.0, -1.0]), [x, spread(mean, "mean")])
    var = b.add(b.fresh(f"{name}_var"), ReduceSum(axes, keepdims=True, mean=True),
                [b.add(b.fresh(f"{name}_square"), Square(), [centred])])
    eps_t, eps_err = eps
    std = b.add(b.fresh(f"{name}_std"), Sqrt(), [b.add(b.fresh(f"{name}_eps"), Scale(None, eps_t, bias_err=eps_err),
                                                        [var])])
    inv = b.add(b.fresh(f"{name}_inv"), Reciprocal(), [std])
    out = b.add(b.fresh(f"{name}_normed"), Mul(), [centred, spread(inv, "inv")])
    if weight is None and bias is None:
        return out
    return b.add(b.fresh(name), Scale(weight, bias, weight_err, bias_err), [out])


PAIRWISE_SOFTMAX_MAX = 32
"""Softmax axes up to this length are read from their pairwise differences (``n^2`` of them per row); longer ones
get the ``Softmax`` op, whose planes bound the differences by the inputs' intervals."""


def softmax(b: GraphBuilder, name: str, x: str, axis: int, dtype: torch.dtype) -> str:
    """Softmax along ``axis``: the differences ``D[i, j] = x_j - x_i`` (a constant +-1 Dense map, exact in real
    arithmetic), then ``SoftmaxOfDifferences`` (``verify.ops.softmax``). CROWN then bounds every difference itself,
    as auto_LiRPA bounds its ``x - x_k``."""
    shape = b.shapes[x]
    n, last = shape[axis], len(shape) - 1
    if n == 1 or n > PAIRWISE_SOFTMAX_MAX:
        return b.add(name, Softmax(axis), [x])
    perm = [a for a in range(len(shape)) if a != axis] + [axis]
    moved = x if axis == last else b.add(b.fresh(f"{name}_to_last"), Transpose(perm), [x])
    w = torch.zeros(n, n, n, dtype=dtype)  # row (i, j): x_j - x_i (zero where j = i)
    w[:, torch.arange(n), torch.arange(n)] += 1.0
    w[torch.arange(n), :, torch.arange(n)] -= 1.0
    pairs = b.add(b.fresh(f"{name}_differences"), Dense(w.reshape(n * n, n)), [moved])
    grid = b.add(b.fresh(f"{name}_pairs"), Reshape((*b.shapes[moved][:-1], n, n)), [pairs])
    if axis == last:
        return b.add(name, SoftmaxOfDifferences(), [grid])
    y = b.add(b.fresh(f"{name}_last"), SoftmaxOfDifferences(), [grid])
    return b.add(name, Transpose([perm.index(a) for a in range(len(shape))]), [y])
