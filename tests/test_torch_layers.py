"""The torch frontend's extra rules (``verify.frontends.torch_layers``): each traced net matches the module and its
IBP / CROWN / alpha-CROWN bounds hold at sampled points; the batch axis and unsupported forms are refused by name.
Also ONNX Max / Min of two variables (the same ReLU composite)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper

from verify import bound, from_torch
from verify.errors import UnsupportedOperator
from verify.frontends.onnx_frontend import from_onnx_model

F64 = torch.float64


class Fn(nn.Module):
    """``head(f(pre(x)))``: a linear layer before and after the rule under test, so bounds are non-trivial."""

    def __init__(self, f, d_in: int, mid: tuple[int, ...], d_out: int):
        super().__init__()
        self.mid = mid
        self.pre = nn.Linear(d_in, int(np.prod(mid)))
        self.f = f
        self.head = nn.LazyLinear(3)
        self.d_out = d_out

    def forward(self, x):
        h = self.pre(x).view(x.shape[0], *self.mid)
        return self.head(self.f(h).reshape(x.shape[0], self.d_out))


def _in_place(h):
    h = h * 1.0
    h += 0.5
    h -= h.relu()
    h *= 2.0
    h /= 3.0
    return h


CASES = {
    "slice": (lambda h: h[:, 1:3] * 2.0, (4,), 2),
    "index_int": (lambda h: h[:, 1, :], (3, 4), 4),
    "index_none_ellipsis": (lambda h: h[:, None, ..., ::2], (3, 4), 6),
    "abs": (lambda h: torch.abs(h) + h.abs(), (6,), 6),
    "max_const": (lambda h: torch.maximum(h, torch.tensor(0.3, dtype=F64)), (6,), 6),
    "min_const": (lambda h: torch.minimum(h, torch.tensor(-0.2, dtype=F64)), (6,), 6),
    "max_vars": (lambda h: torch.max(h[:, :3], h[:, 3:]), (6,), 3),
    "min_vars": (lambda h: torch.minimum(h[:, :3], 2.0 * h[:, 3:]), (6,), 3),
    "amax": (lambda h: torch.amax(h, dim=1), (5, 3), 3),
    "amin_keepdim": (lambda h: h.amin((1, 2), keepdim=True), (3, 7), 1),
    "permute": (lambda h: h.permute(0, 2, 1), (2, 3), 6),
    "transpose": (lambda h: torch.transpose(h, 1, 2), (2, 3), 6),
    "unsqueeze_squeeze": (lambda h: h.unsqueeze(1).squeeze(1).unsqueeze(-1), (6,), 6),
    "matmul_vars": (lambda h: h @ h.transpose(1, 2), (2, 3), 4),
    "bmm": (lambda h: torch.bmm(h, h.transpose(1, 2)), (2, 3), 4),
    "split_chunk": (lambda h: torch.split(h, 2, dim=1)[0] + h.chunk(3, dim=1)[2], (6,), 2),
    "stack": (lambda h: torch.stack([h, 2.0 * h], dim=1), (6,), 12),
    "interpolate": (lambda h: F.interpolate(h, scale_factor=2, mode="nearest"), (1, 2, 2), 16),
    "pools": (lambda h: F.max_pool2d(h, 2) + F.avg_pool2d(h, 2, stride=2), (1, 4, 4), 4),
    "conv_transpose": (nn.ConvTranspose2d(1, 2, 3, stride=2, padding=1, output_padding=1), (1, 2, 2), 32),
    "upsample": (nn.Upsample(scale_factor=2), (1, 2, 2), 16),
    "prelu": (nn.PReLU(init=0.2), (6,), 6),
    "silu": (nn.SiLU(), (6,), 6),
    "elu": (nn.ELU(0.7), (6,), 6),
    "functional_silu_elu": (lambda h: F.silu(h) + F.elu(h, alpha=1.3), (6,), 6),
    "adaptive_avg": (nn.AdaptiveAvgPool2d((1, 2)), (2, 4, 4), 4),
    "selu": (nn.SELU(), (6,), 6),
    "hardsigmoid": (nn.Sequential(nn.Hardtanh(-9.0, 9.0), nn.Hardsigmoid()), (6,), 6),
    "hardswish": (nn.Hardswish(), (6,), 6),
    "softplus": (nn.Softplus(), (6,), 6),
    "softplus_threshold": (nn.Softplus(threshold=0.5), (6,), 6),  # returns x above 0.5: the gap is allowed for
    "functional_selu_hard_softplus": (lambda h: F.selu(h) + F.hardsigmoid(5 * h) + F.hardswish(5 * h)
                                      + F.softplus(40 * h), (6,), 6),
    "floor_ceil": (lambda h: torch.floor(3 * h) + (2 * h).ceil(), (6,), 6),
    # keyword and positional arguments that change the function (once silently ignored: a different network)
    "add_alpha": (lambda h: torch.add(h, h.relu(), alpha=2.0) + torch.sub(h, 0.5, alpha=3.0)
                  + torch.add(h, other=h) + torch.sub(0.3, h, alpha=0.1), (6,), 6),
    "flatten_end_dim": (lambda h: torch.flatten(h, 1, 2).amax(2) + h.flatten(1, 2).amin(-1), (2, 3, 2), 6),
    # tensor methods and functions (verify.frontends.torch_functions)
    "methods_arith": (lambda h: h.add(h.relu(), alpha=0.5).sub(0.25).mul(3.0).div(2.0) + torch.div(h, 4.0)
                      + h.pow(2) + torch.square(h) + h.square(), (6,), 6),
    "methods_unary": (lambda h: h.neg().sin() + h.cos() + h.erf() + torch.sign(3 * h) + h.sign()
                      + h.clamp(min=-0.2, max=0.4) + h.clip(-0.1) + torch.clamp_min(h, 0.1) + h.clamp_max(0.2),
                      (6,), 6),
    "in_place_operators": (lambda h: _in_place(h), (6,), 6),
    "identities": (lambda h: F.dropout(h.contiguous().detach().clone(), 0.3, False) + torch.clone(h), (6,), 6),
    "rsqrt_log1p_expm1": (lambda h: torch.rsqrt(h * h + 0.5) + torch.log1p(h.abs()) + h.expm1(), (6,), 6),
    "logsigmoid_softsign_mish_tanhshrink": (lambda h: F.logsigmoid(4 * h) + F.softsign(4 * h) + F.mish(4 * h)
                                            + F.tanhshrink(4 * h), (6,), 6),
    "pad_expand_repeat": (lambda h: F.pad(h, (1, 2), value=0.5)[:, :, :3] + h[:, :, :1].expand(h.shape[0], 2, 3)
                          + h[:, :, :1].expand(-1, -1, 3) + h.repeat(1, 1, 2)[:, :, 1:4], (2, 3), 6),
    "flip_roll": (lambda h: torch.flip(h, (2,)) + h.flip(1) + torch.roll(h, 1, 2) + h.roll((1, -1), (1, 2)),
                  (2, 3), 6),
    "where_const": (lambda h: torch.where(torch.tensor([[True, False, True, False, False, True]]), h, 2 * h)
                    + torch.where(torch.tensor([[False, True, True, False, True, True]]), h, 0.5), (6,), 6),
    "log_softmax": (lambda h: F.log_softmax(3 * h, dim=1) + torch.log_softmax(h, 1) + h.log_softmax(-1), (6,), 6),
    "log_softmax_module": (nn.LogSoftmax(dim=1), (6,), 6),
    "max_min_dim": (lambda h: h.max(2).values + torch.max(h, 2)[0] + h.min(dim=2, keepdim=True)[0].squeeze(2)
                    + torch.min(h, 2).values, (2, 3), 2),
    "norm_var_std": (lambda h: h * h.norm(dim=2, keepdim=True) + h.var(2, keepdim=True) + h.std(dim=2, keepdim=True)
                     + torch.var(h, 2, keepdim=True, correction=0), (2, 3), 6),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_matches_the_module_and_its_bounds_hold(case):
    f, mid, d_out = CASES[case]
    torch.manual_seed(0)
    net = Fn(f, 5, mid, d_out).double()
    x = torch.rand(4, 5, dtype=F64)
    net(x)  # materialise the lazy head
    graph = from_torch(net, (5,))
    torch.testing.assert_close(graph(x).reshape(4, -1), net(x), rtol=1e-12, atol=1e-12)
    c = torch.rand(1, 5, dtype=F64)
    pts = c - 0.2 + 0.4 * torch.rand(4000, 5, dtype=F64)
    corners = torch.where(torch.rand(1000, 5) < 0.5, c - 0.2, c + 0.2)
    ys = net(torch.cat([pts, corners])).detach()
    for method in ("ibp", "crown", "alpha-crown"):
        lo, hi = bound(net, c - 0.2, c + 0.2, method=method)
        assert (ys >= lo).all() and (ys <= hi).all(), method
        assert torch.isfinite(hi - lo).all()


@pytest.mark.parametrize("f", [lambda h: h[0], lambda h: h[None], lambda h: h.permute(1, 0), lambda h: h.unsqueeze(0),
                               lambda h: torch.split(h, 1, dim=0)[0], lambda h: torch.stack([h, h], dim=0)])
def test_the_batch_axis_is_refused_by_name(f):
    with pytest.raises(UnsupportedOperator, match="batch axis"):
        from_torch(Fn(f, 5, (6,), 6).double(), (5,))


@pytest.mark.parametrize("module", [nn.PReLU(6), nn.Upsample(scale_factor=1.5), nn.AdaptiveAvgPool2d(3),
                                    nn.Softplus(beta=2.0)])
def test_unsupported_module_forms_are_refused_by_name(module):
    with pytest.raises(UnsupportedOperator, match=type(module).__name__):
        from_torch(Fn(module, 5, (6,) if isinstance(module, nn.PReLU) else (1, 4, 4), 6).double(), (5,))


def _onnx_4_to_6(nodes, inits, opset: int):
    """The graph of an ONNX model ``x [1, 4] -> y [1, 6]`` and its onnxruntime evaluation on points ``[n, 4]``."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return from_onnx_model(model), lambda xs: np.stack([sess.run(None, {"x": xi[None]})[0][0] for xi in xs])


def _agrees_and_bounds_hold(graph, ort_run, xs: np.ndarray, lo: np.ndarray, hi: np.ndarray, rtol: float = 1e-6,
                            atol: float = 1e-6) -> None:
    """The graph matches onnxruntime at the points ``xs`` (``[n, 4]`` in the box ``[lo, hi]``), and its IBP and
    CROWN bounds over the box contain onnxruntime's outputs."""
    ref = ort_run(xs)
    ours = graph(torch.from_numpy(xs).reshape(len(xs), 1, 4)).reshape(len(xs), 6).numpy()
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)
    r = torch.from_numpy(ref)
    for method in ("ibp", "crown"):
        b_lo, b_hi = bound(graph, torch.from_numpy(lo), torch.from_numpy(hi), method=method)
        assert (r >= b_lo.reshape(1, 6)).all() and (r <= b_hi.reshape(1, 6)).all(), method


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_onnx_max_and_min_of_variables_match_onnxruntime_and_bound_soundly(op):
    rng = np.random.default_rng(3)
    inits = [helper.make_tensor(n, onnx.TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
             for n, v in (("W1", rng.normal(size=(4, 6))), ("W2", rng.normal(size=(4, 6))),
                          ("W3", rng.normal(size=(4, 6))))]
    nodes = [helper.make_node("MatMul", ["x", w], [h]) for w, h in (("W1", "a"), ("W2", "b"), ("W3", "c"))]
    nodes.append(helper.make_node(op, ["a", "b", "c"], ["y"]))
    graph, ort_run = _onnx_4_to_6(nodes, inits, 13)
    xs = rng.uniform(-1, 1, size=(300, 4)).astype(np.float32)
    c = np.zeros((1, 4), dtype=np.float32)
    # the model's max / min rounds nothing; the composite y + relu(x - y) rounds (its bounds hold for the exact value)
    _agrees_and_bounds_hold(graph, ort_run, xs, c - 1, c + 1)


def test_constant_tensors_of_the_trace_are_taken_and_trainable_ones_refused():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("floor", torch.full((4,), 0.1))
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return torch.maximum(self.fc(x), self.floor) * torch.tensor(2.0)

    net = Const().double()
    net.w.requires_grad_(False)
    graph = from_torch(net, (4,))
    x = torch.rand(3, 4, dtype=F64)
    torch.testing.assert_close(graph(x).reshape(3, 4), net(x))

    class Trainable(Const):
        def forward(self, x):
            return self.fc(x) * self.w

    with pytest.raises(UnsupportedOperator, match="trainable parameter"):
        from_torch(Trainable().double(), (4,))


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_and_bounds_hold(affine):
    torch.manual_seed(1)
    ln = nn.LayerNorm((2, 3), elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            ln.weight.normal_()
            ln.bias.normal_()
    net = Fn(ln, 5, (2, 3), 6).double()
    x = torch.rand(4, 5, dtype=F64)
    net(x)
    graph = from_torch(net, (5,))
    torch.testing.assert_close(graph(x).reshape(4, -1), net(x), rtol=1e-10, atol=1e-10)
    c = torch.rand(1, 5, dtype=F64)
    pts = torch.cat([c - 0.1 + 0.2 * torch.rand(4000, 5, dtype=F64),
                     torch.where(torch.rand(500, 5) < 0.5, c - 0.1, c + 0.1)])
    ys = net(pts).detach()
    for method in ("ibp", "crown"):
        lo, hi = bound(net, c - 0.1, c + 0.1, method=method)
        assert (ys >= lo).all() and (ys <= hi).all(), method


def test_onnx_layer_normalization_matches_onnxruntime_and_bounds_hold():
    rng = np.random.default_rng(5)

    def t(name, v):
        return helper.make_tensor(name, onnx.TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())

    inits = [t("W", rng.normal(size=(4, 6))), t("g", rng.normal(size=6)), t("b", rng.normal(size=6))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1, epsilon=1e-3)]
    graph, ort_run = _onnx_4_to_6(nodes, inits, 17)
    c = rng.uniform(-1, 1, size=(1, 4)).astype(np.float32)
    xs = np.clip(c + rng.uniform(-0.05, 0.05, size=(300, 4)), c - 0.05, c + 0.05).astype(np.float32)
    _agrees_and_bounds_hold(graph, ort_run, xs, c - 0.05, c + 0.05, rtol=1e-4, atol=1e-5)


def test_layer_norm_lipschitz_bound_holds_at_sampled_gradients():
    from verify.lipschitz import lipschitz

    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)).double()
    x0 = torch.rand(4, dtype=F64)
    lo, hi = x0 - 0.05, x0 + 0.05
    res = lipschitz(net, lo, hi, method="crown", attack=False)
    x = (lo + (hi - lo) * torch.rand(2000, 4, dtype=F64)).requires_grad_(True)
    y = net(x)
    worst = max(float(torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)[0].abs().sum(1).max())
                for j in range(2))
    assert worst <= res.upper < float("inf")


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("opset", [13, 18])
def test_onnx_reduce_max_and_min_match_onnxruntime_and_bound_soundly(op, opset):
    rng = np.random.default_rng(11)
    w = rng.normal(size=(4, 18)).astype(np.float32)
    inits = [helper.make_tensor("W", onnx.TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("shape", onnx.TensorProto.INT64, [3], [1, 6, 3])]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"])]
    if opset >= 18:
        inits.append(helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [2]))
        nodes.append(helper.make_node(op, ["r", "axes"], ["y"], keepdims=0))
    else:
        nodes.append(helper.make_node(op, ["r"], ["y"], axes=[2], keepdims=0))
    graph, ort_run = _onnx_4_to_6(nodes, inits, opset)
    xs = rng.uniform(-1, 1, size=(300, 4)).astype(np.float32)
    c = np.zeros((1, 4), dtype=np.float32)
    _agrees_and_bounds_hold(graph, ort_run, xs, c - 1, c + 1)


def test_onnx_elu_matches_onnxruntime_and_bounds_hold():
    rng = np.random.default_rng(9)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    inits = [helper.make_tensor("W", onnx.TensorProto.FLOAT, w.shape, w.ravel())]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Elu", ["h"], ["y"], alpha=0.6)]
    graph, ort_run = _onnx_4_to_6(nodes, inits, 13)
    xs = rng.uniform(-1, 1, size=(300, 4)).astype(np.float32)
    c = np.zeros((1, 4), dtype=np.float32)
    _agrees_and_bounds_hold(graph, ort_run, xs, c - 1, c + 1)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_onnx_gelu_op_matches_onnxruntime_and_bounds_hold(approximate):
    rng = np.random.default_rng(13)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    inits = [helper.make_tensor("W", onnx.TensorProto.FLOAT, w.shape, w.ravel())]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Gelu", ["h"], ["y"], approximate=approximate)]
    graph, ort_run = _onnx_4_to_6(nodes, inits, 20)
    xs = rng.uniform(-1, 1, size=(300, 4)).astype(np.float32)
    c = np.zeros((1, 4), dtype=np.float32)
    _agrees_and_bounds_hold(graph, ort_run, xs, c - 1, c + 1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f, arg", [(lambda h: torch.softmax(h, dim=1, dtype=torch.float32), "dtype"),
                                    (lambda h: F.dropout(h, 0.5), "training"),
                                    (lambda h: torch.roll(h, 1), "dims"),
                                    (lambda h: h * h.max(1).indices, "indices"),
                                    (lambda h: torch.where(h > 0, h, 0.0), "gt"),
                                    (lambda h: torch.mul(h, 2.0, out=None) + torch.div(h, 2.0, rounding_mode="floor"),
                                     "rounding mode")])
def test_keyword_arguments_no_rule_reads_are_refused_by_name(f, arg):
    with pytest.raises(UnsupportedOperator, match=arg):
        from_torch(Fn(f, 5, (6,), 6).double(), (5,))
