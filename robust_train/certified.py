"""Certified-training losses through Clarke's engine: IBP (Gowal et al., arXiv 2018) and CROWN-IBP (Zhang et al.,
ICLR 2020).

Margins ``m_j = z_y - z_j`` over the box ``[max(x - eps, lo), min(x + eps, hi)]`` are bounded below by the engine
(spec rows ``C = e_y - e_j``); ``-m_lower`` with 0 at the true class are the worst-case logits, and the loss is
``kappa CE(f(x), y) + (1 - kappa) CE(-m_lower, y)``; CROWN-IBP uses ``beta m_CROWN-IBP + (1 - beta) m_IBP``.

Loss fusion (``loss_fusion=True``, CROWN-IBP; Xu et al., NeurIPS 2020, auto_LiRPA's ``loss_fusion``): one CROWN row
per example instead of K-1. With IBP ranges ``d_j = z_j - z_y in [a_j, b_j]`` and the chords ``exp(d) <= s_j d + t_j``
there, ``sum_{j != y} exp(d_j) <= t - max_x sum_j s_j (z_y - z_j)``, whose last term is one CROWN row; the bound
term is then ``beta min(CE_fused, CE_IBP) + (1 - beta) CE_IBP`` with ``CE = log(1 + sum_j exp(d_j))`` bounded above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import verify
from robust_train.apgd import threat_box
from verify.rounding import training_losses

CERTIFIED_METHODS = ("ibp", "crown-ibp")


def margin_spec(y: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, K-1, K]``: for each example the rows ``e_y - e_j``, j != y in increasing order."""
    b = y.shape[0]
    eye = torch.eye(classes, dtype=dtype, device=y.device)
    rows = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # [B, K, K]; row j = e_y - e_j (row y is zero)
    keep = ~F.one_hot(y, classes).bool()
    return rows[keep].reshape(b, classes - 1, classes)


def worst_case_logits(m_lower: Tensor, y: Tensor) -> Tensor:
    """``[B, K]`` logits ``-m_lower_j`` at j != y and 0 at y (the layout of :func:`margin_spec`)."""
    b, s = m_lower.shape
    keep = ~F.one_hot(y, s + 1).bool()
    z = torch.zeros(b, s + 1, dtype=m_lower.dtype, device=m_lower.device)
    return z.masked_scatter(keep, -m_lower)


class CertifiedLoss:
    """The IBP / CROWN-IBP training loss of one module, traced once by the engine (``verify.BoundedModel``:
    every call reads the current parameters, so the bounds are differentiable in them). The loss's bounds are
    computed without rounding allowances (``verify.rounding.training_losses``); :meth:`margins` called directly
    (validation certificates) is rigorous."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], method: str = "ibp",
                 lo: float = 0.0, hi: float = 1.0, loss_fusion: bool = False):
        if method not in CERTIFIED_METHODS:
            raise ValueError(f"unknown certified method {method!r}; choose {' or '.join(CERTIFIED_METHODS)}")
        self.model, self.method, self.lo, self.hi = model, method, lo, hi
        self.loss_fusion = loss_fusion
        self.bounded = verify.BoundedModel(model, tuple(input_shape))

    def margins(self, x: Tensor, y: Tensor, eps: float, beta: float = 1.0) -> Tensor:
        """Lower bounds ``[B, K-1]`` on ``z_y - z_j`` over the eps-box: IBP, or for CROWN-IBP
        ``beta m_CROWN-IBP + (1 - beta) m_IBP`` (the CROWN pass is skipped at beta = 0)."""
        low, high = threat_box(x, eps, self.lo, self.hi)
        C = margin_spec(y, self._classes(x), x.dtype)
        if self.method == "ibp" or beta == 0.0:
            return self.bounded.bound(low, high, C=C, method="ibp", bound_upper=False)[0]
        m_crown = self.bounded.bound(low, high, C=C, method="crown-ibp", bound_upper=False)[0]
        if beta == 1.0:
            return m_crown
        m_ibp = self.bounded.bound(low, high, C=C, method="ibp", bound_upper=False)[0]
        return beta * m_crown + (1.0 - beta) * m_ibp

    def _classes(self, x: Tensor) -> int:
        return int(self.bounded.graph.output_numel)

    def __call__(self, x: Tensor, y: Tensor, eps: float, kappa: float, beta: float = 1.0
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per-example ``kappa CE(f(x), y) + (1 - kappa) CE(-m_lower, y)``, the clean logits, and which examples
        the bound certifies (all margins > 0; None when the bound term is off, kappa = 1)."""
        logits = self.model(x)
        loss = kappa * F.cross_entropy(logits, y, reduction="none")
        if kappa == 1.0:
            return loss, logits, None  # warm-up: no bound needed (its weight is 0)
        with training_losses():  # a loss, not a certificate: no rounding allowances (verify.rounding)
            if self.loss_fusion and self.method == "crown-ibp" and beta > 0.0:
                bound_loss, m = self.fused_loss(x, y, eps, beta)
            else:
                m = self.margins(x, y, eps, beta)
                bound_loss = F.cross_entropy(worst_case_logits(m, y), y, reduction="none")
        return loss + (1.0 - kappa) * bound_loss, logits, (m.detach() > 0).all(1)

    def fused_loss(self, x: Tensor, y: Tensor, eps: float, beta: float = 1.0) -> tuple[Tensor, Tensor]:
        """Per-example upper bound on the worst-case cross-entropy by loss fusion (module docstring), and the
        IBP margin lower bounds ``[B, K-1]`` (what the certified flags use)."""
        low, high = threat_box(x, eps, self.lo, self.hi)
        C = margin_spec(y, self._classes(x), x.dtype)
        chords: list[Tensor] = []

        def rows(m_lo: Tensor, m_hi: Tensor) -> Tensor:
            slope, shift, const = exp_chords(-m_hi, -m_lo)
            chords.extend([slope, shift, const])
            return (slope.unsqueeze(-1) * C).sum(1, keepdim=True)  # sum_j s_j (e_y - e_j)

        m_lo, _, crown = self.bounded.interval_then_crown(low, high, C, rows)
        slope, shift, const = chords
        # sum_j exp(d_j - M) <= const - sum_j s_j m_j <= const - crown; the true class adds exp(-M)
        total = torch.exp(-shift) + const - crown[:, 0]
        fused = shift + torch.log(total.clamp(min=torch.finfo(total.dtype).tiny))
        ibp = F.cross_entropy(worst_case_logits(m_lo, y), y, reduction="none")
        return beta * torch.minimum(fused, ibp) + (1.0 - beta) * ibp, m_lo


def exp_chords(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chords of ``exp(d - M)`` on ``[a_j, b_j]`` (``[B, S]``), with ``M = max(0, max_j b_j)`` per row so nothing
    overflows: ``(s [B, S], M [B], t [B])`` with ``exp(d_j - M) <= s_j d_j + c_j`` on each range and ``t = sum_j c_j``.
    A zero-width range gets the tangent there (the chord's limit)."""
    shift = b.detach().amax(1).clamp(min=0.0)
    lo, hi = a - shift[:, None], b - shift[:, None]
    width = hi - lo
    wide = width > 1e-4
    e_lo = torch.exp(lo)
    secant = (torch.exp(hi) - e_lo) / torch.where(wide, width, torch.ones_like(width))
    series = e_lo * (1.0 + width / 2 + width * width / 6)  # exp(lo) expm1(w) / w for small w
    slope = torch.where(wide, secant, series)
    intercept = e_lo - slope * lo  # the chord through (lo, exp(lo)), in d - M; in d it shifts by s M
    const = (intercept - slope * shift[:, None]).sum(1)
    return slope, shift, const
