"""``clarke lipschitz / monotonicity --device`` and ``lipschitz(device=)``: every tensor of the attack, the Jacobian
bounds and the split search follows the requested device. Checked on the CPU with "meta" as the default device (a
tensor created without ``device=`` lands there and fails to mix with the CPU ones): results equal a plain run's.
MIP, LipSDP and the leaf LPs use the CPU by design."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.helpers import random_relu_mlp
from verify.cli.main import main
from verify.lipschitz import lipschitz, monotonicity
from verify.lipschitz.batch import lipschitz_batch


def _box(d: int, seed: int, eps: float):
    x = torch.rand(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    return x - eps, x + eps


def _same(a, b) -> None:
    assert a.per_output == b.per_output and a.status == b.status


@pytest.mark.parametrize("method", ["naive", "ibp", "crown", "alpha-crown", "bab", "mip", "lipsdp"])
def test_lipschitz_methods_follow_the_requested_device(method):
    net = random_relu_mlp(4, [8, 8], seed=3)
    lo, hi = _box(4, 3, 0.3)
    want = lipschitz(net, lo, hi, method=method, timeout=20, device="cpu")
    with torch.device("meta"):
        got = lipschitz(net, lo, hi, method=method, timeout=20, device="cpu")
    if method == "bab":  # raced against the MIP: either may finish first, both within 1e-6 of the exact value
        assert want.status == got.status == "exact"
        assert got.upper == pytest.approx(want.upper, rel=1e-6) and got.lower == pytest.approx(want.lower, rel=1e-6)
        return
    _same(want, got)
    if method == "mip":
        assert want.status == "exact"


def test_cnn_jacobian_bounds_and_batch_follow_the_device():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4),
                        nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.rand(1, 5, 5, dtype=torch.float64)
    for method in ("crown", "alpha-crown"):
        want = lipschitz(net, x - 0.05, x + 0.05, method=method, device="cpu")
        with torch.device("meta"):
            got = lipschitz(net, x - 0.05, x + 0.05, method=method, device="cpu")
        _same(want, got)
    xs = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    want = lipschitz_batch(net, xs - 0.05, xs + 0.05, method="crown", device="cpu")
    with torch.device("meta"):
        got = lipschitz_batch(net, xs - 0.05, xs + 0.05, method="crown", device="cpu")
    assert torch.equal(want.per_output, got.per_output) and got.per_output.device.type == "cpu"


def test_monotonicity_follows_the_device():
    net = random_relu_mlp(3, [6, 6], seed=5)
    lo, hi = _box(3, 5, 0.5)
    for feature in range(3):
        want = monotonicity(net, lo, hi, feature=feature, device="cpu")
        with torch.device("meta"):
            got = monotonicity(net, lo, hi, feature=feature, device="cpu")
        assert (want.status, want.lower, want.upper, want.counterexample) == \
            (got.status, got.lower, got.upper, got.counterexample)


def test_lipschitz_cli_device_option(tmp_path, capsys):
    onnx = "examples/mlp_8x32x32x3.onnx"
    assert main(["lipschitz", onnx, "--center", "examples/x0.npy", "--eps", "0.05", "--device", "cpu",
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["lipschitz", onnx, "--center", "examples/x0.npy", "--eps", "0.05", "--device", "npu"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and len(err.strip().splitlines()) == 1
    assert main(["monotonicity", onnx, "--center", "examples/x0.npy", "--eps", "0.05", "--feature", "0",
                 "--device", "cpu"]) == 0
    if not torch.cuda.is_available():
        assert main(["lipschitz", onnx, "--center", "examples/x0.npy", "--eps", "0.05", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
