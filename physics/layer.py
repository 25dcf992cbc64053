"""Hard-constraint layers: PI-HC (one solve per sample) and PI-HC-MoE (one solve per sample and expert).

u(x) = b(x) . w*, w* = argmin 1/2 ||[f(Phi w + c) at m points; L w - y; lam w]||^2 (Levenberg-Marquardt,
exact IFT backward). MoE: expert k solves w_k from its own points in Omega_k plus the global IC/BC rows and
predicts u = b . w_k on Omega_k (Chalapathi et al., ICLR 2024, Secs. 3-3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physics.errors import PhysicsError
from physics.implicit import SolverConfig, solve_nlls
from physics.lm import LMResult
from physics.problems import Fields, PDESpec
from physics.router import Router, sample_points

SolveFn = Callable[..., tuple[Tensor, LMResult]]


@dataclass
class SolveInfo:
    """Per-problem solver diagnostics of one forward pass."""

    iterations: Tensor
    converged: Tensor
    residual_norm: Tensor
    omega: Tensor  # (B, N) or (B, K, N), detached
    residual: Tensor | None = None  # (B, G) PDE residual of each point's own expert function (differentiable)
    jump: Tensor | None = None  # (B, R) b(x) . (w_k - w_k') at interface points (differentiable)


def to_grid_last(b: Tensor) -> Tensor:
    """(B, N, *grid) backbone output -> (B, *grid, N) in float64 (the solve needs FP64)."""
    return b.movedim(1, -1).to(torch.float64)


def expert_residual(spec: PDESpec, phi: Tensor, off: Tensor | None, w_at: Tensor) -> Tensor:
    """F at every grid point x from its own expert's function: f(Phi(x) w_{k(x)} + c(x)), shape (B, G).

    Phi is taken on the global grid, so this is the residual of the smooth function b . w_k near x, the
    quantity each expert's solve minimises; finite differences of the stitched field would instead be
    dominated by the jumps at block interfaces. For one expert it equals F(u) exactly.
    """
    z = (phi * w_at[:, :, None, :]).sum(-1)  # einsum would lower to B G tiny matrix products
    if off is not None:
        z = z + off
    return spec.pointwise(z) * spec.collocation_mask().to(z.device)


class HardConstraint(nn.Module):
    """PI-HC: one nonlinear least-squares solve per sample over m points drawn from the whole grid."""

    def __init__(
        self,
        spec: PDESpec,
        points: int,
        solver: SolverConfig | None = None,
        seed: int = 0,
        omega0: float = 0.0,
    ):
        super().__init__()
        self.spec, self.points, self.solver, self.seed, self.omega0 = (
            spec,
            points,
            solver or SolverConfig(),
            seed,
            omega0,
        )
        self.allowed = torch.nonzero(spec.collocation_mask()).squeeze(-1)

    def forward(self, b: Tensor, data: Fields, step: int, sample_ids: list[int]) -> tuple[Tensor, SolveInfo]:
        """Return u (B, *grid) in float64 and the solver diagnostics."""
        bg = to_grid_last(b)
        bsz, n = bg.shape[0], bg.shape[-1]
        phi, off = self.spec.features(bg)
        m = min(self.points, len(self.allowed))
        idx = torch.stack(
            [self.allowed[sample_points(len(self.allowed), m, self.seed, step, s, 0)] for s in sample_ids]
        )  # (B, m)
        phi_s = torch.gather(phi, 1, idx[:, :, None, None].expand(-1, -1, *phi.shape[2:]))
        off_s = None if off is None else torch.gather(off, 1, idx[:, :, None].expand(-1, -1, off.shape[-1]))
        L, y = self.spec.linear_rows(bg, data)
        w0 = torch.full((bsz, n), self.omega0, dtype=torch.float64, device=bg.device)
        w, res = solve_nlls(phi_s, L, y, self.spec.pointwise, self.solver, offset=off_s, omega0=w0)
        # Same arithmetic as the MoE assembly, so that K = 1 reproduces this layer bit for bit.
        w_at = w[:, None, :][:, torch.zeros(phi.shape[1], dtype=torch.long, device=w.device)]
        u = (bg * w_at.reshape(bsz, *self.spec.grid, n)).sum(-1)
        r = expert_residual(self.spec, phi, off, w_at)
        return u, SolveInfo(res.iterations, res.converged, res.residual_norm, w.detach(), r)


class HardConstraintMoE(nn.Module):
    """PI-HC-MoE: K experts on a fixed partition; all B x K problems solved as one batch (``local``).

    ``solve_fn`` replaces the batched local solve, e.g. by the expert-parallel all-to-all exchange.
    """

    def __init__(
        self,
        spec: PDESpec,
        experts: int | tuple[int, ...],
        points: int,
        solver: SolverConfig | None = None,
        seed: int = 0,
        omega0: float = 0.0,
        solve_fn: SolveFn | None = None,
        min_points: int = 1,
        interface_weight: float = 0.0,
        local_rows: bool = False,
    ):
        super().__init__()
        self.spec, self.points, self.solver, self.seed, self.omega0 = (
            spec,
            points,
            solver or SolverConfig(),
            seed,
            omega0,
        )
        self.router = Router(spec.grid, experts, spec.collocation_mask(), min_points=min_points)
        self.solve_fn: SolveFn = solve_fn or solve_nlls
        self.interface_weight = interface_weight
        # local_rows: expert k keeps only the IC/BC rows on its own block (the paper keeps all of them).
        self.row_mask = (
            (self.router.block_of[spec.row_points()][None, :] == torch.arange(self.K)[:, None]) if local_rows else None
        )  # (K, q)
        self.pairs = self.router.interface_pairs()  # (R, 3): grid point, its expert, the neighbour's expert

    @property
    def K(self) -> int:
        """Number of experts."""
        return self.router.K

    def forward(self, b: Tensor, data: Fields, step: int, sample_ids: list[int]) -> tuple[Tensor, SolveInfo]:
        """Return u (B, *grid) in float64 and per-(sample, expert) diagnostics flattened as (B*K,)."""
        bg = to_grid_last(b)
        bsz, n, K = bg.shape[0], bg.shape[-1], self.K
        phi, off = self.spec.features(bg)  # global grid: stencils cross block edges
        idx = self.router.sample(self.points, step, sample_ids, self.seed).reshape(bsz, -1).to(bg.device)
        m = idx.shape[1] // K
        phi_s = torch.gather(phi, 1, idx[:, :, None, None].expand(-1, -1, *phi.shape[2:]))
        phi_s = phi_s.reshape(bsz * K, m, *phi.shape[2:])
        off_s = None
        if off is not None:
            off_s = torch.gather(off, 1, idx[:, :, None].expand(-1, -1, off.shape[-1])).reshape(bsz * K, m, -1)
        L, y = self.spec.linear_rows(bg, data)  # global IC/BC rows, shared by every expert of a sample
        if self.interface_weight > 0 and K > 1:
            if self.solve_fn is not solve_nlls:
                raise PhysicsError("interface rows couple all experts of a sample: use the local or data placement")
            w, res = self._solve_joint(bg, phi_s.reshape(bsz, K, m, -1, n), off_s, L, y)
        else:
            L = L[:, None].expand(-1, K, -1, -1)
            y = y[:, None].expand(-1, K, -1)
            if self.row_mask is not None:  # zeroed rows drop out of the least-squares problem
                mask = self.row_mask.to(L.device, L.dtype)
                L, y = L * mask[None, :, :, None], y * mask[None]
            L = L.reshape(bsz * K, *L.shape[2:])
            y = y.reshape(bsz * K, -1)
            w0 = torch.full((bsz * K, n), self.omega0, dtype=torch.float64, device=bg.device)
            w, res = self.solve_fn(phi_s, L, y, self.spec.pointwise, self.solver, offset=off_s, omega0=w0)
        w = w.reshape(bsz, K, n)
        # Each grid point takes the coefficients of its own expert: u(x) = b(x) . w_{k(x)}.
        wk = w[:, self.router.block_of].reshape(bsz, *self.spec.grid, n)
        u = (bg * wk).sum(-1)
        r = expert_residual(self.spec, phi, off, wk.reshape(bsz, -1, n))
        pts, k1, k2 = self.pairs.unbind(1)
        b_pts = bg.reshape(bsz, -1, n)[:, pts]
        jump = (b_pts * (w[:, k1] - w[:, k2])).sum(-1)
        return u, SolveInfo(res.iterations, res.converged, res.residual_norm, w.detach(), r, jump)

    def _solve_joint(
        self, bg: Tensor, phi_s: Tensor, off_s: Tensor | None, L: Tensor, y: Tensor
    ) -> tuple[Tensor, LMResult]:
        """One problem per sample in W = (w_1, ..., w_K) in R^{KN}: the experts' own rows (block diagonal) plus
        interface rows beta * b(x) (w_k - w_k') on both sides of every shared edge, so neighbouring experts
        agree there (an addition to the paper, whose experts may jump across interfaces)."""
        bsz, K, m, J, n = phi_s.shape
        eye = torch.eye(K, dtype=bg.dtype)
        # Expert k's PDE rows act on the k-th block of W only: kept block-structured (blocks=K), never padded.
        phi_j = phi_s.reshape(bsz, K * m, J, n)
        off_j = None if off_s is None else off_s.reshape(bsz, K * m, -1)
        q = L.shape[1]
        L_j = torch.einsum("bqn,kl->bkqln", L, eye)
        y_j = y[:, None].expand(-1, K, -1)
        if self.row_mask is not None:
            mask = self.row_mask.to(L.device, L.dtype)
            L_j, y_j = L_j * mask[None, :, :, None, None], y_j * mask[None]
        L_j, y_j = L_j.reshape(bsz, K * q, K * n), y_j.reshape(bsz, K * q)
        pts, k1, k2 = self.pairs.unbind(1)
        sign = nn.functional.one_hot(k1, K).to(bg.dtype) - nn.functional.one_hot(k2, K).to(bg.dtype)  # (R, K)
        b_pts = bg.reshape(bsz, -1, n)[:, pts]  # (B, R, N)
        L_if = self.interface_weight * (b_pts[:, :, None, :] * sign[None, :, :, None]).reshape(bsz, -1, K * n)
        L_all = torch.cat([L_j, L_if], dim=1)
        y_all = torch.cat([y_j, torch.zeros(bsz, L_if.shape[1], dtype=bg.dtype)], dim=1)
        w0 = torch.full((bsz, K * n), self.omega0, dtype=torch.float64, device=bg.device)
        return solve_nlls(phi_j, L_all, y_all, self.spec.pointwise, self.solver, offset=off_j, omega0=w0, blocks=K)
