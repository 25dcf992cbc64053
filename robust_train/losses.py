"""Per-example training losses on logits: CE, PGD-AT, TRADES, MART, and the GAIRAT / MAIL instance weights.

Every function returns one value per example (shape ``[B]``); the trainer sums them over its shard and divides
by the global batch size, so data-parallel ranks add up to the batch mean. Constants not read from a primary
source are marked ``[unverified]``; those read from the authors' code say which repository.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy ``-log softmax(z)_y`` per example."""
    return F.cross_entropy(logits, y, reduction="none")


def pgd_at(logits_adv: Tensor, y: Tensor) -> Tensor:
    """PGD-AT (Madry et al., ICLR 2018): ``CE(f(x'), y)`` at the PGD point x'; the outer gradient treats x' as a
    constant (Danskin)."""
    return ce(logits_adv, y)


def kl_rows(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``KL(softmax(z_p) || softmax(z_q)) = sum_k p_k (log p_k - log q_k)`` per row (0 log 0 = 0)."""
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.softmax(logits_p, dim=1), reduction="none").sum(1)


def trades(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """TRADES (Zhang et al., ICML 2019): ``CE(f(x), y) + beta KL(f(x) || f(x'))``, KL summed over classes
    (batch-averaged by the trainer), gradients through both terms [README: yaodongyu/TRADES]."""
    return ce(logits_clean, y) + beta * kl_rows(logits_clean, logits_adv)


def mart(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART (Wang et al., ICLR 2020): ``BCE(p(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))`` with
    ``BCE = -log p_y(x') - log(1 - max_{k != y} p_k(x'))``. The guards 1.0001, 1e-12 and 1.0000001 are the
    reference code's [code: YisenWang/MART, also in QizhouWang/MAIL at_loss.py]."""
    p_adv = F.softmax(logits_adv, dim=1)
    p_clean = F.softmax(logits_clean, dim=1)
    others = p_adv.masked_fill(F.one_hot(y, p_adv.shape[1]).bool(), -1.0)
    second = others.argmax(1)  # the most likely wrong class at x'
    bce = ce(logits_adv, y) - torch.log(1.0001 - p_adv.gather(1, second[:, None]).squeeze(1) + 1e-12)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(1)  # sum_k p_k (log p_k - log q_k)
    true_clean = p_clean.gather(1, y[:, None]).squeeze(1)
    return bce + beta * kl * (1.0000001 - true_clean)


def gairat_weights(kappa: Tensor, steps: int, lam: float) -> Tensor:
    """GAIRAT (Zhang et al., ICLR 2021), unnormalised: ``(1 + tanh(lam + 5 (h - kappa_i) / h)) / 2`` with
    ``h = floor(K / 2)`` (= ``5 (1 - 2 kappa / K)`` for even K), kappa_i the number of the K PGD iterates the
    model still classifies correctly. The trainer normalises over the global batch to mean 1
    [code: zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training, GAIR.py, 'Tanh']."""
    half = max(steps // 2, 1)
    return (torch.tanh(lam + (half - kappa.to(torch.float64)) * 5.0 / half) + 1.0) / 2.0


def probabilistic_margin(logits: Tensor, y: Tensor) -> Tensor:
    """MAIL's margin ``PM = p_y(x') - max_{k != y} p_k(x')`` (in [-1, 1]; negative when misclassified)."""
    p = F.softmax(logits, dim=1)
    others = p.masked_fill(F.one_hot(y, p.shape[1]).bool(), -math.inf)
    return p.gather(1, y[:, None]).squeeze(1) - others.max(1).values


def mail_weights(logits_adv: Tensor, y: Tensor, bias: float, slope: float) -> Tensor:
    """MAIL (Wang et al., NeurIPS 2021): ``w_i = 3 sigmoid(slope (-PM_i + bias))``, detached; defaults
    bias -1.5, slope 1 and the factor 3 (no batch normalisation) are the authors' code's
    [code: QizhouWang/MAIL, mail_loss.py weight_assign]; the paper's form is ``sigmoid(-gamma (PM - beta))``."""
    pm = probabilistic_margin(logits_adv.detach(), y)
    return 3.0 * torch.sigmoid(slope * (-pm + bias))
