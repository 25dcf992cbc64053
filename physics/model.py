"""One model class for PI-SC, PI-HC and PI-HC-MoE: backbone -> (hard-constraint layer) -> u, and its loss.

Training loss (data-free): mean_x F(u)(x)^2 on the full grid + mean of the squared IC/BC row residuals
(soft IC/BC terms, weights 1/1; Chalapathi et al., ICLR 2024, Sec. 4.1). The BC residual is u - D u_x, never
a comparison with the true boundary trace (a defect of the reference code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physics.errors import PhysicsError
from physics.layer import HardConstraint, HardConstraintMoE, SolveInfo
from physics.problems import Fields, PDESpec

CONSTRAINTS = ("soft", "hard", "moe")
MOE_LOSSES = ("expert", "stitched")  # own-expert residual + interface mismatch, or F(u) of the stitched field


class PDEModel(nn.Module):
    """u = backbone(inputs) (soft) or u = b . w* with b = backbone(inputs) (hard / moe)."""

    def __init__(self, spec: PDESpec, backbone: nn.Module, layer: HardConstraint | HardConstraintMoE | None):
        super().__init__()
        self.spec, self.backbone, self.layer = spec, backbone, layer

    def forward(self, data: Fields, step: int, sample_ids: list[int]) -> tuple[Tensor, SolveInfo | None]:
        """Predicted field u (B, *grid) in float64 and the solver diagnostics (None for the soft model)."""
        dtype = next(self.backbone.parameters()).dtype
        out = self.backbone(self.spec.inputs(data).to(dtype))
        if self.layer is None:
            return out[:, 0].to(torch.float64), None
        return self.layer(out, data, step, sample_ids)


@dataclass
class LossParts:
    """Per-sample loss terms, shape (B,)."""

    pde: Tensor
    rows: Tensor

    def total(self) -> Tensor:
        """Mean over the samples of pde + rows."""
        return (self.pde + self.rows).mean()


def physics_loss(spec: PDESpec, u: Tensor, data: Fields, info: SolveInfo | None = None) -> LossParts:
    """Mean squared PDE residual on the full grid and mean squared IC/BC residual, per sample.

    With hard constraints the PDE term is each point's residual under its own expert's coefficients
    (``info.residual``), identical to F(u) for PI-HC; IC/BC rows are evaluated on u itself, and for experts
    the interface mismatches b(x) . (w_k - w_k') join them.
    """
    r_pde, r_rows = spec.residuals(u, data)
    if info is not None and info.residual is not None:
        r_pde = info.residual
    if info is not None and info.jump is not None and info.jump.numel():
        # Experts never see each other's points, so nothing else in the loss stops the stitched field from
        # jumping at interfaces; the mismatch of neighbouring experts there is penalised like an IC/BC row.
        r_rows = torch.cat([r_rows, info.jump], dim=1)
    if spec.loss_scale() != 1.0:  # PDE rows solved in other units than the loss's (physics.problems)
        r_pde = r_pde * spec.loss_scale()
    parts = LossParts((r_pde**2).mean(-1), (r_rows**2).mean(-1))
    if not (torch.isfinite(parts.pde).all() and torch.isfinite(parts.rows).all()):
        raise PhysicsError(
            f"non-finite physics loss (PDE term {parts.pde.max().item()}, rows {parts.rows.max().item()})"
        )
    return parts


def relative_l2(u: Tensor, ref: Tensor) -> Tensor:
    """Per-sample ||u - ref||_2 / ||ref||_2 over all grid points, shape (B,)."""
    dims = tuple(range(1, u.ndim))
    return torch.linalg.vector_norm(u - ref, dim=dims) / torch.linalg.vector_norm(ref, dim=dims)
