"""Hard-constraint layers: PI-HC (one solve per sample) and PI-HC-MoE (one solve per sample and expert).

u(x) = b(x) . w*, w* = argmin 1/2 ||[f(Phi w + c) at m points; L w - y; lam w]||^2 (Levenberg-Marquardt,
exact IFT backward). MoE: expert k solves w_k from its own points in Omega_k plus the global IC/BC rows and
predicts u = b . w_k on Omega_k (Chalapathi et al., ICLR 2024, Secs. 3-3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physics.errors import PhysicsError
from physics.implicit import SolverConfig, solve_nlls, solve_nlls_factored
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


def gather_rows(phi: Tensor, idx: Tensor) -> Tensor:
    """Features at sampled points: phi (B, G, J, N), idx (B, K, m) -> (B K, m, J, N), stored feature-major
    (also for offsets as (B, G, J, 1)).

    One index_select on the feature-major rows, so every problem's (J, m, N) block is contiguous, the layout in
    which the solver's per-feature passes are fastest (physics.nlls.feature_major); its backward is one
    index_add into the (B, J, G, N) gradient.
    """
    bsz, g, j, n = phi.shape
    k, m = idx.shape[1], idx.shape[2]
    flat = phi.transpose(1, 2).contiguous().reshape(bsz * j * g, n)  # no copy when the spec's phi is feature-major
    base = (torch.arange(bsz, device=idx.device)[:, None] * j + torch.arange(j, device=idx.device)) * g  # (B, J)
    rows = base[:, None, :, None] + idx[:, :, None, :]  # (B, K, J, m)
    return flat.index_select(0, rows.reshape(-1)).reshape(bsz * k, j, m, n).transpose(1, 2)


def prepare(spec: PDESpec, b: Tensor, data: Fields) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(basis (B, *grid, N) in float64, offset of the features (B, G, J) or None, field offset (B, *grid) or None).

    With the ansatz u = u_off + basis . w and features linear in the field, z = Phi w + Phi(u_off) + c: the known
    part of the field joins the constant offset c of the features.
    """
    bg = spec.basis(to_grid_last(b))
    u_off = spec.field_offset(data)
    field = bg.new_zeros(bg.shape[:-1]) if u_off is None else u_off.to(bg.dtype)
    z_off, c = spec.features(field[..., None])
    if u_off is None:
        return bg, c, None
    return bg, (z_off[..., 0] if c is None else z_off[..., 0] + c), field


def sampled_solve(
    spec: PDESpec,
    bg: Tensor,
    idx: Tensor,
    off: Tensor | None,
    L: Tensor,
    y: Tensor,
    solver: SolverConfig,
    w0: Tensor,
    solve_fn: SolveFn | None = None,
) -> tuple[Tensor, LMResult]:
    """w* (B K, N) of the problems whose PDE rows are the features of bg at the points idx (B, K, m).

    Locally (``solve_fn`` None) the implicit backward never forms the (B K, m, J, N) feature gradient: its two
    row fields (see physics.implicit.solve_nlls_factored) are scattered onto the grid, one channel per expert
    and field, and pulled back through the features' adjoint on these 2K scalar fields, then contracted with
    (w_k, lam_k): O(G J K + G K N) instead of O(m J N) for the gradient, a (B, J, G, N) scatter and an N-channel
    adjoint. ``solve_fn`` (e.g. the expert-parallel exchange) gets the sampled features themselves.
    """
    off_s = None if off is None else gather_rows(off[..., None], idx)[..., 0]  # (B K, m, J)
    if solve_fn is not None:
        phi_s = gather_rows(spec.features(bg)[0], idx)  # (B K, m, J, N)
        return solve_fn(phi_s, L, y, spec.pointwise, solver, offset=off_s, omega0=w0)
    bsz, K, m = idx.shape
    n, g = bg.shape[-1], math.prod(bg.shape[1:-1])

    def make_phi(src: Tensor) -> Tensor:
        return gather_rows(spec.features(src)[0], idx)

    def adjoint(q: Tensor, p: Tensor, w: Tensor, lam: Tensor) -> Tensor:
        j = q.shape[-1]
        # Grid fields (B, J, G, 2K): channel k holds expert k's q rows at its points, channel K + k its p rows.
        fields = q.new_zeros(bsz, j, g, 2 * K)
        vals = torch.stack([q.reshape(bsz, K, m, j), p.reshape(bsz, K, m, j)], dim=1)  # (B, 2, K, m, J)
        bi = torch.arange(bsz, device=idx.device).view(bsz, 1, 1, 1, 1)
        ci = torch.arange(2 * K, device=idx.device).view(1, 2, K, 1, 1)
        ji = torch.arange(j, device=idx.device).view(1, 1, 1, 1, j)
        gi = idx[:, None, :, :, None]
        # Sampling is without replacement within an expert and channels are per expert: no index repeats.
        fields[bi, ji, gi, ci] = vals
        with torch.enable_grad():
            x = bg.new_zeros(*bg.shape[:-1], 2 * K).requires_grad_(True)  # the features are linear in x
            (adj,) = torch.autograd.grad(spec.features(x)[0], x, grad_outputs=fields.transpose(1, 2))
        coef = torch.cat([w.reshape(bsz, K, n), lam.reshape(bsz, K, n)], dim=1)  # (B, 2K, N)
        return (adj.reshape(bsz, g, 2 * K) @ coef).reshape(bg.shape)

    return solve_nlls_factored(bg, make_phi, adjoint, L, y, spec.pointwise, w0, solver, offset=off_s)


def assemble(
    spec: PDESpec, bg: Tensor, w: Tensor, own: Tensor, off: Tensor | None, u_off: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """u(x) = u_off(x) + b(x) . w_{k(x)} (B, *grid), the PDE residual of each point's own expert (B, G) and
    every expert's field U_k = b . w_k (B, G, K).

    The residual is f(Phi(x) w_{k(x)} + c(x)): Phi is taken on the global grid, so this is the residual of the
    smooth function b . w_k near x, the quantity each expert's solve minimises (finite differences of the
    stitched field would be dominated by the jumps at block interfaces); for one expert it equals F(u) exactly.
    The features are linear in b, so Phi w_k = features(b . w_k): computed on the K fields U_k = b . w_k
    instead of the N basis functions (K <= N times less work, and no (B, G, J, N) temporary).
    """
    bsz, n, K = bg.shape[0], bg.shape[-1], w.shape[1]
    U = (bg.reshape(bsz, -1, n) @ w.transpose(1, 2)).reshape(*bg.shape[:-1], K)  # every expert's field everywhere
    sel = own.to(bg.device)[None, :, None].expand(bsz, -1, 1)
    u = U.reshape(bsz, -1, K).gather(-1, sel).reshape(bg.shape[:-1])
    z_all = spec.features(U)[0]  # (B, G, J, K)
    z = z_all.gather(-1, sel[:, :, None].expand(-1, -1, z_all.shape[2], -1))[..., 0]
    if off is not None:
        z = z + off
    r = spec.pointwise(z) * spec.collocation_mask().to(z.device)
    return (u if u_off is None else u + u_off), r, U.reshape(bsz, -1, K)


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
        self.spec, self.points, self.seed, self.omega0 = spec, points, seed, omega0
        self.solver = solver or SolverConfig()
        self.allowed = torch.nonzero(spec.collocation_mask()).squeeze(-1)  # host: points are drawn on the host
        # Every point belongs to the one solve; a buffer follows the module to its device, not saved with the weights.
        self.register_buffer("own", torch.zeros(math.prod(spec.grid), dtype=torch.long), persistent=False)

    def forward(self, b: Tensor, data: Fields, step: int, sample_ids: list[int]) -> tuple[Tensor, SolveInfo]:
        """Return u (B, *grid) in float64 and the solver diagnostics."""
        bg, off, u_off = prepare(self.spec, b, data)
        bsz, n = bg.shape[0], bg.shape[-1]
        m = min(self.points, len(self.allowed))
        idx = torch.stack(
            [self.allowed[sample_points(len(self.allowed), m, self.seed, step, s, 0)] for s in sample_ids]
        ).to(bg.device)  # (B, m)
        L, y = self.spec.linear_rows(bg, data)
        w0 = torch.full((bsz, n), self.omega0, dtype=torch.float64, device=bg.device)
        w, res = sampled_solve(self.spec, bg, idx[:, None], off, L, y, self.solver, w0)
        # Same arithmetic as the MoE assembly, so that K = 1 reproduces this layer bit for bit.
        u, r, _ = assemble(self.spec, bg, w[:, None], self.own, off, u_off)
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
        self.spec, self.points, self.seed, self.omega0 = spec, points, seed, omega0
        self.solver = solver or SolverConfig()
        self.router = Router(spec.grid, experts, spec.collocation_mask(), min_points=min_points)
        self.solve_fn: SolveFn = solve_fn or solve_nlls
        self.interface_weight = interface_weight
        # local_rows: expert k keeps only the IC/BC rows on its own block (the paper keeps all of them).
        row_mask = (
            (self.router.block_of[spec.row_points()][None, :] == torch.arange(self.K)[:, None]) if local_rows else None
        )  # (K, q)
        # Index buffers follow the module to its device; the router itself samples on the host.
        self.register_buffer("row_mask", row_mask, persistent=False)
        self.register_buffer("block_of", self.router.block_of, persistent=False)
        # (R, 3): grid point, its expert, the neighbour's expert.
        self.register_buffer("pairs", self.router.interface_pairs(), persistent=False)

    @property
    def K(self) -> int:
        """Number of experts."""
        return self.router.K

    def forward(self, b: Tensor, data: Fields, step: int, sample_ids: list[int]) -> tuple[Tensor, SolveInfo]:
        """Return u (B, *grid) in float64 and per-(sample, expert) diagnostics flattened as (B*K,)."""
        bg, off, u_off = prepare(self.spec, b, data)  # features on the global grid: stencils cross block edges
        bsz, n, K = bg.shape[0], bg.shape[-1], self.K
        idx = self.router.sample(self.points, step, sample_ids, self.seed).to(bg.device)  # (B, K, m)
        m = idx.shape[2]
        L, y = self.spec.linear_rows(bg, data)  # global IC/BC rows, shared by every expert of a sample
        if self.interface_weight > 0 and K > 1:
            if self.solve_fn is not solve_nlls:
                raise PhysicsError("interface rows couple all experts of a sample: use the local or data placement")
            # One problem per sample: its K m rows (grouped by expert) stored feature-major, (B, J, K m, N).
            rows = idx.reshape(bsz, 1, K * m)
            phi_s = gather_rows(self.spec.features(bg)[0], rows)  # (B, K m, J, N)
            off_s = None if off is None else gather_rows(off[..., None], rows)[..., 0]  # (B, K m, J)
            w, res = self._solve_joint(bg, phi_s, off_s, L, y, K)
        else:
            L = L[:, None].expand(-1, K, -1, -1)
            y = y[:, None].expand(-1, K, -1)
            if self.row_mask is not None:  # zeroed rows drop out of the least-squares problem
                mask = self.row_mask.to(L.device, L.dtype)
                L, y = L * mask[None, :, :, None], y * mask[None]
            L = L.reshape(bsz * K, *L.shape[2:])
            y = y.reshape(bsz * K, -1)
            w0 = torch.full((bsz * K, n), self.omega0, dtype=torch.float64, device=bg.device)
            local = None if self.solve_fn is solve_nlls else self.solve_fn
            w, res = sampled_solve(self.spec, bg, idx, off, L, y, self.solver, w0, local)
        w = w.reshape(bsz, K, n)
        # Each grid point takes the coefficients of its own expert: u(x) = b(x) . w_{k(x)}.
        u, r, U = assemble(self.spec, bg, w, self.block_of, off, u_off)
        # b(x) . (w_k - w_k') at interface points, read from the experts' fields U (B, G, K): a gather from the
        # N-channel basis would cost a full-size zero gradient of b in the backward.
        pts, k1, k2 = self.pairs.unbind(1)
        jump = U[:, pts, k1] - U[:, pts, k2]
        return u, SolveInfo(res.iterations, res.converged, res.residual_norm, w.detach(), r, jump)

    def _solve_joint(
        self, bg: Tensor, phi_j: Tensor, off_j: Tensor | None, L: Tensor, y: Tensor, K: int
    ) -> tuple[Tensor, LMResult]:
        """One problem per sample in W = (w_1, ..., w_K) in R^{KN}: the experts' own rows (block diagonal) plus
        interface rows beta * b(x) (w_k - w_k') on both sides of every shared edge, so neighbouring experts
        agree there (an addition to the paper, whose experts may jump across interfaces)."""
        bsz, n = phi_j.shape[0], phi_j.shape[-1]
        eye = torch.eye(K, dtype=bg.dtype, device=bg.device)
        # Expert k's PDE rows (the k-th group of phi_j) act on the k-th block of W only: kept block-structured
        # (blocks=K), never padded.
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
        y_all = torch.cat([y_j, y_j.new_zeros(bsz, L_if.shape[1])], dim=1)
        w0 = torch.full((bsz, K * n), self.omega0, dtype=torch.float64, device=bg.device)
        return solve_nlls(phi_j, L_all, y_all, self.spec.pointwise, self.solver, offset=off_j, omega0=w0, blocks=K)
