"""Dense and convolutional layers: ``y = W x + b`` and ``y = conv(x, W) + b``.

IBP uses centre/radius: ``y in W mu + b +- |W| rho`` (Gowal et al., 2018). The CROWN step and the
Jacobian step are both the adjoint: ``Lambda W`` for dense, ``conv_transpose(Lambda, W)`` for conv.
Rounding allowance ``e = 2 gamma_n (|W| a + |b|)`` with ``n`` the longest dot product of the forward map or
its adjoint: one ``gamma_n`` for a float forward evaluation, one for either the rounded centre/radius interval
rule (``|W| |mu| + |W| rho = |W| a``) or the rounded adjoint ``Lambda W`` (integrated against ``|x| <= a``:
``<|Lambda| |W|, a> = <|Lambda|, |W| a>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.ops.base import LinearOp, merge_leading
from verify.rounding import gamma


class _WeightedLayer(LinearOp):
    """``y = A(x; W) + b`` for a linear map ``A`` with weights ``W``: the interval and rounding rules shared by
    dense and convolutional layers (module docstring)."""

    weight: Tensor
    bias: Tensor | None
    weight_err: Tensor | None
    bias_err: Tensor | None

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def dot_length(self) -> int:
        """Terms of the longest dot product of the forward map or of its adjoint."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self._map(x, self.weight, self.bias)

    def interval(self, bounds):
        lo, hi = bounds
        c = self._map((hi + lo) / 2, self.weight, self.bias)
        r = self._map((hi - lo) / 2, self.weight.abs())
        return c - r, c + r

    def abs_forward(self, ts):
        with torch.no_grad():
            return (1 + 2 * gamma(self.dot_length(), ts[0].dtype)) * self._map(ts[0], self.weight.abs())

    def error_radius(self, mags):
        with torch.no_grad():
            e = self._map(mags[0], self.weight.abs(), None if self.bias is None else self.bias.abs())
            e = 2 * gamma(self.dot_length() + 2, e.dtype) * e
            if self.weight_err is not None or self.bias_err is not None:  # the exact parameters' distance
                w_err = self.weight_err if self.weight_err is not None else torch.zeros_like(self.weight)
                e = e + 1.01 * self._map(mags[0], w_err, self.bias_err)
            extra = self.offset_error(self.offset())
            return e if extra is None else e + extra


SPARSE_MIN_ROWS = 64
"""Dense adjoints of at least this many rows check for one nonzero per row (a sparse product is then faster); on the
CPU only, where reading the count back costs no device synchronisation."""


class Dense(_WeightedLayer):
    """``y[..., o] = sum_i W[o, i] x[..., i] + b[o]`` on the last axis (Gemm, MatMul, nn.Linear)."""

    kind = "dense"

    def __init__(self, weight: Tensor, bias: Tensor | None = None, weight_err: Tensor | None = None,
                 bias_err: Tensor | None = None):
        self.weight = weight
        self.bias = bias
        # bounds on |stored - exact| of parameters the frontend computed (verify.frontends.constants)
        self.weight_err, self.bias_err = weight_err, bias_err

    def _map(self, x, weight, bias=None):
        return F.linear(x, weight, bias)

    def dot_length(self) -> int:
        return max(self.weight.shape)

    def offset(self):
        if self.bias is None:
            return None
        return self.bias.expand(self.out_shape)

    def adjoint(self, lam):
        rows = lam.reshape(-1, lam.shape[-1])
        if rows.shape[0] >= SPARSE_MIN_ROWS and not lam.requires_grad and rows.device.type == "cpu" \
                and rows.layout == torch.strided and int(torch.count_nonzero(rows)) <= rows.shape[0]:
            # bound_rows' start rows +-e_r: a row gather, not a dense product (the same exact values)
            return [torch.sparse.mm(rows.to_sparse(), self.weight).reshape(*lam.shape[:-1], -1)]
        return [lam @ self.weight]

    def __repr__(self):
        return f"Dense({self.weight.shape[1]}->{self.weight.shape[0]})"


class _Spatial(_WeightedLayer):
    """A layer on ``[..., C, H, W]`` with one bias per output channel."""

    def offset(self):
        if self.bias is None:
            return None
        return self.bias.reshape(-1, 1, 1).expand(self.out_shape[-3:]).expand(self.out_shape)


class Conv2d(_Spatial):
    """2-D convolution; the per-sample input may carry leading dims (e.g. ONNX's batch of 1)."""

    kind = "conv"

    def __init__(self, weight: Tensor, bias: Tensor | None, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, weight_err: Tensor | None = None, bias_err: Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.weight_err, self.bias_err = weight_err, bias_err
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.dilation, self.groups = tuple(dilation), int(groups)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat, lead = merge_leading(x, 3)
        y = F.conv2d(flat, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*lead, *y.shape[1:])

    def _map(self, x, weight, bias=None):
        return self._conv(x, weight, bias)

    def dot_length(self) -> int:
        o, i, kh, kw = self.weight.shape
        return max(i, o // self.groups) * kh * kw  # forward fan-in, or adjoint contributions per input

    def adjoint(self, lam):
        flat, lead = merge_leading(lam, 3)
        g = conv_adjoint(flat, self.weight, self.in_shapes[0][-2:], self.stride, self.padding, self.dilation,
                         self.groups)
        return [g.reshape(*lam.shape[:2], *self.in_shapes[0])]

    def __repr__(self):
        o, i, kh, kw = self.weight.shape
        return f"Conv2d({i * self.groups}->{o}, k={kh}x{kw}, s={self.stride}, p={self.padding})"


def conv_adjoint(lam: Tensor, weight: Tensor, in_hw, stride, padding, dilation, groups: int) -> Tensor:
    """``Lambda W`` of a convolution for ``lam [N, C_out, h, w]``: ``[N, C_in, *in_hw]`` (``in_hw`` also recovers
    input rows/cols a strided convolution never reached). Few input channels in float32: one matrix product and a
    ``fold`` (torch's CPU float32 transposed convolution is several times slower there); the same sums of products
    either way."""
    h_in, w_in = int(in_hw[0]), int(in_hw[1])
    c_out, c_in, kh, kw = weight.shape
    if groups == 1 and c_in <= FOLD_MAX_CHANNELS and lam.dtype == torch.float32:
        cols = torch.matmul(weight.reshape(c_out, c_in * kh * kw).t(), lam.flatten(2))
        return F.fold(cols, (h_in, w_in), (kh, kw), dilation, padding, stride)
    if lam.dtype == torch.float64:  # torch's float64 transposed convolution is slower than the conv's own backward
        shape_in = lam.new_zeros(1).expand(lam.shape[0], c_in * groups, h_in, w_in)
        return torch.ops.aten.convolution_backward(lam, shape_in, weight, None, list(stride), list(padding),
                                                   list(dilation), False, [0, 0], groups, [True, False, False])[0]
    h_out, w_out = lam.shape[-2:]
    # output_padding recovers input rows/cols the strided forward conv never reached.
    op_h = h_in - ((h_out - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1)
    op_w = w_in - ((w_out - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1)
    return F.conv_transpose2d(lam, weight, None, stride, padding, (op_h, op_w), groups, dilation)


FOLD_MAX_CHANNELS = 4


class ConvTranspose2d(_Spatial):
    """2-D transposed convolution (ONNX ConvTranspose): ``y = conv_transpose(x, W) + b``, weight ``[C_in, C_out /
    groups, kh, kw]``. Its adjoint is the convolution with the same weight; the rounding rule is the dense one with
    ``n`` bounding the dot products of both."""

    kind = "convtranspose"

    def __init__(self, weight: Tensor, bias: Tensor | None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, weight_err: Tensor | None = None, bias_err: Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.weight_err, self.bias_err = weight_err, bias_err
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.output_padding, self.dilation, self.groups = tuple(output_padding), tuple(dilation), int(groups)

    def _map(self, x, weight, bias=None):
        flat, lead = merge_leading(x, 3)
        y = F.conv_transpose2d(flat, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
                               self.dilation)
        return y.reshape(*lead, *y.shape[1:])

    def dot_length(self) -> int:
        i, o, kh, kw = self.weight.shape
        return max(i, o * self.groups) * kh * kw

    def adjoint(self, lam):
        flat, lead = merge_leading(lam, 3)
        g = F.conv2d(flat, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return [g.reshape(*lam.shape[:2], *self.in_shapes[0])]

    def __repr__(self):
        i, o, kh, kw = self.weight.shape
        return f"ConvTranspose2d({i}->{o * self.groups}, k={kh}x{kw}, s={self.stride}, p={self.padding})"
