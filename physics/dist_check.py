"""Process-count equivalence check: one training step's loss and parameter gradients under the ``local``,
``data`` and ``expert`` placements. Used by the tests (gloo, FileStore) and by the benchmark's wall times.

Seeded point sampling per (step, sample id, expert id) makes the forward identical for any world size, so
the gradients must agree with the single-process ones up to floating-point reassociation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from models.mlp_basis import MLPBasis
from physics.implicit import SolverConfig
from physics.layer import HardConstraintMoE
from physics.lm import LMConfig
from physics.model import PDEModel, physics_loss
from physics.parallel import ExpertParallelSolve, shard
from physics.problems import DiffusionSorption, Fields


@dataclass(frozen=True)
class CheckConfig:
    """A tiny diffusion-sorption MoE problem; every rank builds the same model from ``seed``."""

    nt: int = 6
    nx: int = 16
    basis: int = 4
    experts: int = 4
    points: int = 12
    batch: int = 4
    seed: int = 0
    step: int = 3


def build(cfg: CheckConfig) -> tuple[PDEModel, Fields]:
    """The model (float64) and the global batch of initial conditions."""
    torch.manual_seed(cfg.seed)
    spec = DiffusionSorption(nt=cfg.nt, nx=cfg.nx)
    net = MLPBasis(3, cfg.basis, width=8, depth=2, final_activation=True).double()
    solver = SolverConfig(lm=LMConfig(max_iter=200, gtol=1e-12, on_fail="raise"))
    layer = HardConstraintMoE(spec, cfg.experts, cfg.points, solver, seed=cfg.seed, omega0=1.0)
    levels = torch.linspace(0.02, 0.18, cfg.batch, dtype=torch.float64)
    return PDEModel(spec, net, layer), Fields(levels[:, None].expand(-1, cfg.nx).clone())


def flat_grads(model: torch.nn.Module) -> np.ndarray:
    """All parameter gradients as one float64 vector."""
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy()


def single_process(cfg: CheckConfig) -> tuple[float, np.ndarray]:
    """Loss and gradients of the full batch on one process (``local`` placement)."""
    model, data = build(cfg)
    u, info = model(data, cfg.step, list(range(cfg.batch)))
    loss = physics_loss(model.spec, u, data, info).total()
    loss.backward()
    return loss.item(), flat_grads(model)


def distributed_step(cfg: CheckConfig, placement: str, group=None) -> tuple[float, np.ndarray, float]:
    """Loss (all-reduced mean), gradients after DDP's all-reduce and wall time of one step on this rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model, data = build(cfg)
    if placement == "expert":
        # The exchange runs on its own process group; DDP's all-reduce stays on the default group.
        assert isinstance(model.layer, HardConstraintMoE)
        model.layer.solve_fn = ExpertParallelSolve(model.layer.K, group=group)
    ids = shard(cfg.batch, rank, world)
    local = Fields(data.u0[ids])
    ddp = DistributedDataParallel(model)
    t0 = time.perf_counter()
    u, info = ddp(local, cfg.step, ids)
    loss = physics_loss(model.spec, u, local, info).total()  # mean over local samples; DDP averages over ranks
    loss.backward()
    wall = time.perf_counter() - t0
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total.item() / world, flat_grads(model), wall


def worker(rank: int, world: int, init_file: str, out_dir: str, cfg: CheckConfig) -> None:
    """Entry point for torch.multiprocessing.spawn: run both placements, save rank 0's results as .npy."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        expert_group = dist.new_group(list(range(world)), backend="gloo")
        for placement in ("data", "expert"):
            loss, grads, wall = distributed_step(cfg, placement, group=expert_group)
            if rank == 0:
                np.save(Path(out_dir) / f"{placement}.npy", np.concatenate([[loss, wall], grads]))
        dist.barrier()
    finally:
        dist.destroy_process_group()
