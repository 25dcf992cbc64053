"""Error breakdown by expert block and frame, and the paper's (physical) unit for the PDE rows."""

import json

import pytest
import torch

from physics.cli import main
from physics.diagnostics import error_breakdown
from physics.errors import PhysicsError
from physics.model import physics_loss
from physics.problems import Fields, make_spec
from physics.router import Router
from physics.train import TrainConfig


def test_breakdown_locates_the_error_and_pools_over_samples():
    g = torch.Generator().manual_seed(0)
    ref = 0.5 + torch.rand(3, 5, 8, generator=g, dtype=torch.float64)
    u = ref.clone()
    u[:, 2:, 2:4] += 0.1  # error only in block 1 of four, from frame 2 on
    block_of = Router((5, 8), (1, 4), torch.ones(40, dtype=torch.bool)).block_of
    out = error_breakdown(u, ref, block_of)
    assert out["block_error_share"] == pytest.approx([0.0, 1.0, 0.0, 0.0])
    want = 100 * (0.1**2 * 3 * 3 * 2 / (ref[:, :, 2:4] ** 2).sum()).sqrt().item()
    assert out["block_rel_l2_pct"][1] == pytest.approx(want, rel=1e-12)
    assert out["block_rel_l2_pct"][0] == out["block_rel_l2_pct"][2] == 0.0
    frames = out["frame_rel_l2_pct"]
    assert frames[:2] == [0.0, 0.0] and all(f > 0 for f in frames[2:])
    assert frames[3] == pytest.approx(100 * (0.1**2 * 6 / (ref[:, 3] ** 2).sum()).sqrt().item(), rel=1e-12)


def test_physical_rows_are_the_horizon_rows_in_seconds_and_the_loss_is_unchanged():
    horizon = make_spec("diffusion-sorption", 9, 16, t_max=400.0, t_ref=500.0)
    physical = make_spec("diffusion-sorption", 9, 16, t_max=400.0, t_ref=500.0, residual_units="physical")
    g = torch.Generator().manual_seed(1)
    u = 0.2 * torch.rand(2, 9, 16, generator=g, dtype=torch.float64)
    data = Fields(u[:, 0].clone())
    (rh, _), (rp, _) = horizon.residuals(u, data), physical.residuals(u, data)
    assert physical.loss_scale() == 500.0 and horizon.loss_scale() == 1.0
    torch.testing.assert_close(rp * 500.0, rh, rtol=1e-12, atol=1e-12)
    a, b = physics_loss(horizon, u, data), physics_loss(physical, u, data)
    torch.testing.assert_close(a.pde, b.pde, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.rows, b.rows, rtol=0, atol=0)
    with pytest.raises(PhysicsError, match="residual units"):
        make_spec("heat", 9, 16, residual_units="minutes")
    with pytest.raises(PhysicsError, match="residual_units"):
        TrainConfig(residual_units="minutes")


def test_cli_reports_errors_by_block_and_draws_them(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pde", "train", "--constraint", "moe", "--experts", "4", "--moe-loss", "stitched", "--residual-units",
            "physical", "--backbone", "mlp", "--width", "16", "--layers", "2", "--basis", "6", "--steps", "2",
            "--points", "40", "--nt", "11", "--nx", "32", "--n-test", "2", "--cache", str(tmp_path / "c"),
            "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(metrics["block_rel_l2_pct"]) == 4 and len(metrics["frame_rel_l2_pct"]) == 11
    assert sum(metrics["block_error_share"]) == pytest.approx(1.0)
    assert (out / "errors.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["residual_units"] == "physical" and cfg["moe_loss"] == "stitched"
    assert main(argv[:2] + ["--residual-units", "minutes", "--out", str(tmp_path / "x")]) == 2
    assert "--residual-units" in capsys.readouterr().err and not (tmp_path / "x").exists()
