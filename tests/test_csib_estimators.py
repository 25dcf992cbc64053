"""Oracles for the CS-IB estimators (docs/robust_training.md section 4.7; Yu et al., ICLR 2024)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from robust_train.csib_estimators import (
    KernelWidths,
    as_2d,
    cs_conditional_divergence,
    cs_divergence,
    cs_mutual_information,
    gaussian_gram,
    log_gaussian_gram,
    median_sigma,
)

F64 = torch.float64


def _data(seed: int, n: int = 40, dx: int = 3, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor, Tensor]:
    """x, a nonlinear 1-D target y(x) and a noisy prediction y_hat."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=F64)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.1 * torch.randn(n, generator=g, dtype=F64)
    y_hat = y + 0.3 * torch.randn(n, generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype), y_hat.to(dtype)


def _naive_conditional(x: Tensor, y: Tensor, y_hat: Tensor, sx: float, sy: float, norm: str) -> float:
    """Prop. 1 written literally with explicit Gram products (no log space), for a cross-check."""
    k = gaussian_gram(x, sigma=sx)
    l1 = gaussian_gram(y, sigma=sy)
    l2 = gaussian_gram(y_hat, sigma=sy)
    l21 = gaussian_gram(y_hat, y, sigma=sy)  # l21[j, i] = k(y_hat_j, y_i)
    s = k.sum(1) ** 2 if norm == "paper" else (k**2).sum(1)

    def term(lm: Tensor) -> Tensor:
        return torch.log(((k * lm).sum(1) / s).sum())

    return float(term(l1) + term(l2) - 2 * term(l21))


def _naive_mi(x: Tensor, t: Tensor, sx: float, st: float) -> float:
    """Prop. 2 written literally with matrix products and the N powers kept."""
    k = gaussian_gram(x, sigma=sx)
    q = gaussian_gram(t, sigma=st)
    n = k.shape[0]
    one = torch.ones(n, dtype=k.dtype)
    return float(
        torch.log(torch.trace(k @ q) / n**2)
        + torch.log((one @ k @ one) * (one @ q @ one) / n**4)
        - 2 * torch.log(one @ k @ q @ one / n**3)
    )


# --- kernel and shapes -------------------------------------------------------------------------------------


def test_gram_is_n_by_n_for_1d_inputs_and_matches_formula() -> None:
    a = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    g = gaussian_gram(a, sigma=2.0)
    assert g.shape == (3, 3)
    expected = torch.exp(-((a[:, None] - a[None, :]) ** 2) / (2 * 4.0))
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(g, gaussian_gram(a[:, None], sigma=2.0))
    torch.testing.assert_close(log_gaussian_gram(a, sigma=2.0), torch.log(expected))
    b = torch.tensor([0.5, 2.0], dtype=F64)
    assert gaussian_gram(a, b, sigma=1.0).shape == (3, 2)


def test_as_2d_reshapes_and_flattens() -> None:
    assert as_2d(torch.zeros(5)).shape == (5, 1)
    assert as_2d(torch.zeros(5, 2)).shape == (5, 2)
    assert as_2d(torch.zeros(5, 2, 3, 4)).shape == (5, 24)
    img = torch.randn(6, 1, 4, 4, dtype=F64)
    torch.testing.assert_close(gaussian_gram(img, sigma=3.0), gaussian_gram(img.reshape(6, 16), sigma=3.0))


def test_median_sigma_and_kernel_widths() -> None:
    # pairwise distances 1, 3, 2 -> median 2 (plain Euclidean, no squaring, no 1/2)
    assert median_sigma(torch.tensor([0.0, 1.0, 3.0])) == pytest.approx(2.0)
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 10, 5 -> 5
    assert median_sigma(pts) == pytest.approx(5.0)
    x, y, _ = _data(0)
    w = KernelWidths.from_batch(x, y, t=x[:, :2])
    assert isinstance(w.x, float) and w.x == pytest.approx(median_sigma(x))
    assert w.y == pytest.approx(median_sigma(y)) and w.t == pytest.approx(median_sigma(x[:, :2]))
    assert KernelWidths.unit() == KernelWidths(1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        median_sigma(torch.zeros(5, 2))
    with pytest.raises(ValueError):
        KernelWidths(x=0.0, y=1.0)


# --- agreement with the literal formulas ---------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["paper", "reference"])
def test_conditional_matches_literal_prop1(norm: str) -> None:
    x, y, y_hat = _data(1)
    got = float(cs_conditional_divergence(x, y, y_hat, 1.3, 0.7, normalization=norm))
    assert got == pytest.approx(_naive_conditional(x, y, y_hat, 1.3, 0.7, norm), rel=1e-10, abs=1e-12)
    assert abs(got) > 1e-3  # non-trivial value, so the comparison means something


def test_mi_matches_literal_prop2_and_normalised_form() -> None:
    x, y, _ = _data(2)
    t = torch.tanh(x @ torch.tensor([[1.0, -0.5], [0.3, 0.8], [0.0, 0.2]], dtype=F64))
    got = float(cs_mutual_information(x, t, 1.5, 0.8))
    assert got == pytest.approx(_naive_mi(x, t, 1.5, 0.8), rel=1e-10)
    norm = float(cs_mutual_information(x, t, 1.5, 0.8, normalized=True))
    expected = got / math.sqrt(_naive_mi(x, x, 1.5, 1.5) * _naive_mi(t, t, 0.8, 0.8))
    assert norm == pytest.approx(expected, rel=1e-10)
    assert float(cs_mutual_information(x, x, 1.5, 1.5, normalized=True)) == pytest.approx(1.0, rel=1e-12)
    assert float(cs_mutual_information(x, t, 1.5, 0.8, base=2)) == pytest.approx(got / math.log(2), rel=1e-12)


# --- section 4.7 oracles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_mi_nonnegative_and_informative_code_scores_higher(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    n = 30 + 10 * seed
    x = torch.randn(n, 4, generator=g, dtype=F64)
    t_indep = torch.randn(n, 2, generator=g, dtype=F64)
    t_info = torch.tanh(x[:, :2] * 1.5)
    for sx, st in [(0.1, 0.1), (1.0, 1.0), (median_sigma(x), median_sigma(t_indep)), (10.0, 0.5)]:
        assert float(cs_mutual_information(x, t_indep, sx, st)) >= -1e-6
        assert float(cs_mutual_information(x, t_info, sx, st)) >= -1e-6
    sx, st = median_sigma(x), median_sigma(t_info)
    assert float(cs_mutual_information(x, t_info, sx, st)) > float(cs_mutual_information(x, t_indep, sx, st))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("norm", ["paper", "reference"])
def test_conditional_is_zero_when_prediction_is_exact(norm: str, dtype: torch.dtype) -> None:
    for seed in range(3):
        x, y, _ = _data(seed, dtype=dtype)
        for sx, sy in [(1.0, 1.0), (0.2, 0.05), (3.0, 2.0)]:
            d = cs_conditional_divergence(x, y, y.clone(), sx, sy, normalization=norm)
            assert d.dim() == 0 and d.dtype == dtype
            assert abs(float(d)) <= 1e-6


@pytest.mark.parametrize("norm", ["paper", "reference"])
def test_small_sigma_limit_is_mse_over_sigma_squared(norm: str) -> None:
    # Small-sigma regime: sigma well below the spacing of x and of y (Grams ~ identity) and errors well below sigma.
    # Then D_CS -> -2 log mean_j exp(-e_j^2 / (2 sigma^2)) ~= MSE / sigma^2 in nats (doc 4.7: 2 % at N=50,
    # sigma=0.3), with one sigma for every kernel. The reference-bug value SSE/(sigma^2 ln 2) is 72x larger.
    n = 50
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=F64)
    y = 2.0 * torch.arange(n, dtype=F64)
    e = 0.05 * torch.randn(n, generator=g, dtype=F64)
    mse = float((e**2).mean())
    for sigma in (0.3, 0.1):
        d = float(cs_conditional_divergence(x, y, y + e, sigma, sigma, normalization=norm))
        exact_limit = float(-2 * torch.log(torch.exp(-(e**2) / (2 * sigma**2)).mean()))
        assert d == pytest.approx(exact_limit, rel=1e-3)
        if sigma == 0.3:
            assert d == pytest.approx(mse / sigma**2, rel=0.02)
            assert d < 0.1 * n * mse / (sigma**2 * math.log(2))
        else:
            # at sigma = 0.1 the errors are no longer << sigma; Jensen puts D_CS below MSE/sigma^2 (doc: 0.240/0.275)
            assert 0.8 * mse / sigma**2 < d < mse / sigma**2


def test_1d_and_column_targets_agree() -> None:
    x, y, y_hat = _data(3)
    for norm in ("paper", "reference"):
        a = cs_conditional_divergence(x, y, y_hat, 1.0, 0.5, normalization=norm)
        b = cs_conditional_divergence(x, y[:, None], y_hat[:, None], 1.0, 0.5, normalization=norm)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        cs_mutual_information(x[:, 0], y, 1.0, 0.5), cs_mutual_information(x[:, :1], y[:, None], 1.0, 0.5)
    )


@pytest.mark.parametrize("norm", ["paper", "reference"])
def test_conditional_depends_on_x_kernel(norm: str) -> None:
    # Guards the reference shape bug (doc 4.6): there the x-kernel cancelled and D_CS = SSE / (sigma^2 ln 2).
    x, y, y_hat = _data(4)
    x_other = torch.randn(x.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    base = float(cs_conditional_divergence(x, y, y_hat, 1.0, 0.5, normalization=norm))
    other_x = float(cs_conditional_divergence(x_other, y, y_hat, 1.0, 0.5, normalization=norm))
    other_sx = float(cs_conditional_divergence(x, y, y_hat, 0.3, 0.5, normalization=norm))
    assert abs(other_x - base) > 1e-3 * abs(base)
    assert abs(other_sx - base) > 1e-3 * abs(base)
    sse_bits = float(((y_hat - y) ** 2).sum()) / (0.5**2 * math.log(2))
    for d in (base, other_x, other_sx):
        assert abs(d / math.log(2) - sse_bits) > 0.1 * sse_bits  # the collapsed value is in bits


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gradients_finite_as_sigma_shrinks(dtype: torch.dtype) -> None:
    for sigma in (1e-1, 1e-2, 1e-3):
        x, y, y_hat = _data(5, n=24, dtype=dtype)
        x.requires_grad_(True)
        y_hat.requires_grad_(True)
        t = torch.tanh(x[:, :2]).detach().requires_grad_(True)
        sig = torch.tensor(sigma, dtype=dtype, requires_grad=True)
        loss = (
            cs_conditional_divergence(x, y, y_hat, sig, sig)
            + cs_conditional_divergence(x, y, y_hat, sigma, sigma, normalization="reference")
            + cs_mutual_information(x, t, sig, sig)
            + cs_mutual_information(x, t, sigma, sigma, normalized=True)
        )
        assert torch.isfinite(loss)
        loss.backward()
        for grad in (x.grad, y_hat.grad, t.grad, sig.grad):
            assert grad is not None and bool(torch.isfinite(grad).all())
        assert float(y_hat.grad.abs().sum()) > 0  # the prediction term still pulls y_hat


def test_permutation_invariance() -> None:
    x, y, y_hat = _data(6, n=45)
    t = torch.tanh(x[:, 1:])
    perm = torch.randperm(45, generator=torch.Generator().manual_seed(1))
    for norm in ("paper", "reference"):
        torch.testing.assert_close(
            cs_conditional_divergence(x, y, y_hat, 0.9, 0.4, normalization=norm),
            cs_conditional_divergence(x[perm], y[perm], y_hat[perm], 0.9, 0.4, normalization=norm),
            rtol=1e-10,
            atol=1e-12,
        )
    for normalized in (False, True):
        torch.testing.assert_close(
            cs_mutual_information(x, t, 0.9, 0.4, normalized=normalized),
            cs_mutual_information(x[perm], t[perm], 0.9, 0.4, normalized=normalized),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize("norm", ["paper", "reference"])
def test_conditional_grows_with_prediction_noise(norm: str) -> None:
    levels = (0.1, 0.3, 1.0)
    means = []
    for level in levels:
        vals = []
        for seed in range(5):
            x, y, _ = _data(10 + seed, n=40)
            noise = torch.randn(40, generator=torch.Generator().manual_seed(50 + seed), dtype=F64)
            d = float(cs_conditional_divergence(x, y, y + level * noise, 1.0, 0.5, normalization=norm))
            assert d >= -0.05  # doc 4.7: the conditional estimator may dip slightly below 0
            vals.append(d)
        means.append(sum(vals) / len(vals))
    assert means[0] < means[1] < means[2], means


def test_float32_matches_float64() -> None:
    x, y, y_hat = _data(7, n=60)
    t = torch.tanh(x[:, :2] + 0.5 * x[:, 2:])
    sx, sy, st = median_sigma(x), median_sigma(y), median_sigma(t)
    for norm in ("paper", "reference"):
        d64 = float(cs_conditional_divergence(x, y, y_hat, sx, sy, normalization=norm))
        d32 = float(cs_conditional_divergence(x.float(), y.float(), y_hat.float(), sx, sy, normalization=norm))
        assert d32 == pytest.approx(d64, rel=1e-4)
    for normalized in (False, True):
        i64 = float(cs_mutual_information(x, t, sx, st, normalized=normalized))
        i32 = float(cs_mutual_information(x.float(), t.float(), sx, st, normalized=normalized))
        assert i32 == pytest.approx(i64, rel=1e-4)


def test_translation_invariant_in_float32_at_small_width() -> None:
    # Large offsets with a small width: a ||a||^2 + ||b||^2 - 2ab distance would lose every digit here.
    n = 50
    g = torch.Generator().manual_seed(11)
    x = torch.round(torch.randn(n, 2, generator=g, dtype=F64) * 1024) / 1024  # exact in float32 after +1024
    y = torch.round(torch.randn(n, generator=g, dtype=F64) * 1024) / 1024
    y_hat = y + torch.round(0.3 * torch.randn(n, generator=g, dtype=F64) * 1024) / 1024
    for sigma in (0.05, 1e-2):
        ref = float(cs_conditional_divergence(x, y, y_hat, 0.2, sigma))
        got = cs_conditional_divergence((x + 1024).float(), (y + 1024).float(), (y_hat + 1024).float(), 0.2, sigma)
        assert float(got) == pytest.approx(ref, rel=1e-4)
        ref_mi = float(cs_mutual_information(x, y, 0.2, sigma))
        got_mi = cs_mutual_information((x + 1024).float(), (y + 1024).float(), 0.2, sigma)
        assert float(got_mi) == pytest.approx(ref_mi, rel=1e-4)


def test_bits_option() -> None:
    x, y, y_hat = _data(8)
    nats = float(cs_conditional_divergence(x, y, y_hat, 1.0, 0.5))
    assert float(cs_conditional_divergence(x, y, y_hat, 1.0, 0.5, base=2)) == pytest.approx(nats / math.log(2))


def test_marginal_divergence_symmetric_and_zero_on_equal_samples() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 2, generator=g, dtype=F64)
    b = torch.randn(20, 2, generator=g, dtype=F64) + 0.7
    assert float(cs_divergence(a, b, 1.0)) == pytest.approx(float(cs_divergence(b, a, 1.0)), rel=1e-12)
    assert float(cs_divergence(a, b, 1.0)) > 0.01
    assert abs(float(cs_divergence(a, a.clone(), 1.0))) < 1e-12


# --- bad inputs ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error() -> None:
    x, y, y_hat = _data(9, n=10)
    t = x[:, :2]
    bad_nan = x.clone()
    bad_nan[3, 1] = float("nan")
    bad_inf = y.clone()
    bad_inf[0] = float("inf")
    calls = [
        lambda: cs_conditional_divergence(x[:1], y[:1], y_hat[:1], 1.0, 1.0),  # batch of 1
        lambda: cs_mutual_information(x[:1], t[:1], 1.0, 1.0),
        lambda: cs_conditional_divergence(bad_nan, y, y_hat, 1.0, 1.0),
        lambda: cs_conditional_divergence(x, bad_inf, y_hat, 1.0, 1.0),
        lambda: cs_conditional_divergence(x, y, -bad_inf, 1.0, 1.0),
        lambda: cs_mutual_information(bad_nan, t, 1.0, 1.0),
        lambda: cs_mutual_information(x, bad_nan[:, :2], 1.0, 1.0),
        lambda: cs_conditional_divergence(x, y[:9], y_hat, 1.0, 1.0),  # mismatched N
        lambda: cs_conditional_divergence(x, y, y_hat[:8], 1.0, 1.0),
        lambda: cs_mutual_information(x, t[:9], 1.0, 1.0),
        lambda: gaussian_gram(bad_nan, sigma=1.0),
        lambda: median_sigma(x[:1]),
        lambda: cs_conditional_divergence(x, y, y_hat, 1.0, 1.0, normalization="bogus"),  # type: ignore[arg-type]
        lambda: cs_conditional_divergence(x, y, y_hat, 1.0, 1.0, base=1),
    ]
    for sigma in (0.0, -1.0, float("nan"), float("inf"), torch.tensor(-0.5)):
        calls.append(lambda s=sigma: cs_conditional_divergence(x, y, y_hat, s, 1.0))
        calls.append(lambda s=sigma: cs_conditional_divergence(x, y, y_hat, 1.0, s))
        calls.append(lambda s=sigma: cs_mutual_information(x, t, s, 1.0))
        calls.append(lambda s=sigma: cs_mutual_information(x, t, 1.0, s))
        calls.append(lambda s=sigma: gaussian_gram(x, sigma=s))
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_hsic_is_a_normalised_dependence_measure():
    """nHSIC in [0, 1]; 1 for t = x (same width); near 0 for an independent t; grows with dependence (widths by
    the median heuristic: a width far below t's spread makes the Gram the identity, which no estimator survives)."""
    from robust_train.csib_estimators import hsic, median_sigma

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    indep = torch.randn(200, 2, generator=g, dtype=torch.float64)
    assert float(hsic(x, x, 1.5, 1.5)) == pytest.approx(1.0, abs=1e-12)
    ts = [x[:, :2] + s * indep for s in (0.1, 1.0, 100.0)]
    vals = [float(hsic(x, t, median_sigma(x), median_sigma(t))) for t in ts]
    assert 1 >= vals[0] > vals[1] > vals[2] >= 0 and vals[2] < 0.05, vals
    assert float(hsic(x, indep, 1.5, 1.0, normalized=False)) >= 0
