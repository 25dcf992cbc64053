"""Data parallelism over torch.distributed (torchrun: RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, NCCL on GPUs).

Each global batch is cut into ``world`` contiguous shards; a rank's loss is ``sum_{i in shard} l_i / |batch|``
and gradients are summed over ranks (one flat all-reduce), so every rank applies the gradient of the joint-batch
mean, exactly as one process would, whatever the shard sizes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Collective:
    """Sums and maxima over the ranks; with one process every operation is the identity."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, t: Tensor) -> Tensor:
        """``sum_ranks t`` (a new tensor; t is not modified)."""
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def max(self, t: Tensor) -> Tensor:
        """``max_ranks t`` elementwise."""
        return self._all_reduce(t, dist.ReduceOp.MAX)

    def _all_reduce(self, t: Tensor, op) -> Tensor:
        if not self.active:
            return t
        out = t.detach().clone()
        dist.all_reduce(out, op=op)
        return out

    def sum_grads(self, params: list[nn.Parameter]) -> None:
        """Replace every gradient by its sum over the ranks (a missing gradient counts as zero), in one
        flat buffer: one collective per step instead of one per tensor."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (seeded initialisation already agrees; this makes it
        independent of per-rank library state)."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Collective, bool]:
    """The collective for this process and whether this call created the process group (and so must destroy
    it). Joins a group that already exists (tests spawn their own), starts one under torchrun, else single."""
    if dist.is_available() and dist.is_initialized():
        return Collective(dist.get_rank(), dist.get_world_size()), False
    if not launched_by_torchrun():
        return Collective(), False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL communicates on the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Collective(dist.get_rank(), dist.get_world_size()), True


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous rows of a batch of ``n`` that ``rank`` of ``world`` processes: sizes differ by at most
    one, as ``torch.tensor_split`` cuts them."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))
