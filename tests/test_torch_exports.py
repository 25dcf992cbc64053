"""Networks exported from torch by its ONNX exporter (``torch.onnx.export(..., dynamo=False)``) at opsets 11-17, one
per activation / layer / tensor function: each loads, matches onnxruntime, and its CROWN and IBP bounds over a box
contain onnxruntime's own float32 outputs at random points and the box's corners when computed in the model's
precision (``precision="model"``, whose allowances cover a float32 evaluation; the default float64 bounds hold for
the exact real value, README "Sound to the last bit")."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from verify import bound
from verify.frontends.onnx_frontend import from_onnx_model


class Between(nn.Module):
    """``f`` between a linear layer (5 -> 24, reshaped to [2, 3, 4]) and the flattened output."""

    def __init__(self, f):
        super().__init__()
        self.pre, self.f = nn.Linear(5, 24), f

    def forward(self, x):
        return self.f(self.pre(x).reshape(x.shape[0], 2, 3, 4)).flatten(1)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 3, 1)

    def forward(self, h):
        return torch.cat([F.relu(h + self.c1(h)), self.c2(h)], 1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, h):
        h = h.flatten(1, 2)  # 6 tokens of 4
        return torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 2.0, -1) @ self.v(h)


MASK = torch.tensor([[[True, False, True, False]]])
CASES = {
    "selu": nn.SELU(), "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(), "softplus": nn.Softplus(),
    "mish": nn.Mish(), "softsign": nn.Softsign(), "log_softmax": nn.LogSoftmax(dim=-1), "softmax": nn.Softmax(-1),
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"), "silu": nn.SiLU(), "elu": nn.ELU(), "prelu": nn.PReLU(2),
    "leaky_relu": nn.LeakyReLU(0.1), "relu6": nn.ReLU6(), "logsigmoid": nn.LogSigmoid(), "tanhshrink": nn.Tanhshrink(),
    "instance_norm": nn.InstanceNorm2d(2, affine=True), "layer_norm": nn.LayerNorm(4),
    "global_avg_pool": lambda h: F.adaptive_avg_pool2d(h, 1),
    "bilinear": lambda h: F.interpolate(h, scale_factor=2, mode="bilinear"),
    "bilinear_corners": lambda h: F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True),
    "bicubic": lambda h: F.interpolate(h, size=(5, 7), mode="bicubic"),
    "floor_round": lambda h: torch.floor(3 * h) + torch.round(2 * h), "where": lambda h: torch.where(MASK, h, -h),
    "repeat": lambda h: h.repeat(1, 1, 2, 1), "flip": lambda h: torch.flip(h, (3,)), "pad": lambda h: F.pad(h, (1, 1)),
    "norm": lambda h: h.norm(dim=3, keepdim=True) * h, "var": lambda h: h.var(3, keepdim=True),
    "amax": lambda h: h.amax(3), "abs": lambda h: h.abs(), "roll": lambda h: torch.roll(h, 1, 3),
    "log1p": lambda h: torch.log1p(h.abs()), "rsqrt": lambda h: torch.rsqrt(h * h + 1),
    "clamp": lambda h: h.clamp(-0.3, 0.4),
    "reflect_pad": nn.ReflectionPad2d(1), "replicate_pad": nn.ReplicationPad2d((2, 1, 1, 0)),
    "circular_pad": lambda h: F.pad(h, (1, 2, 1, 0), mode="circular"), "cumsum": lambda h: torch.cumsum(h, 3),
    "residual_cat": Residual(), "attention": Attention(), "group_norm": nn.GroupNorm(1, 2),
    "conv_transpose": nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
    "batch_norm": nn.BatchNorm2d(2), "max_pool": nn.MaxPool2d(3, 1, 1),
    "einsum": lambda h: torch.einsum("bchw,c->bhw", h, torch.tensor([1.0, -2.0])),
    "max_pool_ceil": nn.MaxPool2d(2, ceil_mode=True), "max_pool_ceil_padded": nn.MaxPool2d(3, 2, 1, ceil_mode=True),
}


def _export(case: str, opset: int) -> bytes:
    torch.manual_seed(0)
    net = Between(CASES[case]).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 5), buf, opset_version=opset, dynamo=False)
    return buf.getvalue()


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_network_matches_onnxruntime_and_its_bounds_contain_onnxruntime(case, opset):
    if case == "einsum" and opset < 12:
        pytest.skip("torch exports einsum from opset 12")
    data = _export(case, opset)
    graph = from_onnx_model(onnx.load_from_string(data))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(opset)
    c = rng.normal(size=(1, 5)).astype(np.float32)
    lo, hi = c - np.float32(0.1), c + np.float32(0.1)
    pts = rng.uniform(lo, hi, size=(64, 1, 5)).astype(np.float32)
    corners = np.array([[lo[0, i] if bit else hi[0, i] for i, bit in enumerate(bits)]
                        for bits in itertools.product((0, 1), repeat=5)], dtype=np.float32)[:, None]
    xs = np.concatenate([pts, corners])
    ref = np.stack([sess.run(None, {name: x})[0] for x in xs]).reshape(len(xs), -1)
    ours = graph(torch.from_numpy(xs)).reshape(len(xs), -1).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    r = torch.from_numpy(ref)
    for method in ("ibp", "crown"):
        b_lo, b_hi = bound(graph, torch.from_numpy(lo), torch.from_numpy(hi), method=method, precision="model")
        assert (r >= b_lo).all() and (r <= b_hi).all(), method
