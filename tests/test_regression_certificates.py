"""Per-input certified error bands of regressors: every attacked prediction (FGSM, PGD on the error, PGD pushing
the prediction up and down, random search) lies inside the band, for float64 and float32 models, trained and
random; bands shrink to 0 with eps; the float-evaluation allowance covers float32 rounding."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import verify
from models.regressor import build_regressor
from robust_train.regression_eval import attacked_points, engine_band, evaluate_regressor, lipschitz_band


def trained_regressor(dtype: torch.dtype, seed: int = 0):
    """ib-mlp-small fitted for 300 Adam steps to y = sin(2 x0) + x1 x2 on x ~ N(0, I_3): a non-trivial,
    partly saturated ReLU network (random weights alone rarely have unstable neurons at small eps)."""
    g = torch.Generator().manual_seed(seed)
    model = build_regressor("ib-mlp-small", (3,), seed=seed).to(dtype)
    x = torch.randn(512, 3, generator=g, dtype=dtype)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return model.eval().deterministic()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_attacked_prediction_leaves_the_engine_band(dtype):
    """1000 points x 5 attacks x 3 radii for CROWN and alpha-CROWN bands: zero violations."""
    model = trained_regressor(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 3, generator=g, dtype=dtype)
    y = torch.randn(1000, 1, generator=g, dtype=dtype)
    checked = 0
    for eps in (0.05, 0.2, 0.5):
        adv = attacked_points(model, x, y, eps, (-math.inf, math.inf), steps=20, seed=2)
        with torch.no_grad():
            preds = {k: model(v).double().reshape(-1) for k, v in adv.items()}
        for method in ("crown", "alpha-crown"):
            f, lo, hi, band = engine_band(model, x, eps, (-math.inf, math.inf), method)
            for name, p in preds.items():
                assert (p >= lo).all() and (p <= hi).all(), (eps, method, name)
                assert ((p - f).abs() <= band).all(), (eps, method, name)
                checked += p.numel()
            assert float(band.mean()) > 0
    assert checked >= 1000 * 5 * 3 * 2


def test_bands_hold_on_images_in_the_unit_box_and_for_random_networks():
    """A random (1, 8, 8) regressor, inputs in [0, 1] (the box clipped to the domain): no violations."""
    model = build_regressor("ib-mlp", (1, 8, 8), seed=3).double().eval().deterministic()
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.zeros(200, 1, dtype=torch.float64)
    rep = evaluate_regressor(model, x, y, eps_grid=(0.0, 0.02, 0.1), bands=("crown", "lipschitz"),
                             domain=(0.0, 1.0), lipschitz_points=20, pgd_steps=10)
    for row in rep["rows"]:
        assert row["violations_crown"] == 0 and row["violations_lipschitz"] == 0, row
    assert rep["rows"][0]["band_crown"] <= 1e-10  # float64 rounding allowances only
    assert rep["rows"][1]["band_crown"] < rep["rows"][2]["band_crown"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lipschitz_band_contains_attacks_and_is_looser_than_crown(dtype):
    model = trained_regressor(dtype, seed=5)
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(6), dtype=dtype)
    y = torch.zeros(60, 1, dtype=dtype)
    for eps in (0.05, 0.3):
        L, band = lipschitz_band(model, x, eps, (-math.inf, math.inf))
        _, _, _, crown = engine_band(model, x, eps, (-math.inf, math.inf))
        adv = attacked_points(model, x, y, eps, (-math.inf, math.inf), steps=20, seed=7)
        with torch.no_grad():
            f = model(x).double().reshape(-1)
            for p in adv.values():
                assert ((model(p).double().reshape(-1) - f).abs() <= band).all()
        assert (L > 0).all() and float(band.mean()) >= float(crown.mean())


def test_bands_shrink_to_zero_with_eps():
    model = trained_regressor(torch.float64, seed=8)
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    widths = [float(engine_band(model, x, eps, (-math.inf, math.inf))[3].max()) for eps in (1e-1, 1e-3, 1e-6, 0.0)]
    assert widths[0] > widths[1] > widths[2] > 0 and widths[2] < 1e-4 and widths[3] < 1e-10, widths
    _, lip = lipschitz_band(model, x[:5], 1e-6, (-math.inf, math.inf))
    assert float(lip.max()) < 1e-3


@pytest.mark.parametrize("seed", range(3))
def test_evaluation_error_covers_float32_rounding(seed):
    """|fl32(f)(x) - f(x)| <= E at 3000 points of each box (float64 evaluation of the same weights as the exact
    value: its own error is ~1e-16, far below E)."""
    torch.manual_seed(seed)
    model = build_regressor("ib-mlp", (6,), seed=seed).eval().deterministic()
    m64 = copy.deepcopy(model).double()
    x = torch.randn(4, 6) * 3
    for eps in (0.0, 0.1, 1.0):
        lo, hi = x - eps, x + eps
        E = verify.evaluation_error(model, lo, hi)
        assert E.shape == (4, 1) and (E > 0).all()
        u = lo + torch.rand(3000, 4, 6) * (hi - lo)
        u = torch.minimum(torch.maximum(u, lo), hi)
        with torch.no_grad():
            err = (model(u.reshape(-1, 6)).double() - m64(u.reshape(-1, 6).double())).abs().reshape(3000, 4)
        assert (err.max(0).values <= E[:, 0]).all()
    model64 = build_regressor("ib-mlp", (6,), seed=seed).double().eval().deterministic()
    assert float(verify.evaluation_error(model64, x.double() - 0.1, x.double() + 0.1).max()) < 1e-9
