"""Tiny end-to-end runs of the trainer and the ``pde`` CLI (diffusion-sorption, CPU-sized)."""

import argparse
import json

import numpy as np
import pytest
import torch

from physics.cli import add_parser, main
from physics.errors import PhysicsError
from physics.model import physics_loss
from physics.train import TrainConfig, is_spike, sample_fields, train, train_spec


def small(**kw) -> TrainConfig:
    base = dict(
        problem="diffusion-sorption",
        basis=6,
        backbone="fno",
        width=16,
        layers=2,
        nt=11,
        nx=32,
        steps=25,
        batch=4,
        points=80,
        experts=4,
        n_test=2,
        lr=3e-3,
        max_iter=30,
    )
    return TrainConfig(**{**base, **kw})


def _fixed_loss(model, cfg, total=False):
    """Physics loss (PDE term, or PDE + IC/BC/interface rows) on a fixed held-out batch of initial conditions."""
    spec = train_spec(cfg)
    ids = [0, 1, 2, 3]
    data = sample_fields(cfg, spec, 999, ids)
    with torch.no_grad():
        u, info = model(data, 999, ids)
    parts = physics_loss(spec, u, data, info)
    return parts.total().item() if total else parts.pde.mean().item()


def test_hard_constraint_training_reduces_the_loss_and_beats_soft_residual():
    cfg = small(constraint="moe")
    initial, _ = train(small(constraint="moe", steps=0), log=None)  # same seed: the untrained model
    model, hist = train(cfg, log=None)
    assert len(hist["loss"]) == cfg.steps and all(np.isfinite(hist["loss"]))
    assert _fixed_loss(model, cfg, total=True) < 0.5 * _fixed_loss(initial, cfg, total=True)
    soft_cfg = small(constraint="soft")
    soft, _ = train(soft_cfg, log=None)
    # After the same budget the hard-constrained residual is far below the soft model's.
    assert _fixed_loss(model, cfg) < 0.1 * _fixed_loss(soft, soft_cfg)


def _parse(argv):
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def test_cli_train_then_eval_writes_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "pde",
        "train",
        "--constraint",
        "hard",
        "--backbone",
        "mlp",
        "--width",
        "16",
        "--layers",
        "2",
        "--basis",
        "6",
        "--steps",
        "3",
        "--points",
        "100",
        "--nt",
        "11",
        "--nx",
        "32",
        "--n-test",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    args = _parse(argv)
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_rel_l2_pct"] > 0 and (out / "fields.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["pde", "eval", str(out), "--no-plots"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["test_rel_l2_pct"] == pytest.approx(metrics["test_rel_l2_pct"], rel=1e-9)


def test_every_cli_option_has_help_text():
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command"))
    pde = ap._subparsers._group_actions[0].choices["pde"]
    commands = pde._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "eval"}
    for parser in commands.values():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (parser.prog, action.dest)


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = main(["pde", "train", "--problem", "burgers", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("clarke: error: unknown problem 'burgers'") and err.count("\n") == 1
    rc = main(["pde", "train", "--experts", "100", "--nx", "32", "--out", str(tmp_path)])
    assert rc == 2 and "too large for grid" in capsys.readouterr().err
    assert main(["pde", "eval", str(tmp_path / "missing")]) == 2


def test_config_validation():
    with pytest.raises(PhysicsError, match="unknown constraint"):
        TrainConfig(constraint="medium")
    with pytest.raises(PhysicsError, match="unknown placement"):
        TrainConfig(placement="pipeline")
    for bad in (0.5, 1.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(PhysicsError, match="skip_spikes"):
            TrainConfig(skip_spikes=bad)
    assert TrainConfig(skip_spikes=0).skip_spikes == 0


def test_a_loss_spike_is_a_loss_above_factor_times_the_recent_median():
    history = [1.0, 2.0, 3.0] * 10  # median 2
    assert not is_spike(5.9, history, 3.0) and is_spike(6.1, history, 3.0)
    assert not is_spike(1e9, history, 0.0)  # off
    assert not is_spike(1e9, history[:19], 3.0)  # before the warm-up steps
    assert is_spike(6.1, [100.0] * 30 + [2.0] * 50, 3.0)  # only the last 50 losses count


def test_skipped_steps_are_recorded_and_leave_the_weights_alone():
    """With a factor just above 1 about half of the steps after the warm-up are skipped: the history says
    which, and the weights differ from the run that took every step; with factor 0 nothing is skipped."""
    cfg = small(constraint="hard", backbone="mlp", width=8, layers=2, steps=26, points=40, nt=7, nx=16)
    eager, h0 = train(TrainConfig(**{**cfg.__dict__, "skip_spikes": 0.0}), log=None)
    skipping, h1 = train(TrainConfig(**{**cfg.__dict__, "skip_spikes": 1.0001}), log=None)
    assert sum(h0["skipped"]) == 0 and len(h1["skipped"]) == cfg.steps
    assert sum(h1["skipped"][:20]) == 0 and sum(h1["skipped"]) >= 1
    first = h1["skipped"].index(1)
    assert h1["loss"][: first + 1] == h0["loss"][: first + 1]  # identical until the first skipped update
    assert h1["loss"][first + 1] != h0["loss"][first + 1]
    p0, p1 = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (eager, skipping))
    assert not torch.equal(p0, p1)


@pytest.mark.slow
def test_hard_constraint_is_far_more_accurate_than_soft_constraint():
    """Relative L2 against held-out reference solutions after a short CPU training (a few minutes)."""
    from physics.train import evaluate

    errs = {}
    for constraint in ("soft", "hard"):
        cfg = small(
            constraint=constraint,
            backbone="fno",
            width=32,
            layers=3,
            basis=8,
            nt=21,
            nx=64,
            steps=150,
            points=1000,
            n_test=4,
            max_iter=50,
            lr=1e-3,
        )
        model, _ = train(cfg, log=None)
        errs[constraint] = evaluate(cfg, model.backbone)["test_rel_l2_pct"]
    assert errs["hard"] < 0.5 * errs["soft"], errs


def test_learning_curve_points_leave_training_unchanged_and_end_at_the_final_evaluation(tmp_path):
    """eval_every records the held-out error every k steps; the losses equal a run without it (evaluation must
    not consume the training's random state or leave the backbone in eval mode), and the last point is the
    final model's evaluation."""
    from physics.train import evaluate

    cfg = small(constraint="moe", steps=6, nt=7, nx=16, points=30, cache_dir=str(tmp_path))
    plain, h0 = train(cfg, log=None)
    curved, h1 = train(TrainConfig(**{**cfg.__dict__, "eval_every": 3}), log=None)
    assert h0["eval"] == [] and [e["step"] for e in h1["eval"]] == [3, 6]
    assert h1["loss"] == h0["loss"]
    assert curved.backbone.training
    final = evaluate(cfg, curved.backbone)
    assert h1["eval"][-1]["test_rel_l2_pct"] == pytest.approx(final["test_rel_l2_pct"], rel=1e-12)
    assert h1["eval"][-1]["block_rel_l2_pct"] == pytest.approx(final["block_rel_l2_pct"], rel=1e-12)
    assert h1["eval"][0]["test_rel_l2_pct"] != h1["eval"][1]["test_rel_l2_pct"]
    with pytest.raises(PhysicsError, match="eval_every"):
        TrainConfig(eval_every=-1)
