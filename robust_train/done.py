"""DONE: doubly robust instance-reweighted adversarial training (Sow, Lin, Wang, Liang, ICLR 2024).

Outer problem ``min_theta max_{w in simplex} sum_i w_i l_i - r KL(w || uniform)``: the inner maximiser is
``w* = softmax(l / r)`` and the value ``r log mean_i exp(l_i / r)``. Its compositional form ``r log g(theta)``,
``g = mean_i exp(l_i / r)``, is optimised with a running estimate u of g (SCGD-style, the paper's CID), kept in
log space: ``log u <- logaddexp(log(1 - tau) + log u, log tau + logmeanexp(l / r))`` (tau = 1 on the first batch),
and the loss ``mean_i stopgrad(exp(l_i / r - log u)) l_i``. ``r = inf`` gives weights 1: exactly PGD-AT.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from robust_train.distributed import Collective


def done_weights(losses: Tensor, r: float) -> Tensor:
    """The KL-DRO weights ``softmax(l / r)`` of one batch (uniform for ``r = inf``); sum to 1."""
    if math.isinf(r):
        return torch.full_like(losses, 1.0 / losses.numel())
    return torch.softmax(losses / r, dim=0)


def logmeanexp(z: Tensor) -> Tensor:
    """``log mean exp(z)`` over all entries, without overflow."""
    return torch.logsumexp(z.reshape(-1), dim=0) - math.log(z.numel())


def dro_value(losses: Tensor, r: float) -> Tensor:
    """``max_w w^T l - r KL(w || U) = r logmeanexp(l / r)`` (the mean for ``r = inf``)."""
    return losses.mean() if math.isinf(r) else r * logmeanexp(losses / r)


def update_direct(u: float | None, losses: Tensor, r: float, tau: float) -> float:
    """The normaliser update in linear space, ``u <- (1 - tau) u + tau mean exp(l / r)`` (reference for tests;
    overflows for small r, which is why training keeps log u)."""
    g = float(torch.exp(losses.double() / r).mean())
    return g if u is None else (1.0 - tau) * u + tau * g


class DoneNormaliser:
    """The running estimate ``log u`` of ``log mean exp(l / r)`` over the data, identical on every rank: the
    batch statistic (max, sum of exponentials, count) is all-reduced before the update."""

    def __init__(self, r: float, tau: float):
        if not (r > 0) or math.isnan(r):
            raise ValueError(f"r must be > 0 (inf for PGD-AT), got {r}")
        if not (0.0 < tau <= 1.0):
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.r, self.tau = float(r), float(tau)
        self.log_u: float | None = None  # None until the first batch (which sets tau = 1)

    def batch_logmeanexp(self, losses: Tensor, collective: Collective | None = None) -> float:
        """``logmeanexp(l / r)`` over the global batch: local max and sum of exponentials, all-reduced."""
        collective = collective or Collective()
        z = losses.detach().to(torch.float64) / self.r
        m_local = z.max() if z.numel() else torch.tensor(-math.inf, dtype=z.dtype, device=z.device)
        m = collective.max(m_local)
        s = collective.sum(torch.exp(z - m).sum())
        n = collective.sum(torch.tensor(float(z.numel()), dtype=z.dtype, device=z.device))
        return float(m + torch.log(s) - torch.log(n))

    def update(self, losses: Tensor, collective: Collective | None = None) -> float:
        """One step of the log-space normaliser; returns the new ``log u``."""
        if math.isinf(self.r):
            self.log_u = 0.0  # l / inf = 0: u = 1 exactly, weights exactly 1
            return self.log_u
        lme = self.batch_logmeanexp(losses, collective)
        if self.log_u is None or self.tau == 1.0:
            self.log_u = lme
        else:
            self.log_u = float(np.logaddexp(math.log1p(-self.tau) + self.log_u, math.log(self.tau) + lme))
        return self.log_u

    def weights(self, losses: Tensor) -> Tensor:
        """``exp(l_i / r - log u)``, detached (the stop-gradient of the estimator). Bounded by ``n / tau`` after
        an update with this batch, so they never overflow."""
        if math.isinf(self.r):
            return torch.ones_like(losses)
        if self.log_u is None:
            raise RuntimeError("DoneNormaliser.weights before the first update")
        # float64: for small r, l / r is large and float32 would lose the weights' relative precision.
        return torch.exp(losses.detach().to(torch.float64) / self.r - self.log_u).to(losses.dtype)

    def state_dict(self) -> dict:
        return {"r": self.r, "tau": self.tau, "log_u": self.log_u}

    def load_state_dict(self, state: dict) -> None:
        self.log_u = state["log_u"]


def done_loss(losses: Tensor, normaliser: DoneNormaliser, n_global: int,
              collective: Collective | None = None) -> Tensor:
    """Update ``log u`` with the (global) batch, then ``sum_{shard} stopgrad(w_i) l_i / n_global``: summed over
    the ranks, the batch mean ``mean_i w_i l_i`` of the paper's estimator."""
    normaliser.update(losses, collective)
    return (normaliser.weights(losses) * losses).sum() / n_global
