"""Parallel experts with torch.distributed: ``data`` (DDP over samples) and ``expert`` (all-to-all to owners).

``expert``: rank s owns experts [sK/W, (s+1)K/W). Every rank packs the sampled features and IC/BC rows of its
samples' problems, an all-to-all sends them to the owners, owners solve (LM + IFT), return only w_k (N numbers
per sample-expert) through a second all-to-all. Backward: the all-to-all's adjoint is the reverse exchange, so
w-bar travels to the owners, their IFT gradients travel back (Chalapathi et al., ICLR 2024).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from physics.errors import PhysicsError
from physics.implicit import SolverConfig, solve_nlls
from physics.lm import LMResult
from physics.nlls import Pointwise

PLACEMENTS = ("local", "data", "expert")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with equal chunks along dim 0; the adjoint of an exchange is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # noqa: D401
        ctx.group = group
        # Contiguous buffers on both sides: empty_like would copy the strides of a non-contiguous input, and
        # the exchange writes rows in C order.
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        # Equal chunks: the reverse exchange (split sizes swapped) is the same call.
        dist.all_to_all_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def all_to_all(x: Tensor, group=None) -> Tensor:
    """Differentiable all-to-all: chunk i of dim 0 goes to rank i; chunk j of the result came from rank j."""
    return _AllToAll.apply(x, group)


class ExpertParallelSolve:
    """Drop-in ``solve_fn`` for HardConstraintMoE that solves each expert's problems on its owner rank.

    Problems arrive ordered (local sample, expert); every rank must hold the same number of samples.
    """

    def __init__(self, num_experts: int, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        if num_experts % self.world:
            raise PhysicsError(f"expert placement needs K divisible by the world size: K={num_experts}, W={self.world}")
        self.K = num_experts

    def __call__(
        self,
        phi: Tensor,
        L: Tensor,
        y: Tensor,
        f: Pointwise,
        cfg: SolverConfig,
        offset: Tensor | None = None,
        omega0: Tensor | None = None,
    ) -> tuple[Tensor, LMResult]:
        W, K = self.world, self.K
        P, m, J, N = phi.shape
        B = P // K
        q = L.shape[1]
        if omega0 is None:
            omega0 = torch.zeros(P, N, dtype=torch.float64, device=phi.device)
        parts = [phi.reshape(P, -1), L.reshape(P, -1), y.reshape(P, -1), omega0.detach().reshape(P, -1)]
        if offset is not None:
            parts.append(offset.reshape(P, -1))
        sizes = [p.shape[1] for p in parts]
        packed = torch.cat([p.to(torch.float64) for p in parts], dim=1)  # (B*K, S)
        # (B, W, K/W, S) -> destination-major (W, B, K/W, S): chunk s holds the problems of s's experts.
        packed = packed.reshape(B, W, K // W, -1).transpose(0, 1).reshape(W * B * (K // W), -1)
        recv = all_to_all(packed, self.group)  # (W_src * B * K/W, S)
        cols = torch.split(recv, sizes, dim=1)
        n_own = recv.shape[0]
        r_phi = cols[0].reshape(n_own, m, J, N)
        r_L, r_y, r_w0 = cols[1].reshape(n_own, q, N), cols[2].reshape(n_own, q), cols[3].reshape(n_own, N)
        r_off = cols[4].reshape(n_own, m, J) if offset is not None else None
        w, res = solve_nlls(r_phi, r_L, r_y, f, cfg, offset=r_off, omega0=r_w0.detach())
        back = all_to_all(w, self.group)  # (W_owner * B * K/W, N), only the coefficients travel back
        w_home = back.reshape(W, B, K // W, N).transpose(0, 1).reshape(P, N)
        with torch.no_grad():
            diag = torch.stack([res.iterations.double(), res.converged.double(), res.residual_norm, res.grad_norm], 1)
            diag_back = torch.empty_like(diag)
            dist.all_to_all_single(diag_back, diag.contiguous(), group=self.group)
            diag_back = diag_back.reshape(W, B, K // W, 4).transpose(0, 1).reshape(P, 4)
        info = LMResult(
            w_home.detach(), diag_back[:, 0].long(), diag_back[:, 1] > 0.5, diag_back[:, 2], diag_back[:, 3]
        )
        return w_home, info


def shard(n_global: int, rank: int, world: int) -> list[int]:
    """Global sample ids of this rank: contiguous equal shards (the global batch must divide evenly)."""
    if n_global % world:
        raise PhysicsError(f"global batch {n_global} is not divisible by the world size {world}")
    per = n_global // world
    return list(range(rank * per, (rank + 1) * per))
