"""Regression methods on the training loop: MSE, the variational IB (VIB) and the Cauchy-Schwarz IB (CS-IB).

- ``mse``: ``(h(x) - y)^2`` on the deterministic path ``x -> mu(x) -> decoder``.
- ``vib`` (Alemi et al., ICLR 2017): ``(g(t) - y)^2 + beta KL(N(mu, diag exp(logvar)) || N(0, I))`` with the
  reparameterised sample ``t``.
- ``csib`` (Yu et al., ICLR 2024): ``D_CS(p(y|x) ; q(y_hat|x)) + beta I_CS(x; t)`` on the batch, ``y_hat = g(t)``.
  Kernel estimators are not sums over examples: under DDP each rank gathers the global batch (autograd-aware
  all-gather), evaluates the estimator on it and contributes ``1/world`` of it, so the summed gradient is the
  global-batch estimator's, exactly as one process computes it.
- ``hsic`` (the HSIC bottleneck as a baseline; Ma et al., AAAI 2020): ``(g(t) - y)^2 + beta nHSIC(x; t)`` on the
  batch, the normalised HSIC of x and the sampled code (gathered under DDP like CS-IB's estimators).
- ``band_weight > 0`` adds ``band_weight * (h_hi - h_lo)`` per example, the width of the engine's IBP / CROWN-IBP
  bounds on ``h`` over the eps-box (the certified-training idea for regression).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

from robust_train.apgd import threat_box
from robust_train.config import TrainConfig
from robust_train.csib_estimators import (
    KernelWidths,
    cs_conditional_divergence,
    cs_mutual_information,
    hsic,
    median_sigma,
)
from robust_train.distributed import Collective
from robust_train.methods import Batch, Method, StepResult
from robust_train.regression_attacks import pgd, squared_error

REFERENCE_BATCH = 512  # examples for the median-heuristic widths (and the information-plane estimates)


def input_domain(splits) -> tuple[float, float]:
    """Where inputs live: [0, 1] for images that are not standardised, the whole line otherwise."""
    return (-math.inf, math.inf) if getattr(splits, "x_standardized", True) else (0.0, 1.0)


def reference_widths(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor) -> KernelWidths:
    """Kernel widths: ``cfg.sigma`` for every kernel, or the median heuristic on the first ``REFERENCE_BATCH``
    training examples for x (times ``sigma_x_scale``) and y (held fixed for the whole run) and ``t = None``: the
    code's width is the median of each batch's sampled codes. A fixed width for t fails both ways: at
    initialisation the sampled codes are mostly noise, pairwise distances are many widths of the means, the Gram
    of t is the identity and I_CS has no gradient (measured: 1e-15); later, shrinking t (the decoder scaling
    back up) drives a fixed-width I_CS to 0 without removing any information. The batch median makes I_CS(x; t)
    invariant to the code's scale."""
    if cfg.sigma is not None:
        return KernelWidths(cfg.sigma, cfg.sigma, cfg.sigma)
    xr, yr = x[:REFERENCE_BATCH], y[:REFERENCE_BATCH]
    return KernelWidths(cfg.sigma_x_scale * median_sigma(xr), median_sigma(yr), None)


def code_width(widths: KernelWidths, t: Tensor) -> float:
    """The kernel width of the code t: the fixed one, or the median pairwise distance of this batch (detached)."""
    if widths.t is not None:
        return widths.t
    try:
        return median_sigma(t.detach())
    except ValueError:  # a collapsed code: any width gives I_CS = 0
        return 1.0


def gather_rows(t: Tensor, collective: Collective) -> Tensor:
    """The global batch from every rank's contiguous shard, in rank order, differentiable in this rank's rows."""
    if not collective.active:
        return t
    import torch.distributed.nn.functional as dnn
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(collective.world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    m = int(max(s.item() for s in sizes))
    pad = torch.cat([t, t.new_zeros(m - t.shape[0], *t.shape[1:])]) if t.shape[0] < m else t
    with warnings.catch_warnings():
        # deprecated in favour of a private API (torch.distributed._functional_collectives); still the public,
        # autograd-aware gather in torch 2.13
        warnings.simplefilter("ignore", FutureWarning)
        parts = dnn.all_gather(pad)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)])


class RegressionMethod(Method):
    """Shared parts: the bottleneck weight schedule, the latent sample, the certified band-width penalty."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, collective: Collective, input_shape: tuple[int, ...],
                 widths: KernelWidths, domain: tuple[float, float]):
        super().__init__(cfg, model, collective)
        self.widths, self.domain = widths, domain
        self.bounded = None
        if cfg.band_weight > 0:
            import verify
            self.bounded = verify.BoundedModel(model.deterministic(), tuple(input_shape))

    def beta_at(self, batch: Batch) -> float:
        """``ib_beta`` ramped linearly from 0 over ``ib_beta_warmup`` epochs."""
        cfg = self.cfg
        if cfg.ib_beta_warmup <= 0:
            return cfg.ib_beta
        return cfg.ib_beta * min(1.0, batch.progress * cfg.epochs / cfg.ib_beta_warmup)

    def band_widths(self, batch: Batch) -> Tensor | None:
        """``h_hi - h_lo`` per example over the eps-box (None when the penalty is off or eps is 0)."""
        if self.bounded is None or batch.eps == 0:
            return None
        low, high = threat_box(batch.x, batch.eps, *self.domain)
        lo, hi = self.bounded.bound(low, high, method=self.cfg.band_method)
        return (hi - lo).reshape(batch.x.shape[0], -1).sum(1)

    def code(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(mu, logvar, t)``: the encoder's heads and the reparameterised sample ``t = mu + exp(logvar / 2) xi``."""
        mu, logvar = self.model.encode(batch.x)
        return mu, logvar, mu + torch.exp(0.5 * logvar) * batch.latent_noise(mu.shape[1]).to(mu.dtype)

    def clean(self, mu: Tensor) -> Tensor:
        """The evaluation prediction ``decoder(mu)`` for the training statistics (no graph)."""
        with torch.no_grad():
            return self.model.decoder(mu)

    def with_band(self, per: Tensor, batch: Batch) -> Tensor:
        width = self.band_widths(batch)
        return per if width is None else per + self.cfg.band_weight * width.to(per.dtype)

    def state_dict(self) -> dict:
        w = self.widths
        return {"sigma_x": w.x, "sigma_y": w.y, "sigma_t": w.t}

    def load_state_dict(self, state: dict) -> None:
        if "sigma_x" in state:
            self.widths = KernelWidths(state["sigma_x"], state["sigma_y"], state["sigma_t"])


class MSE(RegressionMethod):
    def __call__(self, batch: Batch) -> StepResult:
        pred = self.model(batch.x)
        per = self.with_band((pred - batch.y).square().sum(1), batch)
        return StepResult(per.sum() / batch.n_global, pred.detach())


class VIB(RegressionMethod):
    def __call__(self, batch: Batch) -> StepResult:
        mu, logvar, t = self.code(batch)
        pred = self.model.decoder(t)
        kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(1)
        per = self.with_band((pred - batch.y).square().sum(1) + self.beta_at(batch) * kl, batch)
        return StepResult(per.sum() / batch.n_global, self.clean(mu))


class CSIB(RegressionMethod):
    def __call__(self, batch: Batch) -> StepResult:
        cfg, w = self.cfg, self.widths
        mu, _, t = self.code(batch)
        y_hat = self.model.decoder(t)
        xs, ys, yh, ts = (gather_rows(v, self.collective) for v in (batch.x, batch.y, y_hat, t))
        loss = cs_conditional_divergence(xs, ys, yh, w.x, w.y, normalization=cfg.csib_normalization)
        beta = self.beta_at(batch)
        if beta > 0:
            loss = loss + beta * cs_mutual_information(xs, ts, w.x, code_width(w, ts),
                                                       normalized=cfg.csib_normalized_mi)
        loss = loss / self.collective.world  # every rank holds the whole estimator: the rank sum is it once
        width = self.band_widths(batch)
        if width is not None:
            loss = loss + cfg.band_weight * width.to(loss.dtype).sum() / batch.n_global
        return StepResult(loss, self.clean(mu))


class HSIC(RegressionMethod):
    def __call__(self, batch: Batch) -> StepResult:
        w = self.widths
        mu, _, t = self.code(batch)
        per = self.with_band((self.model.decoder(t) - batch.y).square().sum(1), batch)
        loss = per.sum() / batch.n_global
        beta = self.beta_at(batch)
        if beta > 0:
            xs, ts = (gather_rows(v, self.collective) for v in (batch.x, t))
            loss = loss + beta * hsic(xs, ts, w.x, code_width(w, ts)) / self.collective.world
        return StepResult(loss, self.clean(mu))


def build_regression_method(cfg: TrainConfig, model: nn.Module, input_shape: tuple[int, ...],
                            collective: Collective, widths: KernelWidths, domain: tuple[float, float]) -> Method:
    cls = {"mse": MSE, "vib": VIB, "csib": CSIB, "hsic": HSIC}[cfg.method]
    return cls(cfg, model, collective, input_shape, widths, domain)


def information_plane(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """``(I_CS(x; t), I_CS(y; t))`` in nats with ``t = mu(x)``, every width by the median heuristic on these
    points: the same estimator for every method (and invariant to rescaling t), as the information plane needs."""
    x, y = x[:REFERENCE_BATCH], y[:REFERENCE_BATCH]
    if x.shape[0] < 2:
        return math.nan, math.nan
    with torch.no_grad():
        t = model.encode(x)[0].double()
        xd, yd = x.double(), y.double()
        try:
            st = median_sigma(t)
        except ValueError:  # a collapsed code: no information about anything
            return 0.0, 0.0
        i_xt = cs_mutual_information(xd, t, median_sigma(xd), st)
        i_yt = cs_mutual_information(yd, t, median_sigma(yd), st)
    return float(i_xt), float(i_yt)


def validate_regression(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor, domain: tuple[float, float],
                        generator: torch.Generator) -> dict:
    """Validation RMSE (standardised units), RMSE under PGD at ``eps`` on the first ``val_points`` and the
    information-plane coordinates of the first ``REFERENCE_BATCH`` points."""
    was = model.training
    model.eval()
    try:
        out: dict = {"val_rmse": None, "val_pgd_rmse": None, "i_xt": None, "i_yt": None}
        if x.shape[0] == 0:
            return out
        with torch.no_grad():
            se = sum(float((model(xb) - yb).square().sum()) for xb, yb in zip(x.split(512), y.split(512), strict=True))
        out["val_rmse"] = math.sqrt(se / y.numel())
        m = min(cfg.val_points, x.shape[0])
        if m > 0:
            se = 0.0
            for xb, yb in zip(x[:m].split(512), y[:m].split(512), strict=True):
                xa = pgd(model, xb, squared_error(yb), cfg.eps, steps=cfg.val_pgd_steps, domain=domain,
                         generator=generator) if cfg.val_pgd_steps > 0 else xb
                with torch.no_grad():
                    se += float((model(xa) - yb).square().sum())
            out["val_pgd_rmse"] = math.sqrt(se / (m * y.shape[1]))
        out["i_xt"], out["i_yt"] = information_plane(model, x, y)
        return out
    finally:
        model.train(was)

