"""Pooling. AveragePool is linear with non-negative weights. MaxPool uses the standard sound
relaxation (DeepPoly, Singh et al., POPL 2019): ``y >= x_k`` for the window element ``k`` with the
largest lower bound, and ``y <= max_j u_j`` (exact ``y = x_k`` when ``l_k >= max_{j != k} u_j``).

Rounding: max pooling is exact; its adjoint sums the ``Lambda`` of overlapping windows (``gamma_k maxpool(a)``
covers it). Average pooling: ``2 gamma_{k+1} avgpool(a)`` for a forward sum of ``k`` values and its adjoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from verify.ops.base import LinearOp, Op, merge_leading
from verify.rounding import F64, gamma


class AvgPool2d(LinearOp):
    kind = "avgpool"
    monotone = True

    def __init__(self, kernel, stride, padding=(0, 0), count_include_pad: bool = True,
                 ceil_mode: bool = False):
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)
        self.count_include_pad, self.ceil_mode = bool(count_include_pad), bool(ceil_mode)

    def forward(self, x):
        flat, lead = merge_leading(x, 3)
        y = F.avg_pool2d(flat, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return y.reshape(*lead, *y.shape[1:])

    def offset(self):
        return None

    def error_radius(self, mags):
        with torch.no_grad():
            a = self.forward(mags[0])
            return 2 * gamma(self.kernel[0] * self.kernel[1] + 1, a.dtype) * a

    def __repr__(self):
        return f"AvgPool2d(k={self.kernel}, s={self.stride}, p={self.padding})"


class MaxPool2d(Op):
    kind = "maxpool"
    needs_input_bounds = True
    interval_exact = True

    def __init__(self, kernel, stride, padding=(0, 0)):
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)

    def forward(self, x):
        flat, lead = merge_leading(x, 3)
        y = F.max_pool2d(flat, self.kernel, self.stride, self.padding)
        return y.reshape(*lead, *y.shape[1:])

    def interval(self, bounds):
        return self.forward(bounds[0]), self.forward(bounds[1])

    def _windows(self, t: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, C, K, L]`` window view; padding is -inf as in max pooling."""
        ph, pw = self.padding
        if ph or pw:
            t = F.pad(t, (pw, pw, ph, ph), value=float("-inf"))
        n, c = t.shape[:2]
        cols = F.unfold(t, self.kernel, stride=self.stride)
        return cols.reshape(n, c, self.kernel[0] * self.kernel[1], -1)

    def backward(self, lam, in_bounds, alpha=None):
        lo, hi = in_bounds[0]
        in_shape = self.in_shapes[0]
        lo_flat, _ = merge_leading(lo, 3)
        hi_flat, _ = merge_leading(hi, 3)
        lo_w, hi_w = self._windows(lo_flat), self._windows(hi_flat)  # [N, C, K, L]
        best = lo_w.argmax(2, keepdim=True)
        best_lo = lo_w.gather(2, best)
        others_hi = hi_w.scatter(2, best, float("-inf")).max(2, keepdim=True).values
        exact = (best_lo >= others_hi).squeeze(2)  # [N, C, L]
        hi_max = hi_w.max(2).values  # [N, C, L]
        onehot = torch.zeros_like(lo_w).scatter_(2, best, 1.0)  # [N, C, K, L]

        b, s = lam.shape[:2]
        lead_n = lo_flat.shape[0] // b  # leading per-sample dims merged with the box batch
        lam_flat = lam.reshape(b, s, lead_n, in_shape[-3], -1)  # [B, S, n, C, L]
        pos, neg = lam_flat.clamp(min=0), lam_flat.clamp(max=0)
        exact_b = exact.reshape(b, 1, lead_n, *exact.shape[1:])
        to_x = pos + torch.where(exact_b, neg, torch.zeros_like(neg))
        const = torch.where(exact_b, torch.zeros_like(neg), neg)
        kappa = (const.to(F64) * hi_max.reshape(b, 1, lead_n, *hi_max.shape[1:]).to(F64)).reshape(b, s, -1).sum(-1)

        oh = onehot.reshape(b, 1, lead_n, *onehot.shape[1:])  # [B, 1, n, C, K, L]
        cols = (oh * to_x.unsqueeze(-2)).reshape(b * s * lead_n, -1, to_x.shape[-1])
        ph, pw = self.padding
        h, w = in_shape[-2] + 2 * ph, in_shape[-1] + 2 * pw
        g = F.fold(cols, (h, w), self.kernel, stride=self.stride)
        g = g[..., ph:h - ph, pw:w - pw]
        return [g.reshape(b, s, *in_shape)], kappa

    def abs_forward(self, ts):
        with torch.no_grad():  # the chosen element of a window is at most the window's max
            return (1 + 2 * gamma(self.kernel[0] * self.kernel[1], ts[0].dtype)) * self.forward(ts[0])

    def error_radius(self, mags):
        with torch.no_grad():
            a = self.forward(mags[0])
            # adjoint: up to k window contributions per input; kappa: a float64 sum over the output
            return (gamma(self.kernel[0] * self.kernel[1], a.dtype) + gamma(self.out_numel(), F64)) * a

    def __repr__(self):
        return f"MaxPool2d(k={self.kernel}, s={self.stride}, p={self.padding})"

