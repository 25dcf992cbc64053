"""Forward linear bound propagation (forward-mode LiRPA, Xu et al., NeurIPS 2020).

Each node carries linear lower/upper functions of the input, ``A_l x + c_l <= v(x) <= A_u x + c_u``,
with ``A [B, n, *shape]``. Cost is linear in depth and in the input dimension ``n``, so for
low-dimensional inputs (ACAS Xu, n = 5) it gives every intermediate bound in one sweep, where
backward CROWN needs a pass per layer over all neurons.

Rounding (``verify.rounding``): the linear functions of a node bound values of magnitude at most
``M = max(|A_l| a_x + |c_l|, |A_u| a_x + |c_u|)``; the op's rounding allowance at ``M`` covers both a perturbed
float evaluation of the op and the rounding of the step that builds the node's functions, so it is subtracted
from ``c_l`` and added to ``c_u``; concretisation pays ``gamma_{n+1} (|A| a_x + |c|)`` and rounds outward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verify.bounds.ibp import sound_interval
from verify.graph import Graph
from verify.ops.activation import Activation
from verify.ops.affine import AddVars, Scale
from verify.ops.base import Bounds, LinearOp
from verify.ops.linear import Conv2d, ConvTranspose2d, Dense
from verify.ops.pooling import MaxPool2d
from verify.rounding import down, gamma, up

Linear = tuple[Tensor, Tensor]  # (A [B, n, *shape], c [B, *shape])


def _mass(A: Tensor, c: Tensor, a_x: Tensor) -> Tensor:
    """``|A| a_x + |c|``: the largest magnitude of the linear function ``A x + c`` on the box."""
    b, n = A.shape[:2]
    return (A.abs().reshape(b, n, -1) * a_x.reshape(b, n, 1)).sum(1).reshape(c.shape) + c.abs()


def _concretize(A: Tensor, c: Tensor, x_lo: Tensor, x_hi: Tensor, upper: bool) -> Tensor:
    b, n = A.shape[:2]
    A2 = A.reshape(b, n, -1)
    lo, hi = x_lo.reshape(b, n, 1), x_hi.reshape(b, n, 1)
    pick_hi = A2 > 0 if upper else A2 < 0
    val = (A2 * torch.where(pick_hi, hi, lo)).sum(1).reshape(c.shape) + c
    slack = gamma(n + 1, c.dtype) * _mass(A, c, torch.maximum(x_lo.abs(), x_hi.abs()))
    return up(val + slack) if upper else down(val - slack)


def _signed_linear(op: LinearOp, lo_fn: Linear, up_fn: Linear) -> tuple[Linear, Linear]:
    """Linear op with weights of both signs: ``y_l = L+ l + L- u``, split weights once."""
    if isinstance(op, Dense):
        wp, wn = op.weight.clamp(min=0), op.weight.clamp(max=0)

        def lin(t, w):
            return t @ w.T
    elif isinstance(op, Conv2d | ConvTranspose2d):
        wp, wn = op.weight.clamp(min=0), op.weight.clamp(max=0)

        def lin(t, w):
            return op._map(t, w, None)
    else:  # Scale
        w = op.weight if op.weight is not None else torch.ones(())
        wp, wn = w.clamp(min=0), w.clamp(max=0)

        def lin(t, w):
            return t * w

    def apply(A, c, w):
        b, n = A.shape[:2]
        A_out = lin(A.reshape(b * n, *A.shape[2:]), w)
        return A_out.reshape(b, n, *A_out.shape[1:]), lin(c, w)

    (Alp, clp), (Aln, cln) = apply(*lo_fn, wp), apply(*up_fn, wn)
    (Aup, cup), (Aun, cun) = apply(*up_fn, wp), apply(*lo_fn, wn)
    off = op.offset()
    c_lo, c_up = clp + cln, cup + cun
    if off is not None:
        c_lo, c_up = c_lo + off, c_up + off
    return (Alp + Aln, c_lo), (Aup + Aun, c_up)


def _monotone_linear(op: LinearOp, fns: list[Linear]) -> Linear:
    """Ops with non-negative coefficients: apply the linear part to A, the op to c."""
    b, n = fns[0][0].shape[:2]
    As = [A.reshape(b * n, *A.shape[2:]) for A, _ in fns]
    A_out = op.forward(*As)
    off = op.offset()
    if off is not None:
        A_out = A_out - off
    return A_out.reshape(b, n, *A_out.shape[1:]), op.forward(*[c for _, c in fns])


def forward_bounds(graph: Graph, x_lo: Tensor, x_hi: Tensor,
                   reference: dict[str, Bounds] | None = None) -> dict[str, Bounds]:
    """Bounds of every node by forward linear propagation, intersected with interval bounds and with
    ``reference`` (other sound bounds, e.g. inherited from a parent domain) before later nodes use them."""
    b = x_lo.shape[0]
    n = graph.input_numel
    eye = torch.eye(n, dtype=x_lo.dtype).expand(b, n, n).reshape(b, n, *graph.input_shape)
    zero = torch.zeros_like(x_lo)
    a_x = torch.maximum(x_lo.abs(), x_hi.abs())
    fns: dict[str, tuple[Linear, Linear]] = {graph.input_name: ((eye, zero), (eye, zero))}
    bounds: dict[str, Bounds] = {graph.input_name: (x_lo, x_hi)}
    for node in graph.nodes:
        op = node.op
        in_b = [bounds[i] for i in node.inputs]
        ilo, ihi = sound_interval(op, in_b)
        if isinstance(op, Dense | Conv2d | ConvTranspose2d | Scale):
            lo_fn, up_fn = _signed_linear(op, *fns[node.inputs[0]])
        elif isinstance(op, AddVars):
            los = [fns[i][0] if s > 0 else fns[i][1] for i, s in zip(node.inputs, op.signs, strict=True)]
            ups = [fns[i][1] if s > 0 else fns[i][0] for i, s in zip(node.inputs, op.signs, strict=True)]
            lo_fn = (sum(s * f[0] for s, f in zip(op.signs, los, strict=True)),
                     sum(s * f[1] for s, f in zip(op.signs, los, strict=True)))
            up_fn = (sum(s * f[0] for s, f in zip(op.signs, ups, strict=True)),
                     sum(s * f[1] for s, f in zip(op.signs, ups, strict=True)))
        elif isinstance(op, LinearOp) and op.monotone:
            lo_fn = _monotone_linear(op, [fns[i][0] for i in node.inputs])
            up_fn = _monotone_linear(op, [fns[i][1] for i in node.inputs])
        elif isinstance(op, Activation):
            zl, zu = in_b[0]
            aL, cL, aU, cU = op.relax(zl, zu)
            (Al, cl), (Au, cu) = fns[node.inputs[0]]
            aLp, aLn, aUp, aUn = aL.clamp(min=0), aL.clamp(max=0), aU.clamp(min=0), aU.clamp(max=0)
            lo_fn = (Al * aLp.unsqueeze(1) + Au * aLn.unsqueeze(1), cl * aLp + cu * aLn + cL)
            up_fn = (Au * aUp.unsqueeze(1) + Al * aUn.unsqueeze(1), cu * aUp + cl * aUn + cU)
        else:  # no linear rule (MaxPool): constant functions from the interval
            z = torch.zeros(b, n, *node.shape, dtype=x_lo.dtype)
            lo_fn, up_fn = (z, ilo), (z, ihi)
        if not (isinstance(op, LinearOp) and op.monotone and op.interval_exact) and not isinstance(op, MaxPool2d):
            # magnitudes the input functions can take, then the op's allowance at them (module docstring)
            mags = [torch.maximum(_mass(*fns[i][0], a_x), _mass(*fns[i][1], a_x)) for i in node.inputs]
            err = op.error_radius(mags)
            if err is not None:
                lo_fn, up_fn = (lo_fn[0], down(lo_fn[1] - err)), (up_fn[0], up(up_fn[1] + err))
        flo = _concretize(*lo_fn, x_lo, x_hi, upper=False)
        fhi = _concretize(*up_fn, x_lo, x_hi, upper=True)
        lo, hi = torch.maximum(ilo, flo), torch.minimum(ihi, fhi)
        if reference is not None and node.name in reference:
            lo, hi = torch.maximum(lo, reference[node.name][0]), torch.minimum(hi, reference[node.name][1])
        bounds[node.name] = (lo, hi)
        fns[node.name] = (lo_fn, up_fn)
    return bounds
