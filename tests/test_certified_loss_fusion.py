"""CROWN-IBP loss fusion (one CROWN row per example bounding the cross-entropy) and training-loss bounds without
rounding allowances (``verify.rounding.training_losses``): the fused loss is an upper bound on the worst-case
cross-entropy, never above the IBP one, differentiable; the allowance-free block is scoped and certificates outside
it stay rigorous."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import verify
from robust_train.apgd import threat_box
from robust_train.attacks import pgd
from robust_train.certified import CertifiedLoss, exp_chords, margin_spec
from robust_train.config import ConfigError, TrainConfig
from tests.helpers import directional_derivatives
from verify.rounding import accounted, training_losses

D = torch.float64


def _cnn(dtype=D, seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)


def _data(n: int = 6, seed: int = 0, dtype=D) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 5, 5, generator=gen, dtype=dtype), torch.randint(0, 4, (n,), generator=gen)


def test_exp_chords_lie_above_exp_on_their_ranges():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 5, generator=gen, dtype=D) * 10
    w = torch.rand(64, 5, generator=gen, dtype=D) * 20
    w[:8] = 0.0  # degenerate ranges: the tangent
    w[8:16] = 1e-6  # tiny ranges: the series branch
    b = a + w
    slope, shift, const = exp_chords(a, b)
    assert (shift >= 0).all() and (shift >= b.amax(1) - 1e-12).all()
    # recover each chord's intercept: c_j = exp(a_j - M) - s_j a_j (the sum of them is const)
    per_term = torch.exp(a - shift[:, None]) - slope * a
    torch.testing.assert_close(per_term.sum(1), const, rtol=1e-12, atol=1e-15)
    for t in torch.linspace(0, 1, 41, dtype=D):
        d = a + t * w
        exact = torch.exp(d - shift[:, None])
        line = slope * d + per_term
        assert (line >= exact - 1e-13 * (1 + exact)).all(), float((exact - line).max())
    # at both ends the chord meets exp (it is the chord, not a looser line)
    torch.testing.assert_close(slope * b + per_term, torch.exp(b - shift[:, None]), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_fused_loss_bounds_the_worst_case_cross_entropy_and_never_exceeds_the_ibp_one(eps):
    model = _cnn()
    x, y = _data(8)
    fused = CertifiedLoss(model, (1, 5, 5), "crown-ibp", loss_fusion=True)
    plain_ibp = CertifiedLoss(model, (1, 5, 5), "ibp")
    with torch.no_grad():
        bound, m_lo = fused.fused_loss(x, y, eps, beta=1.0)
        ibp_ce = plain_ibp(x, y, eps, kappa=0.0)[0]
    assert (bound <= ibp_ce + 1e-12).all()
    low, high = threat_box(x, eps)
    gen = torch.Generator().manual_seed(3)
    worst = F.cross_entropy(model(x), y, reduction="none")
    for _ in range(200):
        pt = low + (high - low) * torch.rand(x.shape, generator=gen, dtype=D)
        worst = torch.maximum(worst, F.cross_entropy(model(pt), y, reduction="none").detach())
    adv = pgd(model, x, y, eps, steps=40, generator=gen)
    worst = torch.maximum(worst, F.cross_entropy(model(adv), y, reduction="none").detach())
    assert (bound >= worst).all(), (bound - worst).min()
    # the returned margins are IBP lower bounds
    true = torch.einsum("bsk,bk->bs", margin_spec(y, 4, D), model(x)).detach()
    assert (m_lo <= true).all()
    # beta mixes with the IBP loss: beta 0 is the IBP loss
    with torch.no_grad():
        torch.testing.assert_close(fused.fused_loss(x, y, eps, beta=0.0)[0], ibp_ce, rtol=1e-12, atol=1e-12)


def test_fused_loss_is_tighter_than_ibp_somewhere_and_faster_rows():
    """One CROWN row per example: on a trained-like (small eps) problem the fused bound improves on IBP."""
    model = _cnn(seed=4)
    x, y = _data(16, seed=2)
    fused = CertifiedLoss(model, (1, 5, 5), "crown-ibp", loss_fusion=True)
    with torch.no_grad():
        bound, _ = fused.fused_loss(x, y, 0.02)
        ibp = CertifiedLoss(model, (1, 5, 5), "ibp")(x, y, 0.02, kappa=0.0)[0]
    assert (bound < ibp - 1e-9).any()


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_fused_loss_gradients_reach_every_parameter_and_match_finite_differences(beta):
    model = _cnn()
    x, y = _data(6)
    loss_fn = CertifiedLoss(model, (1, 5, 5), "crown-ibp", loss_fusion=True)

    def total():
        return loss_fn(x, y, 0.05, 0.3, beta)[0].mean()

    params = list(model.parameters())
    for g in torch.autograd.grad(total(), params):
        assert g.abs().sum() > 0, "a parameter gets no gradient"
    torch.manual_seed(5)
    for k in range(3):  # central differences along random directions of all parameters at once
        an, fd = directional_derivatives(total(), total, params)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (k, fd, an)


def test_training_losses_are_scoped_and_certificates_stay_rigorous():
    """Inside the block the float32 bounds drop their allowances (tighter); outside, the same call is rigorous
    again, also after an exception inside; the loss's bounds contain the float64 values but the validation
    certificate (margins called directly) is the rigorous one."""
    model = _cnn(torch.float32, seed=7)
    x, y = _data(4, dtype=torch.float32)
    lo, hi = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    rigorous = verify.bound(model, lo, hi, method="crown", precision="model")
    assert accounted()
    with training_losses():
        assert not accounted()
        loose_free = verify.bound(model, lo, hi, method="crown", precision="model")
    assert accounted()
    assert (loose_free[0] >= rigorous[0]).all() and (loose_free[1] <= rigorous[1]).all()
    assert (loose_free[0] > rigorous[0]).any()  # the allowances were really skipped
    with pytest.raises(RuntimeError), training_losses():
        raise RuntimeError("inside")
    assert accounted()
    again = verify.bound(model, lo, hi, method="crown", precision="model")
    torch.testing.assert_close(again[0], rigorous[0], rtol=0, atol=0)
    loss_fn = CertifiedLoss(model, (1, 5, 5), "ibp")
    torch.testing.assert_close(loss_fn.margins(x, y, 0.01, beta=0.0),
                               verify.bound(model, *threat_box(x, 0.01), C=margin_spec(y, 4), method="ibp",
                                            precision="model", bound_upper=False)[0], rtol=0, atol=0)


def test_loss_fusion_option_is_checked_and_reaches_the_method():
    with pytest.raises(ConfigError, match="true or false"):
        TrainConfig(method="crown-ibp", loss_fusion="yes")
    from robust_train.cli import add_parser, build_config
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    cfg = build_config(parser.parse_args(["train", "--method", "crown-ibp", "--loss-fusion"]))
    assert cfg.loss_fusion is True
    assert build_config(parser.parse_args(["train", "--method", "crown-ibp"])).loss_fusion is False
    from robust_train.distributed import Collective
    from robust_train.methods import build_method
    method = build_method(cfg, _cnn(torch.float32), (1, 5, 5), Collective())
    assert method.bound.loss_fusion is True


def test_training_steps_benchmark_prints_every_method_as_json():
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "training_steps.py"
    out = subprocess.run([sys.executable, str(script), "--repeats", "1", "--no-peer", "--json"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    steps = json.loads(out.strip().splitlines()[-1])
    rows = {(r["tool"], r["method"]): r for r in steps["rows"]}
    assert set(rows) == {("torch", "standard"), ("torch", "ibp (minimal)")} | {("clarke", m) for m in
                                                    ("standard", "ibp", "crown-ibp", "crown-ibp+fusion", "pgd-at",
                                                     "done")}
    assert all(r["ms"] > 0 and r["x_plain"] > 0 for r in rows.values())
    assert rows[("clarke", "standard")]["x_clarke_standard"] == 1.0
