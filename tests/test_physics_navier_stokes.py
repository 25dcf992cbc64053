"""Navier-Stokes (vorticity form) as a hard-constraint training problem: spec, LM solve, IFT gradient, training."""

import argparse
import json
import math

import numpy as np
import torch

from models.mlp_basis import MLPBasis
from physics.cli import add_parser
from physics.gen_navier_stokes import NavierStokes2D, grf_2d
from physics.implicit import SolverConfig
from physics.layer import HardConstraintMoE
from physics.lm import LMConfig
from physics.model import physics_loss
from physics.problems import Fields, NavierStokes
from physics.router import normalise_experts
from physics.train import TrainConfig, sample_fields, train, train_spec
from tests.helpers import directional_derivatives


def test_spec_residual_is_the_reference_solvers_residual():
    """Features + pointwise f reproduce NavierStokes2D.residual (spectral in space, central differences in time)
    on a generated trajectory, and the hard-constraint ansatz keeps the initial condition exactly."""
    solver = NavierStokes2D(16, nu=1e-3, t_max=1.0, nt=6, dt=1e-2)
    w = solver.solve(grf_2d(16, np.random.default_rng(0)))
    spec = NavierStokes(nt=6, nx=16, t_max=1.0, nu=1e-3)
    u = torch.tensor(w)[None]
    r, ic = spec.residuals(u, Fields(u[:, 0]))
    ref = solver.residual(w)
    assert np.abs(r.numpy().reshape(ref.shape) - ref).max() < 1e-12 * np.abs(ref).max() + 1e-14
    assert ic.abs().max() == 0
    b = torch.randn(1, 6, 16, 16, 3, dtype=torch.float64)
    bt = spec.basis(b)
    assert bt[:, 0].abs().max() == 0 and bt.mean(dim=(2, 3)).abs().max() < 1e-15  # exact IC, zero-mean vorticity
    assert normalise_experts(4, 3) == (1, 2, 2) and normalise_experts(2, 3) == (1, 1, 2)


def _ns_setup(seed=0):
    torch.manual_seed(seed)
    spec = NavierStokes(nt=4, nx=8, t_max=1.0, nu=1e-2)
    net = MLPBasis(4, 3, width=8, depth=2, final_activation=True).double()
    rng = np.random.default_rng(seed)
    data = Fields(torch.tensor(np.stack([grf_2d(8, rng) for _ in range(2)])))
    return spec, net, data


def test_moe_on_space_blocks_converges_and_has_exact_gradients():
    """2 x 2 spatial experts: every LM solve converges on the quadratic residual, the solved residual is far
    below the IC-only field's, and the IFT gradient of the training loss matches central finite differences."""
    spec, net, data = _ns_setup()
    cfg = SolverConfig(lm=LMConfig(max_iter=200, gtol=1e-13, xtol=1e-15, on_fail="raise"))
    layer = HardConstraintMoE(spec, (1, 2, 2), 30, cfg)
    assert layer.K == 4
    params = list(net.parameters())

    def loss_fn():
        u, info = layer(net(spec.inputs(data)), data, step=0, sample_ids=[0, 1])
        return physics_loss(spec, u, data, info).total(), info

    loss, info = loss_fn()
    assert info.converged.all() and info.converged.numel() == 8
    r0, _ = spec.residuals(data.u0[:, None].expand(-1, 4, -1, -1), data)  # w = w0 (all coefficients 0)
    assert info.residual.pow(2).mean() < 0.5 * r0.pow(2).mean()
    analytic, fd = directional_derivatives(loss, lambda: loss_fn()[0], params)
    assert math.isclose(analytic, fd, rel_tol=1e-5), (analytic, fd)


def small(**kw) -> TrainConfig:
    base = dict(
        problem="navier-stokes",
        basis=6,
        width=8,
        layers=2,
        modes=4,
        nt=6,
        nx=16,
        steps=20,
        batch=2,
        points=300,
        n_test=2,
        lr=3e-3,
        max_iter=50,
        gtol=1e-10,
    )
    return TrainConfig(**{**base, **kw})


def _loss(model, cfg):
    """PDE + initial-condition loss on held-out initial vorticities (w = 0 solves the PDE alone)."""
    spec = train_spec(cfg)
    data = sample_fields(cfg, spec, 999, [0, 1])
    with torch.no_grad():
        u, info = model(data, 999, [0, 1])
    return physics_loss(spec, u, data, info).total().item()


def test_tiny_training_moe_beats_soft_constraint():
    cfg = small(constraint="moe", experts=(1, 2, 2))
    model, hist = train(cfg, log=None)
    assert all(np.isfinite(hist["loss"])) and sum(hist["nonconverged"]) == 0
    assert np.mean(hist["loss"][-5:]) < np.mean(hist["loss"][:5])
    soft_cfg = small(constraint="soft")
    soft, _ = train(soft_cfg, log=None)
    assert _loss(model, cfg) < 0.3 * _loss(soft, soft_cfg)


def test_cli_trains_and_evaluates_navier_stokes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = "pde train --problem navier-stokes --constraint moe --experts 1,2,2 --basis 4 --width 8 --layers 1"
    argv += f" --modes 3 --nt 5 --nx 8 --steps 2 --points 50 --batch 2 --n-test 1 --cache {tmp_path / 'c'}"
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args([*argv.split(), "--out", str(out)])
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["test_rel_l2_pct"]) and (out / "fields.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["experts"] == [1, 2, 2]
    capsys.readouterr()
