"""Certified-training losses through Clarke's engine: IBP (Gowal et al., arXiv 2018) and CROWN-IBP (Zhang et al.,
ICLR 2020).

Margins ``m_j = z_y - z_j`` over the box ``[max(x - eps, lo), min(x + eps, hi)]`` are bounded below by the engine
(spec rows ``C = e_y - e_j``); ``-m_lower`` with 0 at the true class are the worst-case logits, and the loss is
``kappa CE(f(x), y) + (1 - kappa) CE(-m_lower, y)``; CROWN-IBP uses ``beta m_CROWN-IBP + (1 - beta) m_IBP``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import verify
from robust_train.apgd import threat_box

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
    every call reads the current parameters, so the bounds are differentiable in them)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], method: str = "ibp",
                 lo: float = 0.0, hi: float = 1.0):
        if method not in CERTIFIED_METHODS:
            raise ValueError(f"unknown certified method {method!r}; choose {' or '.join(CERTIFIED_METHODS)}")
        self.model, self.method, self.lo, self.hi = model, method, lo, hi
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
        m = self.margins(x, y, eps, beta)
        loss = loss + (1.0 - kappa) * F.cross_entropy(worst_case_logits(m, y), y, reduction="none")
        return loss, logits, (m.detach() > 0).all(1)
