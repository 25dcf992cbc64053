"""Robustness of a regressor: RMSE under attack and per-input certified error bands from the engine.

For a test input x and radius eps, the engine bounds the deterministic prediction h over the eps-box (CROWN or
alpha-CROWN): ``h(B) in [h_lo, h_hi]``, so ``|h(x') - h(x)| <= band = max(h_hi - h(x), h(x) - h_lo)`` for every x'
of the box, a per-input certificate. A second, usually looser one comes from the local Lipschitz bound
``L >= sup_B ||grad h||_1`` (``verify.lipschitz``, Shi et al., NeurIPS 2022): ``band = L eps + 2 E`` with ``E`` the
float-evaluation allowance over the box (``verify.evaluation_error``; L is a statement about the exact function).
Both hold for the values the model computes in its own precision; a float64 model gets bands tight to ~1e-13, a
float32 one pays worst-case float32 rounding (bounds computed in the model's precision). The certified RMSE bound
is ``sqrt(mean((|h(x) - y| + band)^2))``. The paper's robustness theorem bounds an *expected* sensitivity; only
these per-input bands are called certified.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

import verify
from robust_train.apgd import threat_box
from robust_train.regression_attacks import fgsm, pgd, push, random_search, squared_error
from verify.rounding import up

EPS_GRID = tuple(round(0.05 * k, 2) for k in range(11))  # 0, 0.05, ..., 0.5 on standardised inputs
BAND_METHODS = ("crown", "alpha-crown", "lipschitz")
ATTACKS = ("fgsm", "pgd", "random")


def _precision(model: nn.Module) -> str:
    """float64 models are bounded in float64 (covers their float64 evaluation); float32 ones in float32, so the
    bounds also cover the float32 values the model really computes."""
    p = next(model.parameters())
    return "float64" if p.dtype == torch.float64 else "model"


def engine_band(model: nn.Module, x: Tensor, eps: float, domain: tuple[float, float], method: str = "crown",
                input_shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(h(x), h_lo, h_hi, band)``, float64 ``[B]``: the engine's bounds on the single output over the box."""
    low, high = threat_box(x, eps, *domain)
    shape = tuple(input_shape or x.shape[1:])
    lo, hi = verify.bound(model, low, high, method=method, input_shape=shape, precision=_precision(model))
    with torch.no_grad():
        f = model(x).reshape(-1).double()
    lo, hi = lo.detach().reshape(-1).double(), hi.detach().reshape(-1).double()
    band = up(torch.maximum(hi - f, f - lo)).clamp_min(0.0)  # float64 differences of float32 values are exact
    return f, lo, hi, band


def lipschitz_band(model: nn.Module, x: Tensor, eps: float, domain: tuple[float, float],
                   input_shape: tuple[int, ...] | None = None, method: str = "crown") -> tuple[Tensor, Tensor]:
    """``(L, band)`` float64 ``[B]``: per point the certified local l_inf Lipschitz bound over the box and
    ``L eps + 2 E``."""
    from verify.lipschitz.batch import lipschitz_batch

    shape = tuple(input_shape or x.shape[1:])
    graph = verify.as_graph(model, shape)
    low, high = threat_box(x, eps, *domain)
    L = lipschitz_batch(graph, low, high, method=method).upper  # every box in one pass
    E = verify.evaluation_error(graph, low, high).reshape(-1)
    return L, up(up(L * eps) + 2 * E)


def attacked_points(model: nn.Module, x: Tensor, y: Tensor, eps: float, domain: tuple[float, float], *,
                    steps: int = 20, seed: int = 0) -> dict[str, Tensor]:
    """Adversarial inputs per attack: ``fgsm`` / ``pgd`` / ``random`` on the squared error, and ``pgd-up`` /
    ``pgd-down`` pushing the prediction itself (the extremes a band must contain)."""
    gen = torch.Generator().manual_seed(seed)
    se = squared_error(y)
    return {"fgsm": fgsm(model, x, se, eps, domain),
            "pgd": pgd(model, x, se, eps, steps=steps, domain=domain, generator=gen),
            "random": random_search(model, x, se, eps, domain=domain, generator=gen),
            "pgd-up": pgd(model, x, push(1.0), eps, steps=steps, domain=domain, generator=gen),
            "pgd-down": pgd(model, x, push(-1.0), eps, steps=steps, domain=domain, generator=gen)}


def evaluate_regressor(model: nn.Module, x: Tensor, y: Tensor, *, eps_grid: Sequence[float] = EPS_GRID,
                       bands: Sequence[str] = ("crown",), domain: tuple[float, float] = (-math.inf, math.inf),
                       pgd_steps: int = 20, lipschitz_points: int | None = None, seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> dict:
    """The robustness report of ``model`` (deterministic path, eval mode) on ``x, y`` (standardised units).

    Per eps: RMSE under each attack, and per band method the mean band width, the certified RMSE bound and the
    number of attacked predictions outside the band (``violations``; must be 0, it is checked, not assumed).
    ``lipschitz_points``: the Lipschitz band on the first that many points only.
    """
    model.eval()
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        f = model(x)
    clean_err = (f.double() - y.double()).abs().reshape(-1)
    rows = []
    for eps in eps_grid:
        t0 = time.perf_counter()
        row: dict = {"eps": float(eps)}
        adv = attacked_points(model, x, y, eps, domain, steps=pgd_steps, seed=seed)
        with torch.no_grad():
            preds = {k: model(v).double().reshape(-1) for k, v in adv.items()}
        for a in ATTACKS:
            row[f"rmse_{a}"] = float((preds[a] - y.double().reshape(-1)).square().mean().sqrt())
        for method in bands:
            if method == "lipschitz":
                m = x.shape[0] if lipschitz_points is None else min(lipschitz_points, x.shape[0])
                if m == 0:
                    continue
                _, band = lipschitz_band(model, x[:m], eps, domain, shape)
                idx = slice(0, m)
            else:
                _, _, _, band = engine_band(model, x, eps, domain, method, shape)
                idx = slice(0, x.shape[0])
            key = method.replace("-", "_")
            row[f"band_{key}"] = float(band.mean())
            row[f"band_{key}_max"] = float(band.max())
            row[f"certified_rmse_{key}"] = float((clean_err[idx] + band).square().mean().sqrt())
            center = f.double().reshape(-1)[idx]
            row[f"violations_{key}"] = int(sum(int(((p[idx] - center).abs() > band).sum()) for p in preds.values()))
            row[f"points_{key}"] = int(band.numel())
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if progress is not None:
            progress(_row_text(row, bands))
    return {"points": int(x.shape[0]), "rmse_clean": float(clean_err.square().mean().sqrt()), "rows": rows,
            "bands": list(bands), "attacks": list(ATTACKS), "pgd_steps": pgd_steps}


def _row_text(row: dict, bands: Sequence[str]) -> str:
    parts = [f"eps {row['eps']:.2f}", f"rmse pgd {row['rmse_pgd']:.4f}"]
    for m in bands:
        key = m.replace("-", "_")
        if f"band_{key}" in row:
            parts.append(f"band {m} {row[f'band_{key}']:.4f}")
    return "  ".join(parts) + f"  ({row['seconds']:.1f} s)"
