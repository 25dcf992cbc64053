"""The engine computes where its inputs are (``verify.bound(device=...)``, ``clarke bounds --device``): checked on
the CPU by making "meta" the default device, so that any tensor created without ``device=`` lands there and fails
to mix with the CPU inputs; the bounds must come out equal. Device names resolve as documented."""

from __future__ import annotations

import json

import pytest
import torch

from tests.float_reference import random_onnx_network
from tests.test_ops_breadth import OPS, _net
from tests.test_patches import _conv_net
from verify import bound, from_torch
from verify.cli.main import main
from verify.device import device_arg, resolve_device
from verify.errors import InputError
from verify.frontends.onnx_frontend import from_onnx_model
from verify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def _graphs():
    out = [(f"onnx-{s}", from_onnx_model(random_onnx_network(s)[0])) for s in range(8)]
    out += [(f"op-{op}", from_onnx_model(_net(op, 13))) for op in OPS]
    out += [(f"conv-{s}", from_torch(*_conv_net(s))) for s in range(3)]
    return out


GRAPHS = _graphs()


@pytest.mark.parametrize("name, graph", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_bounds_follow_the_inputs_device(name, graph):
    torch.manual_seed(0)
    x = torch.rand(2, *graph.input_shape, dtype=graph.dtype) * 2 - 1
    lo, hi = x - 0.05, x + 0.05
    k = graph.output_numel
    C = torch.randn(3, k, dtype=graph.dtype)
    for method in METHODS:
        want = bound(graph, lo, hi, C=C, method=method, iterations=3)
        with torch.device("meta"):
            got = bound(graph, lo, hi, C=C, method=method, iterations=3)
        assert got[0].device.type == "cpu"
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), f"{name} {method}"
    flat = x.reshape(2, -1)
    for extra in ({"ball": (flat, 0.05, 2.0)}, {"linear": {}}):
        want = bound(graph, lo, hi, method="crown", **extra)
        with torch.device("meta"):
            got = bound(graph, lo, hi, method="crown", **{k: ({} if k == "linear" else v) for k, v in extra.items()})
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), f"{name} {extra.keys()}"


def test_a_moved_graph_holds_no_tensor_on_its_old_device():
    graph = from_onnx_model(random_onnx_network(4)[0])
    moved = graph.to("meta")
    assert moved.device.type == "meta" and graph.device.type == "cpu"
    for n in moved.nodes:
        for v in vars(n.op).values():
            tensors = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]
            assert all(t.device.type == "meta" for t in tensors if isinstance(t, torch.Tensor)), n.name
    y = moved(torch.zeros(1, *graph.input_shape, device="meta"))
    assert y.device.type == "meta" and tuple(y.shape[1:]) == graph.output_shape


def test_bound_moves_boxes_to_the_named_device_and_the_lirpa_surface_follows_its_inputs():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    x = torch.rand(3, 4)
    lo, hi = bound(net, x - 0.1, x + 0.1, device="cpu")
    assert lo.device.type == "cpu"
    m = BoundedModule(net, torch.zeros(1, 4))
    bt = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    want = m.compute_bounds(x=(bt,), method="CROWN")
    with torch.device("meta"):
        got = m.compute_bounds(x=(bt,), method="CROWN")
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_device_names(monkeypatch):
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(InputError):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="only 2 CUDA GPU"):
        resolve_device("cuda:2")
    assert device_arg(" Cuda:0 ") == "cuda:0"


def test_cli_device(capsys, tmp_path):
    from pathlib import Path
    ex = Path(__file__).resolve().parents[1] / "examples"
    args = ["bounds", str(ex / "mlp_8x32x32x3.onnx"), "--center", str(ex / "x0.npy"), "--eps", "0.01", "--json"]
    assert main(args + ["--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert main(args + ["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (benchmarks/engine_gpu_check.sh runs it)")
@pytest.mark.parametrize("precision", ["float64", "model"])
def test_cuda_bounds_hold_and_agree_with_the_cpu(precision):
    """On a GPU: the bounds contain float64 evaluations at sampled points, and agree with the CPU's up to the
    rounding allowances (other summation orders)."""
    for name, graph in GRAPHS:
        torch.manual_seed(0)
        x = torch.rand(2, *graph.input_shape, dtype=graph.dtype) * 2 - 1
        lo, hi = x - 0.05, x + 0.05
        pts = lo + (hi - lo) * torch.rand(200, *x.shape, dtype=graph.dtype)
        g64 = graph.with_dtype(torch.float64)
        with torch.no_grad():
            ys = torch.stack([g64(pts[:, i].double()).reshape(200, -1) for i in range(2)], 1)
        for method in METHODS:
            cpu = bound(graph, lo, hi, method=method, iterations=3, precision=precision)
            gpu = bound(graph, lo, hi, method=method, iterations=3, precision=precision, device="cuda")
            assert gpu[0].device.type == "cuda"
            g_lo, g_hi = gpu[0].cpu().double(), gpu[1].cpu().double()
            assert (ys >= g_lo).all() and (ys <= g_hi).all(), f"{name} {method} {precision}: unsound on the GPU"
            width = float((cpu[1] - cpu[0]).abs().max()) + 1e-30
            tol = (1e-6 if precision == "float64" else 1e-2) * width
            assert torch.allclose(g_lo, cpu[0].double(), rtol=0, atol=tol), f"{name} {method} {precision}"
