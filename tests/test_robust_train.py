"""robust_train's training loop: config validation, schedules, data parallelism (2 gloo processes = 1 process),
resume = uninterrupted run, run-directory rules, and short real training runs on scikit-learn's digits."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import TensorDataset

import verify
from robust_train import ConfigError, TrainConfig, load_config, margin_spec, train
from robust_train import runs as run_io
from robust_train.schedule import RampSchedule, lr_factor
from tests.helpers import exit_spawned_rank


@functools.lru_cache(maxsize=4)
def digits(n_train: int | None = None, n_val: int = 300) -> SimpleNamespace:
    """scikit-learn's 8x8 digits in [0, 1], a fixed shuffle: train / val TensorDatasets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, tr = p[:n_val], p[n_val:]
    if n_train is not None:
        tr = tr[:n_train]
    return SimpleNamespace(train=TensorDataset(x[tr], y[tr]), val=TensorDataset(x[val], y[val]), classes=10,
                           input_shape=(1, 8, 8), class_names=None)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def final_state(out: Path) -> dict:
    return run_io.load_checkpoint(run_io.latest_checkpoint(out))


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("kwargs", [
    {"eps": float("nan")}, {"eps": -0.1}, {"eps": math.inf}, {"method": "fgsm"}, {"model": "resnet-999"},
    {"data": "cifar-100"}, {"epochs": 0}, {"epochs": True}, {"epochs": 2.5}, {"lr": 0.0}, {"lr": float("nan")},
    {"tau": 0.0}, {"tau": 1.5}, {"r": 0.0}, {"r": float("nan")}, {"r": "lots"}, {"kappa_final": 1.5},
    {"beta_final": -0.1}, {"device": "tpu"}, {"optimizer": "rmsprop"}, {"inner": "fgsm"}, {"lr_schedule": "exp"},
    {"batch_size": 0}, {"warmup_epochs": -1.0}, {"pgd_step_size": 0.0}, {"imbalance": 0.5}, {"seed": -1},
    {"val_fraction": 1.0}, {"subset": 0},
])
def test_config_rejects_bad_values_with_one_line(kwargs):
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert isinstance(info.value, ConfigError)
    msg = str(info.value)
    assert "\n" not in msg and next(iter(kwargs)) in msg


def test_config_resolves_method_defaults_and_round_trips(tmp_path):
    assert TrainConfig(r="inf").r == math.inf
    ibp = TrainConfig(method="ibp", epochs=10)
    assert (ibp.warmup_epochs, ibp.ramp_epochs) == (1.0, 5.0)
    done_cert = TrainConfig(method="done", inner="crown-ibp", epochs=20)
    assert (done_cert.warmup_epochs, done_cert.ramp_epochs) == (2.0, 10.0)
    assert (TrainConfig(method="pgd-at").warmup_epochs, TrainConfig(method="pgd-at").ramp_epochs) == (0.0, 0.0)
    assert TrainConfig(method="gairat").reweight_start == 0.5 and TrainConfig(method="mail").reweight_start == 0.625
    cfg = TrainConfig(method="done", r=math.inf, out=str(tmp_path / "x"))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(cfg.to_json())
    assert load_config(tmp_path / "x") == cfg
    (tmp_path / "x" / "config.json").write_text('{"eps": 0.1, "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        load_config(tmp_path / "x")


def test_schedules():
    s = RampSchedule(eps=0.2, warmup=1.0, ramp=2.0, kappa_final=0.5, beta_final=0.0)
    assert (s.eps_at(0.5), s.kappa_at(0.5), s.beta_at(0.5)) == (0.0, 1.0, 1.0)
    assert s.eps_at(2.0) == pytest.approx(0.1) and s.kappa_at(2.0) == pytest.approx(0.75)
    assert s.beta_at(2.0) == pytest.approx(0.5)
    assert (s.eps_at(3.0), s.kappa_at(9.0), s.beta_at(3.0)) == (0.2, 0.5, 0.0)
    assert RampSchedule(eps=0.3).eps_at(0.0) == 0.3  # no warm-up, no ramp: constant
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert [lr_factor("step", k, 8) for k in (0, 3, 4, 6, 7)] == [1.0, 1.0, 0.1, 0.01, 0.01]


# ------------------------------------------------------------------------------------------- data parallel

DDP_METHODS = {
    "done": {"r": 0.5, "tau": 0.5, "pgd_steps": 2, "reweight_start": 0.0},  # weighted from the first step
    "gairat": {"reweight_start": 0.0, "pgd_steps": 3},
    "crown-ibp": {"warmup_epochs": 0.0, "ramp_epochs": 1.0, "kappa_final": 0.2, "beta_final": 0.3},
}


def _ddp_config(method: str, out: Path) -> TrainConfig:
    return TrainConfig(data="digits", model="mlp-small", method=method, eps=0.05, epochs=2, batch_size=30,
                       lr=0.01, dtype="float64", val_points=10, val_pgd_steps=1, seed=3, out=str(out),
                       device="cpu", **DDP_METHODS[method])


def _ddp_worker(rank: int, world: int, store: str, root: str, tensors: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # the data comes from the parent: importing scikit-learn in each child would cost seconds
    splits = SimpleNamespace(train=TensorDataset(*tensors[:2]), val=TensorDataset(*tensors[2:]), classes=10,
                             input_shape=(1, 8, 8), class_names=None)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for method in DDP_METHODS:
            train(_ddp_config(method, Path(root) / f"ddp-{method}"), splits, progress=False, model_fn=mlp)
        dist.barrier()  # neither rank tears the file store down while the other still uses it
    finally:
        dist.destroy_process_group()
    exit_spawned_rank()


def test_ddp_two_gloo_processes_equal_one_process_on_the_joint_batch(tmp_path):
    """Each global batch of 30 is cut 15 / 15; gradients summed over the ranks, DONE's log u from the all-reduced
    statistic, GAIRAT's weights normalised over the global batch, start noise drawn for the global batch: after
    4 steps (2 epochs) the parameters equal a single process's in float64 to 1e-10."""
    data = digits(64, 20)
    tensors = (*data.train.tensors, *data.val.tensors)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path), tensors), nprocs=2, join=True)
    for method in DDP_METHODS:
        single = train(_ddp_config(method, tmp_path / f"one-{method}"), digits(64, 20), progress=False,
                       model_fn=mlp)
        a, b = final_state(single), final_state(tmp_path / f"ddp-{method}")
        for k, v in a["model"].items():
            rel = float((v - b["model"][k]).norm() / v.norm())
            assert rel <= 1e-10, (method, k, rel)
            assert not torch.equal(v, mlp().state_dict()[k].double())  # it trained
        if method == "done":
            assert abs(a["method"]["log_u"] - b["method"]["log_u"]) <= 1e-12 * abs(a["method"]["log_u"])


# ------------------------------------------------------------------------------------------------- resume


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """DONE (PGD random starts and the log-u state), Adam and a cosine schedule: a run killed during epoch 3 and
    resumed ends with bit-identical weights and metrics."""
    def cfg(out):
        return TrainConfig(data="digits", model="mlp-small", method="done", eps=0.05, epochs=4, batch_size=64,
                           lr=3e-3, pgd_steps=3, r=0.7, tau=0.3, reweight_start=0.0, val_points=50, out=str(out))

    full = train(cfg(tmp_path / "full"), digits(256, 50), progress=False, model_fn=mlp)
    original = run_io.save_checkpoint

    def crash_at_three(out, epoch, state):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(out, epoch, state)

    monkeypatch.setattr(run_io, "save_checkpoint", crash_at_three)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "cut"), digits(256, 50), progress=False, model_fn=mlp)
    monkeypatch.setattr(run_io, "save_checkpoint", original)
    assert run_io.latest_checkpoint(tmp_path / "cut").name == "epoch-0002.pt"
    with pytest.raises(ConfigError, match="exists"):  # not without resume
        train(cfg(tmp_path / "cut"), digits(256, 50), progress=False, model_fn=mlp)
    train(cfg(tmp_path / "cut"), digits(256, 50), progress=False, resume=True, model_fn=mlp)
    a, b = final_state(full), final_state(tmp_path / "cut")
    assert a["epoch"] == b["epoch"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["method"]["log_u"] == b["method"]["log_u"]
    ma, mb = run_io.read_metrics(full), run_io.read_metrics(tmp_path / "cut")
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb] and len(mb) == 4


def test_run_directory_rules(tmp_path):
    splits = digits(64, 20)
    base = {"data": "digits", "model": "mlp-small", "epochs": 1, "batch_size": 32, "val_points": 10}
    out = tmp_path / "run"
    train(TrainConfig(**base, out=str(out)), splits, progress=False, model_fn=mlp)
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "checkpoints", "model", "model.onnx"}
    rows = run_io.read_metrics(out)
    assert len(rows) == 1 and set(rows[0]) == set(run_io.METRIC_COLUMNS)
    with pytest.raises(ConfigError, match="exists"):
        train(TrainConfig(**base, out=str(out)), splits, progress=False, model_fn=mlp)
    with pytest.raises(ConfigError, match="lr"):
        train(TrainConfig(**base, lr=0.5, out=str(out)), splits, progress=False, resume=True, model_fn=mlp)
    train(TrainConfig(**base, lr=0.5, out=str(out)), splits, progress=False, overwrite=True, model_fn=mlp)
    assert load_config(out).lr == 0.5
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a training run"):
        train(TrainConfig(**base, out=str(stranger)), splits, progress=False, overwrite=True, model_fn=mlp)
    assert (stranger / "notes.txt").read_text() == "keep me"
    ckpt = run_io.latest_checkpoint(out)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="corrupt checkpoint") as info:
        train(TrainConfig(**base, lr=0.5, out=str(out)), splits, progress=False, resume=True, model_fn=mlp)
    assert str(ckpt) in str(info.value)


def test_zoo_model_and_dataset_by_name(tmp_path):
    """The config's names alone: models.data's digits, models.zoo's cnn-tiny; the final model loads back with
    models.checkpoint and its ONNX export gives the same logits through the engine's frontend."""
    pytest.importorskip("models.data")
    from models.checkpoint import load_model

    cfg = TrainConfig(data="digits", model="cnn-tiny", method="pgd-at", eps=0.03, epochs=1, batch_size=128,
                      pgd_steps=2, val_points=20, out=str(tmp_path / "zoo"))
    out = train(cfg, progress=False)
    model, meta = load_model(out / "model")
    assert meta["model"] == "cnn-tiny" and meta["method"] == "pgd-at" and meta["classes"] == 10
    x = torch.rand(3, 1, 8, 8)
    graph = verify.load_onnx(out / "model.onnx")
    lo, hi = verify.bound(graph, x, x, method="ibp")
    torch.testing.assert_close(lo.float(), model(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- training that learns


@pytest.mark.parametrize("method", ["standard", "pgd-at", "trades", "done"])
def test_short_training_on_digits_learns(method, tmp_path):
    cfg = TrainConfig(data="digits", model="mlp-small", method=method, eps=0.05, epochs=5, batch_size=32, lr=3e-3,
                      pgd_steps=3, val_pgd_steps=5, out=str(tmp_path / method))
    out = train(cfg, digits(), progress=False, model_fn=mlp)  # 1497 training points: 46 steps per epoch
    last = run_io.read_metrics(out)[-1]
    assert float(last["val_clean_acc"]) > 0.8, last  # chance is 0.1
    if method != "standard":
        assert float(last["val_pgd_acc"]) > 0.5, last


def test_ibp_training_certifies_points_by_crown(tmp_path):
    eps = 0.03
    cfg = TrainConfig(data="digits", model="mlp-small", method="ibp", eps=eps, epochs=6, batch_size=32, lr=3e-3,
                      warmup_epochs=0.5, ramp_epochs=2.5, kappa_final=0.0, val_pgd_steps=5,
                      out=str(tmp_path / "ibp"))
    splits = digits()
    out = train(cfg, splits, progress=False, model_fn=mlp)
    model = mlp()
    model.load_state_dict(final_state(out)["model"])
    x, y = splits.val.tensors
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    lower, _ = verify.bound(model, lo, hi, C=margin_spec(y, 10, torch.float64), method="crown")
    certified = (lower > 0).all(1).float().mean().item()
    assert certified > 0.3, certified  # chance is 0.1; a standard network certifies almost nothing here
    assert certified <= float(run_io.read_metrics(out)[-1]["val_pgd_acc"]) + 1e-9


@pytest.mark.parametrize("method,inner", [(m, "pgd") for m in ("standard", "pgd-at", "trades", "mart", "gairat",
                                                                "mail", "ibp", "crown-ibp")]
                         + [("done", i) for i in ("pgd", "barrier", "ibp", "crown-ibp")])
def test_every_method_trains(method, inner, tmp_path):
    """Every method and DONE inner problem runs the loop, lowers its loss over 3 short epochs and logs finite
    metrics; the robust columns are filled where the method defines them."""
    cfg = TrainConfig(data="digits", model="mlp-small", method=method, inner=inner, eps=0.03, epochs=3, batch_size=32,
                      lr=5e-3, pgd_steps=3, warmup_epochs=0.0, ramp_epochs=0.0, reweight_start=0.0, val_points=40,
                      val_pgd_steps=2, out=str(tmp_path / "run"))
    out = train(cfg, digits(256, 60), progress=False, model_fn=mlp)
    rows = run_io.read_metrics(out)
    losses = [float(r["train_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    last = rows[-1]
    assert float(last["val_clean_acc"]) > 0.2  # chance is 0.1
    assert (last["train_robust_acc"] != "") == (method != "standard")
    assert (last["val_ibp_certified_acc"] != "") == (method in ("ibp", "crown-ibp") or inner in ("ibp", "crown-ibp"))
    assert (last["log_u"] != "") == (method == "done")
