"""The certified-training model zoo: shapes, tracing and bounding by the engine, checkpoints, ONNX export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import verify
from models.checkpoint import CONFIG, WEIGHTS, export_onnx, load_model, save_model
from models.zoo import MODELS, build_model, mlp, small_cnn

SHAPES = [(1, 8, 8), (1, 28, 28)]


def _x(shape, n=2, seed=0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_traces_and_bounds_soundly(name, shape):
    model = build_model(name, shape, 10, seed=0).eval()
    x = _x(shape)
    assert model(x).shape == (2, 10)
    assert all(isinstance(m, nn.Linear | nn.Conv2d | nn.ReLU | nn.Flatten) for m in model)
    graph = verify.from_torch(model, shape)
    assert torch.allclose(graph.forward(x).reshape(2, -1), model(x), atol=1e-5)  # IR shapes keep a 1 axis
    # Full CROWN through cnn-medium's 28x28 conv layers costs gigabytes (see models.zoo): there the test uses
    # CROWN-IBP (IBP intermediate bounds, one CROWN pass from the output), what certified training runs.
    method = "crown-ibp" if (name == "cnn-medium" and shape[-1] == 28) else "crown"
    lo, hi = verify.bound(model, x - 0.01, x + 0.01, method=method)
    with torch.no_grad():
        y = model.double()(x.double())  # the float64 value: the bounds hold for the exact one
    assert lo.shape == hi.shape == (2, 10)
    assert torch.all(lo.double() <= y) and torch.all(y <= hi.double())
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    if method == "crown":
        assert torch.all(hi - lo < 1.0)  # CROWN is tight at eps 0.01 on these random networks


def test_build_model_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b = build_model("cnn-small", (1, 28, 28), 10, seed=5), build_model("cnn-small", (1, 28, 28), 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_model("cnn-small", (1, 28, 28), 10, seed=6)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_cnn_small_is_the_crown_ibp_small_cnn():
    m = build_model("cnn-small", (1, 28, 28), 10)
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (4, 4), (2, 2), (1, 1)), (32, (4, 4), (2, 2), (1, 1))]
    assert [(l.in_features, l.out_features) for l in m if isinstance(l, nn.Linear)] == [(32 * 7 * 7, 100), (100, 10)]


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet-50", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="cannot take inputs"):
        build_model("cnn-small", (1, 1, 1), 10)
    with pytest.raises(ValueError, match="channels, height, width"):
        build_model("cnn-small", (64,), 10)
    with pytest.raises(ValueError, match="classes"):
        build_model("mlp-small", (64,), 0)
    assert build_model("mlp-small", (64,), 3)(torch.rand(4, 64)).shape == (4, 3)  # an MLP takes flat features


def test_old_factories_are_unchanged():
    assert [type(m) for m in mlp([3, 4, 2])] == [nn.Linear, nn.ReLU, nn.Linear]
    assert small_cnn(1, 28, 10)(torch.rand(1, 1, 28, 28)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, name):
    shape = (1, 8, 8)
    model = build_model(name, shape, 10, seed=1).eval()
    config = {"model": name, "input_shape": shape, "classes": 10, "eps": 0.1, "r": float("inf")}
    save_model(tmp_path / "ckpt", model, config)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG, WEIGHTS]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind
    loaded, cfg = load_model(tmp_path / "ckpt")
    x = _x(shape, 5)
    assert torch.equal(loaded(x), model(x))
    assert cfg["model"] == name and cfg["input_shape"] == [1, 8, 8] and cfg["classes"] == 10
    assert cfg["eps"] == 0.1 and cfg["r"] == float("inf")


def test_checkpoint_keeps_float64_and_replaces_an_old_one(tmp_path):
    model = build_model("cnn-tiny", (1, 8, 8), 10, seed=2).double()
    cfg = {"model": "cnn-tiny", "input_shape": [1, 8, 8], "classes": 10}
    save_model(tmp_path / "c", build_model("cnn-tiny", (1, 8, 8), 10, seed=3), cfg)
    state = torch.random.get_rng_state()
    save_model(tmp_path / "c", model, {**cfg, "epoch": 2})
    assert torch.equal(torch.random.get_rng_state(), state)  # saving does not disturb a training run's stream
    loaded, got = load_model(tmp_path / "c")
    assert got["epoch"] == 2 and loaded[0].weight.dtype == torch.float64
    x = _x((1, 8, 8), 3).double()
    assert torch.equal(loaded(x), model(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_save_refuses_a_model_that_does_not_match_its_config(tmp_path):
    model = build_model("cnn-tiny", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="do not match|has shape"):
        save_model(tmp_path / "c", model, {"model": "cnn-small", "input_shape": [1, 8, 8], "classes": 10})
    with pytest.raises(ValueError, match="lacks classes"):
        save_model(tmp_path / "c", model, {"model": "cnn-tiny", "input_shape": [1, 8, 8]})
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path / "c", model, {"model": "cnn-tiny", "input_shape": [1, 8, 8], "classes": 10,
                                           "bad": object()})
    assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []


def _one_line_value_error(path, match):
    with pytest.raises(ValueError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_or_corrupt_checkpoints_are_one_line_errors(tmp_path):
    ck = tmp_path / "ck"
    _one_line_value_error(ck, "model.json: no such checkpoint file")
    save_model(ck, build_model("cnn-tiny", (1, 8, 8), 10), {"model": "cnn-tiny", "input_shape": [1, 8, 8],
                                                            "classes": 10})
    weights = (ck / WEIGHTS).read_bytes()
    (ck / WEIGHTS).write_bytes(weights[: len(weights) // 2])
    assert WEIGHTS in _one_line_value_error(ck, "corrupt checkpoint weights")
    (ck / WEIGHTS).write_bytes(b"\x00" * 3)
    _one_line_value_error(ck, "corrupt checkpoint weights")
    (ck / WEIGHTS).unlink()
    _one_line_value_error(ck, "weights.safetensors: no such checkpoint file")
    (ck / WEIGHTS).write_bytes(weights)
    (ck / CONFIG).write_text("{not json")
    assert CONFIG in _one_line_value_error(ck, "corrupt checkpoint config")
    (ck / CONFIG).write_text(json.dumps({"model": "cnn-small", "input_shape": [1, 8, 8], "classes": 10}))
    _one_line_value_error(ck, "do not match|has shape")
    (ck / CONFIG).write_text(json.dumps({"model": "vgg", "input_shape": [1, 8, 8], "classes": 10}))
    _one_line_value_error(ck, "unknown model")


# ------------------------------------------------------------------------------------------------ ONNX export

@pytest.mark.parametrize("name", MODELS)
def test_export_onnx_matches_onnxruntime_and_loads_in_the_engine(tmp_path, name):
    shape = (1, 28, 28) if name == "cnn-small" else (1, 8, 8)
    model = build_model(name, shape, 10, seed=4).eval()
    path = tmp_path / "sub" / "model.onnx"
    export_onnx(model, shape, path)
    x = _x(shape, 1, seed=9)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    graph = verify.load_onnx(str(path))
    assert tuple(graph.input_shape) == (1, *shape)  # the exported graph takes one sample
    np.testing.assert_allclose(graph.forward(x).reshape(1, -1).numpy(), want, rtol=1e-5, atol=1e-5)
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]


def test_export_onnx_of_a_float64_model_with_nested_blocks_and_batchnorm(tmp_path):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(16, 6)), bn, nn.ReLU(), nn.Linear(6, 3)).double()
    export_onnx(model, (1, 4, 4), tmp_path / "m.onnx")
    assert model.training  # export_onnx restores the mode it found
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
