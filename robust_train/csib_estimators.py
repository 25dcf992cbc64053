"""Cauchy-Schwarz divergence estimators for the CS information bottleneck (CS-IB) for regression.

Yu, Yu, Løkse, Jenssen, Principe, "Cauchy-Schwarz Divergence Information Bottleneck for Regression", ICLR 2024
(arXiv 2404.17951); the loss is ``D_CS(p(y|x) ; q(y_hat|x)) + beta * I_CS(x; t)``. Everything here is re-derived
from the formulas in ``docs/robust_training.md`` section 4 (the reference code has no licence). Every sum of kernel
products is taken in log space with ``torch.logsumexp``, so widths down to ~1e-3 stay finite in float32 and float64.
Inputs are ``(N, d)`` batches; a 1-D tensor is one feature per sample, never a scalar Gram (section 4.6, defect 1).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "KernelWidths",
    "as_2d",
    "cs_conditional_divergence",
    "cs_divergence",
    "cs_mutual_information",
    "gaussian_gram",
    "hsic",
    "log_gaussian_gram",
    "median_sigma",
]

Normalization = Literal["paper", "reference"]
# The exact (difference-based) cdist: the matmul shortcut ||a||^2 + ||b||^2 - 2ab cancels catastrophically, and
# at sigma = 1e-3 an absolute error of 1e-5 in a squared distance is an error of 5 in log K.
_CDIST_MODE = "donot_use_mm_for_euclid_dist"


def as_2d(a: Tensor, name: str = "input") -> Tensor:
    """View a batch as ``(N, d)``: ``(N,)`` becomes ``(N, 1)`` and ``(N, ...)`` is flattened per sample.

    The reference code fed ``(N,)`` targets to ``X Y^T``, which is a scalar, and the prediction term collapsed to
    ``SSE / (sigma^2 ln 2)``; reshaping here makes that impossible for every estimator.
    """
    if not isinstance(a, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-dim tensor")
    if a.dim() == 1:
        return a.reshape(-1, 1)
    if a.dim() == 2:
        return a
    return a.reshape(a.shape[0], -1)


def _prepare(*named: tuple[str, Tensor]) -> list[Tensor]:
    """``as_2d`` every input, check batch size >= 2, equal N and finiteness, and promote to one float dtype."""
    mats = [as_2d(t, name) for name, t in named]
    n = mats[0].shape[0]
    for (name, _), m in zip(named, mats, strict=True):
        if m.shape[0] != n:
            first = named[0][0]
            raise ValueError(f"mismatched batch sizes: {first} has N={n} but {name} has N={m.shape[0]}")
        if m.shape[1] == 0:
            raise ValueError(f"{name} has no features (shape {tuple(m.shape)})")
    if n < 2:
        raise ValueError(f"batch size must be at least 2 for a kernel estimator, got N={n}")
    dtype = functools.reduce(torch.promote_types, [m.dtype for m in mats])
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    mats = [m.to(dtype) for m in mats]
    for (name, _), m in zip(named, mats, strict=True):
        if not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name} contains NaN or inf")
    return mats


def _check_sigma(sigma: float | Tensor, name: str = "sigma") -> None:
    if isinstance(sigma, Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(sigma.shape)}")
        value = float(sigma.detach())
    else:
        value = float(sigma)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be positive and finite, got {value}")


def _log_base(base: float | str) -> float:
    """``ln(base)``, the divisor that turns nats into the requested unit."""
    if base == "e":
        return 1.0
    if isinstance(base, str):
        raise ValueError(f"base must be 'e' or a positive number other than 1, got {base!r}")
    b = float(base)
    if not math.isfinite(b) or b <= 0.0 or b == 1.0:
        raise ValueError(f"base must be 'e' or a positive number other than 1, got {base!r}")
    return math.log(b)


def _log_gram(a: Tensor, b: Tensor, sigma: float | Tensor) -> Tensor:
    """``log k(a_i, b_j) = -||a_i - b_j||^2 / (2 sigma^2)`` on already-prepared inputs."""
    sq = torch.cdist(a, b, compute_mode=_CDIST_MODE).square()
    return sq / (-2.0 * sigma * sigma)


def log_gaussian_gram(a: Tensor, b: Tensor | None = None, *, sigma: float | Tensor) -> Tensor:
    """Log Gram matrix ``-||a_i - b_j||^2 / (2 sigma^2)``, shape ``(N, M)``; ``b=None`` means ``b = a``.

    Kernel of CS-IB section 4.1, ``kappa_sigma(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` (Yu et al., ICLR 2024);
    the log form is what the estimators feed to ``logsumexp``.
    """
    _check_sigma(sigma)
    if b is None:
        (a2,) = _prepare(("a", a))
        return _log_gram(a2, a2, sigma)
    a2 = as_2d(a, "a")
    b2 = as_2d(b, "b")
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"feature sizes differ: a has d={a2.shape[1]}, b has d={b2.shape[1]}")
    if a2.shape[0] < 1 or b2.shape[0] < 1:
        raise ValueError("gram inputs must be non-empty")
    dtype = torch.result_type(a2, b2)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a2, b2 = a2.to(dtype), b2.to(dtype)
    if not (bool(torch.isfinite(a2).all()) and bool(torch.isfinite(b2).all())):
        raise ValueError("gram inputs contain NaN or inf")
    return _log_gram(a2, b2, sigma)


def gaussian_gram(a: Tensor, b: Tensor | None = None, *, sigma: float | Tensor) -> Tensor:
    """Gram matrix ``K_ij = exp(-||a_i - b_j||^2 / (2 sigma^2))`` on ``(N, d)`` and ``(M, d)`` inputs.

    CS-IB section 4.1 kernel (Yu et al., ICLR 2024). A 1-D input is ``(N, 1)``, so the result is ``(N, M)``,
    never a scalar; inputs with more than 2 dims are flattened per sample.
    """
    return log_gaussian_gram(a, b, sigma=sigma).exp()


def median_sigma(x: Tensor) -> float:
    """Median-heuristic width ``sigma = median_{i<j} ||x_i - x_j||_2`` (plain Euclidean distance, no squaring
    and no factor 1/2; lower median when the number of pairs is even), as in docs section 4.4.

    Compute it once on a reference batch and hold it fixed: it is returned as a Python float, outside the graph.
    """
    (a,) = _prepare(("x", x))
    a = a.detach()
    n = a.shape[0]
    d = torch.cdist(a, a, compute_mode=_CDIST_MODE)
    iu = torch.triu_indices(n, n, offset=1, device=a.device)
    med = float(d[iu[0], iu[1]].median())
    if not med > 0.0:
        raise ValueError("median pairwise distance is 0 (most samples coincide); pass an explicit sigma")
    return med


@dataclass(frozen=True)
class KernelWidths:
    """Fixed kernel widths for x, for y and y_hat (one shared width, docs section 4.2) and for the code t.

    ``from_batch`` applies ``median_sigma`` to a reference batch (our default, section 4.4); ``unit`` is the
    reference script's sigma = 1 for every kernel, for reproduction.
    """

    x: float
    y: float
    t: float | None = None

    def __post_init__(self) -> None:
        _check_sigma(self.x, "sigma_x")
        _check_sigma(self.y, "sigma_y")
        if self.t is not None:
            _check_sigma(self.t, "sigma_t")

    @classmethod
    def from_batch(cls, x: Tensor, y: Tensor, t: Tensor | None = None) -> KernelWidths:
        """Median-heuristic widths of one reference batch (y's width serves y_hat too)."""
        return cls(x=median_sigma(x), y=median_sigma(y), t=None if t is None else median_sigma(t))

    @classmethod
    def unit(cls) -> KernelWidths:
        """sigma = 1 for x, y, y_hat and t, as the reference script trains."""
        return cls(x=1.0, y=1.0, t=1.0)


def cs_divergence(a: Tensor, b: Tensor, sigma: float | Tensor, base: float | str = "e") -> Tensor:
    """Marginal CS divergence between samples {a_i}_M and {b_j}_N (docs section 4.1, Yu et al., ICLR 2024):
    ``log(sum K_aa / M^2) + log(sum K_bb / N^2) - 2 log(sum K_ab / (M N))`` = ``-2 log cos(mu_a, mu_b) >= 0``.

    Symmetric in (a, b); M and N may differ. Returns a 0-dim tensor in nats (``base=2`` for bits).
    """
    _check_sigma(sigma)
    a2 = _prepare(("a", a))[0]
    b2 = _prepare(("b", b))[0]
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"feature sizes differ: a has d={a2.shape[1]}, b has d={b2.shape[1]}")
    dtype = torch.result_type(a2, b2)
    a2, b2 = a2.to(dtype), b2.to(dtype)
    # The 1/M^2, 1/N^2 and 1/(MN)^2 factors cancel (2 log M + 2 log N on each side), so they are left out.
    out = (
        torch.logsumexp(_log_gram(a2, a2, sigma).flatten(), 0)
        + torch.logsumexp(_log_gram(b2, b2, sigma).flatten(), 0)
        - 2.0 * torch.logsumexp(_log_gram(a2, b2, sigma).flatten(), 0)
    )
    return out / _log_base(base)


def cs_conditional_divergence(
    x: Tensor,
    y: Tensor,
    y_hat: Tensor,
    sigma_x: float | Tensor,
    sigma_y: float | Tensor,
    normalization: Normalization = "paper",
    base: float | str = "e",
) -> Tensor:
    """Prediction term ``D_CS(p(y|x) ; q(y_hat|x))``, Prop. 1 of Yu et al. (ICLR 2024), docs section 4.2:
    ``log sum_j[sum_i K_ji L1_ji / s_j] + log sum_j[sum_i K_ji L2_ji / s_j] - 2 log sum_j[sum_i K_ji L21_ji / s_j]``
    with K, L1, L2 the Grams of x, y, y_hat, ``L21_ji = k(y_hat_j, y_i)`` and ``s_j = (sum_i K_ji)^2``.

    ``normalization="reference"`` uses ``s_j = sum_i K_ji^2`` as the reference code does. y and y_hat share
    ``sigma_y``. The estimate is 0 when y_hat == y and may be slightly negative otherwise (it is not a
    Cauchy-Schwarz pairing of one embedding). Returns a 0-dim tensor in nats (``base=2`` for bits).
    """
    if normalization not in ("paper", "reference"):
        raise ValueError(f"normalization must be 'paper' or 'reference', got {normalization!r}")
    _check_sigma(sigma_x, "sigma_x")
    _check_sigma(sigma_y, "sigma_y")
    x2, y2, yh2 = _prepare(("x", x), ("y", y), ("y_hat", y_hat))
    if y2.shape[1] != yh2.shape[1]:
        raise ValueError(f"y has d={y2.shape[1]} features but y_hat has d={yh2.shape[1]}")
    log_k = _log_gram(x2, x2, sigma_x)
    if normalization == "paper":
        log_s = 2.0 * torch.logsumexp(log_k, dim=1)
    else:
        log_s = torch.logsumexp(2.0 * log_k, dim=1)

    def term(log_l: Tensor) -> Tensor:
        # log sum_j exp(log sum_i K_ji L_ji - log s_j): both sums stay in log space.
        return torch.logsumexp(torch.logsumexp(log_k + log_l, dim=1) - log_s, dim=0)

    out = (
        term(_log_gram(y2, y2, sigma_y))
        + term(_log_gram(yh2, yh2, sigma_y))
        - 2.0 * term(_log_gram(yh2, y2, sigma_y))  # row j is y_hat_j, column i is y_i
    )
    return out / _log_base(base)


def _log_cs_mi(log_k: Tensor, log_q: Tensor) -> Tensor:
    """``I_CS`` from two log Grams; the N^-2, N^-4 and N^-3 factors cancel (2 + 4 - 2*3 = 0) and are left out."""
    log_tr = torch.logsumexp((log_k + log_q.T).flatten(), 0)  # tr(KQ) = sum_ij K_ij Q_ji
    log_kk = torch.logsumexp(log_k.flatten(), 0)  # 1^T K 1
    log_qq = torch.logsumexp(log_q.flatten(), 0)  # 1^T Q 1
    log_kq = torch.logsumexp(torch.logsumexp(log_k, dim=0) + torch.logsumexp(log_q, dim=1), dim=0)  # 1^T K Q 1
    return log_tr + log_kk + log_qq - 2.0 * log_kq


def cs_mutual_information(
    x: Tensor,
    t: Tensor,
    sigma_x: float | Tensor,
    sigma_t: float | Tensor,
    normalized: bool = False,
    base: float | str = "e",
) -> Tensor:
    """Compression term ``I_CS(x;t) = log(tr(KQ)/N^2) + log((1'K1)(1'Q1)/N^4) - 2 log(1'KQ1/N^3)``, Prop. 2 of
    Yu et al. (ICLR 2024), docs section 4.3; K, Q are the Grams of x and t. It is ``-2 log cos(mu_xt, mu_x (x) mu_t)``
    so it is >= 0 up to rounding. ``normalized=True`` gives ``I_CS(x;t) / sqrt(I_CS(x;x) I_CS(t;t))``.

    Returns a 0-dim tensor in nats (``base=2`` for bits); the normalised form is a ratio and has no unit. When x
    or t is constant at its width the normaliser vanishes; it is floored at the dtype's ``tiny`` to stay finite.
    """
    _check_sigma(sigma_x, "sigma_x")
    _check_sigma(sigma_t, "sigma_t")
    x2, t2 = _prepare(("x", x), ("t", t))
    log_k = _log_gram(x2, x2, sigma_x)
    log_q = _log_gram(t2, t2, sigma_t)
    mi = _log_cs_mi(log_k, log_q)
    if not normalized:
        return mi / _log_base(base)
    tiny = torch.finfo(mi.dtype).tiny
    # The self-informations are >= 0 in exact arithmetic; the floor only absorbs rounding and degenerate batches.
    denom = (_log_cs_mi(log_k, log_k).clamp_min(tiny) * _log_cs_mi(log_q, log_q).clamp_min(tiny)).sqrt()
    return mi / denom


def hsic(x: Tensor, t: Tensor, sigma_x: float | Tensor, sigma_t: float | Tensor, normalized: bool = True) -> Tensor:
    """Biased HSIC estimator ``tr(K H Q H) / (N - 1)^2`` with Gaussian Grams K of x and Q of t and the centring
    ``H = I - 11'/N`` (Gretton et al., ALT 2005); the HSIC bottleneck penalises it (Ma et al., AAAI 2020; Wang et
    al., NeurIPS 2021). ``normalized``: ``HSIC(x, t) / sqrt(HSIC(x, x) HSIC(t, t))`` in [0, 1]."""
    _check_sigma(sigma_x, "sigma_x")
    _check_sigma(sigma_t, "sigma_t")
    x2, t2 = _prepare(("x", x), ("t", t))
    n = x2.shape[0]
    k = torch.exp(_log_gram(x2, x2, sigma_x))
    q = torch.exp(_log_gram(t2, t2, sigma_t))

    def centred(m: Tensor) -> Tensor:
        return m - m.mean(0, keepdim=True) - m.mean(1, keepdim=True) + m.mean()

    kc, qc = centred(k), centred(q)
    value = (kc * qc).sum() / (n - 1) ** 2  # tr(K H Q H) = <HKH, HQH>_F
    if not normalized:
        return value
    tiny = torch.finfo(value.dtype).tiny
    denom = ((kc * kc).sum() * (qc * qc).sum()).clamp_min(tiny).sqrt() / (n - 1) ** 2
    return value / denom
