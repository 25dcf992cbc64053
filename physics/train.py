"""One trainer for PI-SC (soft), PI-HC (hard) and PI-HC-MoE (moe), plus evaluation on held-out solutions.

Adam on the physics loss (no interior solution data), global-norm clipping 1.0, learning rate halved every
``lr_halve_every`` steps down to ``lr_min`` (Chalapathi et al., ICLR 2024, App. D). Solver failures are counted
per step; a non-finite loss or gradient stops training with a PhysicsError instead of being zeroed; a step whose
loss exceeds ``skip_spikes`` times the median of the last 50 takes no update (counted in the history).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.fno import FNO
from models.mlp_basis import MLPBasis
from physics.datasets import default_cache_dir, diffsorp_dataset, heat_dataset, navier_stokes_dataset
from physics.diagnostics import error_breakdown
from physics.errors import ConfigError, PhysicsError
from physics.gen_navier_stokes import grf_2d
from physics.implicit import SolverConfig
from physics.layer import HardConstraint, HardConstraintMoE
from physics.lm import LMConfig
from physics.model import CONSTRAINTS, MOE_LOSSES, PDEModel, physics_loss, relative_l2
from physics.parallel import PLACEMENTS, ExpertParallelSolve, shard
from physics.problems import PROBLEMS, RESIDUAL_UNITS, Fields, PDESpec, make_spec, problem_dims
from physics.router import Router, normalise_experts


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run; saved as config.json next to the weights."""

    problem: str = "diffusion-sorption"
    constraint: str = "moe"
    experts: int | tuple[int, ...] = 4  # K blocks (last axis; a near-square spatial split in 3D) or per-axis counts
    interface_weight: float = 0.0  # > 0: joint solve with continuity rows between neighbouring experts
    local_rows: bool = False  # experts keep only the IC/BC rows on their own block (paper: all rows)
    moe_loss: str = "expert"  # "expert": own-expert residual + interface mismatch; "stitched": F(u) of the
    # stitched field by finite differences across interfaces (as the reference code)
    residual_units: str = "horizon"  # unit of the solver's PDE rows: "horizon" (O(1)) or "physical" (the paper's)
    points: int = 1000
    basis: int = 16
    backbone: str = "fno"
    width: int = 32
    modes: int = 8
    layers: int = 4
    nt: int = 21
    nx: int = 64
    steps: int = 300
    batch: int = 4
    lr: float = 1e-3
    lr_halve_every: int = 0  # 0: steps // 5
    lr_min: float = 1e-4
    clip: float = 1.0
    train_time_fraction: float = 1.0  # < 1: train on t <= fraction * T, report extrapolation beyond
    n_test: int = 8
    seed: int = 0
    max_iter: int = 50
    gtol: float = 1e-8
    ridge: float = 1e-4
    hessian: str = "exact"
    drop_nonconverged: bool = False
    skip_spikes: float = 3.0  # > 1: no update on a step whose loss exceeds this times the recent median (0: off)
    eval_every: int = 0  # > 0: test error on the held-out set every this many steps, into the history (0: never)
    dtype: str = "float32"
    placement: str = "local"  # local | data | expert (torch.distributed; launch with torchrun)
    device: str = "auto"  # auto (this rank's GPU if CUDA is available, else CPU) | cpu | cuda | cuda:N
    cache_dir: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.problem not in PROBLEMS:
            raise PhysicsError(f"unknown problem {self.problem!r}; choose one of {', '.join(PROBLEMS)}")
        if isinstance(self.experts, list):  # from config.json
            self.experts = tuple(self.experts)
        if self.constraint not in CONSTRAINTS:
            raise PhysicsError(f"unknown constraint {self.constraint!r}; choose one of {', '.join(CONSTRAINTS)}")
        if self.backbone not in ("fno", "mlp"):
            raise PhysicsError(f"unknown backbone {self.backbone!r}; choose fno or mlp")
        if self.moe_loss not in MOE_LOSSES:
            raise PhysicsError(f"unknown moe_loss {self.moe_loss!r}; choose {' or '.join(MOE_LOSSES)}")
        if self.residual_units not in RESIDUAL_UNITS:
            raise PhysicsError(
                f"unknown residual_units {self.residual_units!r}; choose {' or '.join(RESIDUAL_UNITS)}"
            )
        if self.placement not in PLACEMENTS:
            raise PhysicsError(f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if not 0.0 < self.train_time_fraction <= 1.0:
            raise ConfigError(f"train_time_fraction must be in (0, 1], got {self.train_time_fraction}")
        self._check_numbers()
        parse_device(self.device)

    def _check_numbers(self) -> None:
        """Counts are integers in range, rates finite and in range: a ConfigError (a ValueError) otherwise."""
        experts = self.experts if isinstance(self.experts, tuple) else (self.experts,)
        if not experts or not all(_is_int(k) and k >= 1 for k in experts):
            raise ConfigError(f"experts must be positive integers, got {self.experts!r}")
        counts = {"points": 1, "basis": 1, "width": 1, "modes": 1, "layers": 1, "nt": 3, "nx": 4, "steps": 0,
                  "batch": 1, "lr_halve_every": 0, "n_test": 1, "seed": 0, "max_iter": 1, "eval_every": 0}
        for name, low in counts.items():
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.seed >= 2**32:
            raise ConfigError(f"seed must be < 2**32, got {self.seed}")
        if self.skip_spikes != 0 and not (isinstance(self.skip_spikes, int | float) and self.skip_spikes > 1
                                          and math.isfinite(self.skip_spikes)):
            raise ConfigError(f"skip_spikes must be 0 (off) or a finite number > 1, got {self.skip_spikes!r}")
        positive = {"lr": self.lr, "clip": self.clip}
        nonneg = {"interface_weight": self.interface_weight, "lr_min": self.lr_min, "gtol": self.gtol,
                  "ridge": self.ridge}
        for name, v in (positive | nonneg).items():
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (name in positive and v == 0):
                raise ConfigError(f"{name} must be a finite number {'> 0' if name in positive else '>= 0'}, got {v!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")


def _is_int(v) -> bool:
    """An integer (numpy's too), not a bool or a float."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def parse_device(name: str) -> torch.device | None:
    """The device a --device name asks for, None for "auto"; a PhysicsError for anything but cpu / cuda[:N]."""
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise PhysicsError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    return dev


def resolve_device(name: str) -> torch.device:
    """The device to run on: "auto" is the GPU of this process (LOCAL_RANK under torchrun) when CUDA is available,
    else the CPU; asking for a GPU that is not there is a PhysicsError, not a silent CPU run."""
    dev = parse_device(name)
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise PhysicsError(
            f"device {name!r} requested but no CUDA GPU is available (torch {torch.__version__}, {build})"
        )
    index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", 0))
    if index >= torch.cuda.device_count():
        raise PhysicsError(f"device cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)


def dist_backend(device: torch.device) -> str:
    """torch.distributed backend for a device: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU timings are otherwise launch times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_spec(cfg: TrainConfig) -> PDESpec:
    """The evaluation grid (whole time horizon)."""
    return make_spec(cfg.problem, cfg.nt, cfg.nx, residual_units=cfg.residual_units)


def train_spec(cfg: TrainConfig) -> PDESpec:
    """The training grid: the first train_time_fraction of the frames, inputs normalised by the full horizon."""
    full = full_spec(cfg)
    nt = int(round(cfg.train_time_fraction * (cfg.nt - 1))) + 1
    t_max = full.extent[0] * (nt - 1) / (cfg.nt - 1)
    return make_spec(cfg.problem, nt, cfg.nx, t_max=t_max, t_ref=full.extent[0], residual_units=cfg.residual_units)


def build_backbone(cfg: TrainConfig) -> nn.Module:
    """FNO over the grid ((t, x) or (t, x, y)) or a pointwise MLP; N outputs with a final GELU for hard
    constraints, 1 for soft."""
    hard = cfg.constraint != "soft"
    out = cfg.basis if hard else 1
    ndim, channels = problem_dims(cfg.problem)
    torch.manual_seed(cfg.seed)
    if cfg.backbone == "fno":
        net: nn.Module = FNO(
            channels,
            out,
            (cfg.modes,) * ndim,
            width=cfg.width,
            layers=cfg.layers,
            fc=2 * cfg.width,
            final_activation=hard,
        )
    else:
        net = MLPBasis(channels, out, width=cfg.width, depth=cfg.layers, final_activation=hard)
    return net.to(getattr(torch, cfg.dtype))


def build_layer(cfg: TrainConfig, spec: PDESpec) -> HardConstraint | HardConstraintMoE | None:
    """The constraint layer for ``spec`` (None for the soft model)."""
    solver = SolverConfig(
        lm=LMConfig(max_iter=cfg.max_iter, gtol=cfg.gtol, on_fail="ignore"),
        ridge=cfg.ridge,
        hessian=cfg.hessian,
        drop_nonconverged=cfg.drop_nonconverged,
    )
    # The paper starts diffusion-sorption solves from ones(N).
    w0 = 1.0 if cfg.problem == "diffusion-sorption" else 0.0
    if cfg.constraint == "hard":
        return HardConstraint(spec, cfg.points, solver, seed=cfg.seed, omega0=w0)
    if cfg.constraint == "moe":
        return HardConstraintMoE(
            spec,
            normalise_experts(cfg.experts, len(spec.grid)),
            cfg.points,
            solver,
            seed=cfg.seed,
            omega0=w0,
            min_points=cfg.basis,
            interface_weight=cfg.interface_weight,
            local_rows=cfg.local_rows,
        )
    return None


def sample_fields(
    cfg: TrainConfig, spec: PDESpec, step: int, ids: list[int], device: torch.device | None = None
) -> Fields:
    """Training initial conditions, a function of (seed, step, sample id) only (data-free training), drawn on
    the host and moved to ``device``."""
    rows = []
    x = spec.x_coords()
    for sid in ids:
        rng = np.random.default_rng([cfg.seed, 7, step, sid])
        if cfg.problem == "diffusion-sorption":
            rows.append(torch.full_like(x, rng.uniform(0.0, 0.2)))  # PDEBench's family u0 = const
        elif cfg.problem == "navier-stokes":
            rows.append(torch.as_tensor(grf_2d(len(x), rng), dtype=x.dtype))  # the test set's GRF family
        else:
            a = rng.standard_normal(4) / np.arange(1, 5)
            rows.append(sum(float(a[n]) * torch.sin((n + 1) * torch.pi * x) for n in range(4)))
    return Fields(torch.stack(rows).to(device or "cpu"))


def heldout_set(cfg: TrainConfig) -> tuple[Fields, torch.Tensor]:
    """Held-out reference solutions on the evaluation grid (cached generator data)."""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.problem == "diffusion-sorption":
        d = diffsorp_dataset(
            cfg.n_test, nx=cfg.nx, nt=cfg.nt, seed=10_000 + cfg.seed, cache_dir=cache, progress=sys.stderr.isatty()
        )
    elif cfg.problem == "navier-stokes":
        spec = full_spec(cfg)
        d = navier_stokes_dataset(
            cfg.n_test,
            res=cfg.nx,
            nt=cfg.nt,
            nu=spec.nu,
            t_max=spec.t_max,
            seed=10_000 + cfg.seed,
            cache_dir=cache,
            progress=sys.stderr.isatty(),
        )
    else:
        d = heat_dataset(cfg.n_test, nx=cfg.nx, nt=cfg.nt, seed=10_000 + cfg.seed)
    u = torch.tensor(d["u"], dtype=torch.float64)
    return Fields(u[:, 0].clone()), u


def train(cfg: TrainConfig, out: Path | None = None, log=print) -> tuple[PDEModel, dict]:
    """Train; returns the model and a history with per-step loss, time and solver failure counts."""
    spec = train_spec(cfg)
    device = resolve_device(cfg.device)
    model = PDEModel(spec, build_backbone(cfg), build_layer(cfg, spec)).to(device)
    runner: nn.Module = model
    rank, world = 0, 1
    if cfg.placement != "local":
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL communicates on the current device
        if not dist.is_initialized():
            dist.init_process_group(dist_backend(device))  # torchrun provides the rendezvous environment
        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.placement == "expert":
            if not isinstance(model.layer, HardConstraintMoE):
                raise PhysicsError("expert placement needs --constraint moe")
            model.layer.solve_fn = ExpertParallelSolve(model.layer.K, group=dist.new_group(list(range(world))))
        # The layers' buffers are index constants built from the config, equal on every rank: no broadcast.
        device_ids = [device.index] if device.type == "cuda" else None
        runner = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        if rank != 0:
            log = None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    every = cfg.lr_halve_every or max(1, cfg.steps // 5)
    hist: dict[str, list] = {
        "loss": [],
        "pde": [],
        "rows": [],
        "step_seconds": [],
        "nonconverged": [],
        "lm_iters": [],
        "skipped": [],
        "eval": [],
    }
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = max(cfg.lr * 0.5 ** (step // every), cfg.lr_min)
        # Global sample ids: the sampled ICs and collocation points do not depend on the number of ranks.
        ids = [step * cfg.batch + i for i in shard(cfg.batch, rank, world)]
        data = sample_fields(cfg, spec, step, ids, device)
        t0 = time.perf_counter()
        u, info = runner(data, step, ids)
        parts = physics_loss(spec, u, data, info if cfg.moe_loss == "expert" else None)
        loss = parts.total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        if not torch.isfinite(norm):
            raise PhysicsError(f"non-finite gradient at step {step} (loss {loss.item():.3e})")
        logged = loss.detach().clone()
        if world > 1:  # the global-batch loss, not rank 0's share: every rank then skips the same steps
            dist.all_reduce(logged)
            logged /= world
        spike = is_spike(logged.item(), hist["loss"], cfg.skip_spikes)
        if not spike:
            opt.step()
        synchronize(device)
        hist["step_seconds"].append(time.perf_counter() - t0)
        hist["skipped"].append(int(spike))
        hist["loss"].append(logged.item())
        hist["pde"].append(parts.pde.mean().item())
        hist["rows"].append(parts.rows.mean().item())
        hist["nonconverged"].append(0 if info is None else int((~info.converged).sum()))
        hist["lm_iters"].append(0.0 if info is None else float(info.iterations.double().mean()))
        if log and (step % max(1, cfg.steps // 10) == 0 or step == cfg.steps - 1):
            log(
                f"step {step:5d} loss {hist['loss'][-1]:.4e} pde {hist['pde'][-1]:.3e} rows {hist['rows'][-1]:.3e} "
                f"lm-iters {hist['lm_iters'][-1]:.1f} nonconv {hist['nonconverged'][-1]} "
                f"skipped {sum(hist['skipped'])} "
                f"{hist['step_seconds'][-1]:.3f}s"
            )
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and rank == 0:
            hist["eval"].append(learning_curve_point(cfg, model, step + 1))
            if log:
                log(f"step {step + 1:5d} test {hist['eval'][-1]['test_rel_l2_pct']:.2f}%")
    if log and sum(hist["nonconverged"]):
        log(f"warning: {sum(hist['nonconverged'])} solves did not converge during training")
    if out is not None and rank == 0:
        save(model, cfg, hist, out)
    return model, hist


def learning_curve_point(cfg: TrainConfig, model: PDEModel, step: int) -> dict:
    """The held-out errors after ``step`` steps (a point of the learning curve). Evaluation draws its points from
    its own seeded generators and leaves the backbone in training mode, so training goes on exactly as without it."""
    was_training = model.backbone.training
    res = evaluate(cfg, model.backbone)
    model.backbone.train(was_training)
    keys = ("test_rel_l2_pct", "extrap_rel_l2_pct", "block_rel_l2_pct")
    return {"step": step, **{k: res[k] for k in keys if k in res}}


def is_spike(loss: float, history: list[float], factor: float, window: int = 50, warmup: int = 20) -> bool:
    """A loss spike: above ``factor`` times the median of the last ``window`` losses (after ``warmup`` steps;
    never with factor 0). Skipping its update keeps one failed solve's gradient, taken at a point that is not
    a minimiser, from throwing the basis into a worse basin (benchmarks/pde_moe.py, "Training stability")."""
    if not factor or len(history) < warmup:
        return False
    return loss > factor * float(np.median(history[-window:]))


def save(model: PDEModel, cfg: TrainConfig, hist: dict, out: Path) -> None:
    """Write config.json, backbone.pt and history.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.save(model.backbone.state_dict(), out / "backbone.pt")
    (out / "history.json").write_text(json.dumps(hist))


def load(out: Path) -> tuple[TrainConfig, nn.Module]:
    """Config and trained backbone of a run directory; a missing or malformed file is a PhysicsError."""
    path = out / "config.json"
    if not path.is_file():
        raise PhysicsError(f"{out} is not a training run directory (no config.json)")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        cfg = TrainConfig(**raw)
    except PhysicsError as e:
        raise PhysicsError(f"{path}: malformed config ({e})") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # bad JSON, unknown or mistyped keys
        raise PhysicsError(f"{path}: malformed config ({' '.join(str(e).split())})") from None
    try:
        net = build_backbone(cfg)
        net.load_state_dict(torch.load(out / "backbone.pt", weights_only=True, map_location="cpu"))
    except FileNotFoundError:
        raise PhysicsError(f"{out}: no backbone.pt (training did not finish?)") from None
    except Exception as e:  # a truncated or foreign weights file: torch raises several kinds
        raise PhysicsError(f"{out / 'backbone.pt'}: cannot load weights ({' '.join(str(e).split())[:200]})") from None
    return cfg, net


def evaluate(cfg: TrainConfig, backbone: nn.Module, plots: Path | None = None) -> dict:
    """Relative L2 in percent (``*_pct``) on held-out solutions over the whole grid and, if trained on a shorter
    horizon, on the extrapolated frames only; plus the inference time per batch in seconds (``infer_seconds``).
    Runs on the backbone's device."""
    spec = full_spec(cfg)
    device = next(backbone.parameters()).device
    model = PDEModel(spec, backbone, build_layer(cfg, spec)).to(device).eval()
    data, ref = heldout_set(cfg)
    data = Fields(data.u0.to(device))
    ids = list(range(ref.shape[0]))
    t0 = time.perf_counter()
    with torch.no_grad():
        u, info = model(data, 10**6, ids)  # a fixed evaluation step for the seeded point sampling
    synchronize(device)
    infer = time.perf_counter() - t0
    u = u.cpu()
    rel = relative_l2(u, ref)
    res = {
        "test_rel_l2_pct": 100 * rel.mean().item(),
        "test_rel_l2_std_pct": 100 * rel.std().item() if rel.numel() > 1 else 0.0,
        "infer_seconds": infer,
        "nonconverged": 0 if info is None else int((~info.converged).sum()),
    }
    n_train = train_spec(cfg).grid[0]
    if n_train < cfg.nt:
        ext = relative_l2(u[:, n_train:], ref[:, n_train:])
        res["extrap_rel_l2_pct"] = 100 * ext.mean().item()
        res["extrap_rel_l2_std_pct"] = 100 * ext.std().item() if ext.numel() > 1 else 0.0
    block_of = _report_blocks(cfg, spec)
    if block_of is not None:
        res.update(error_breakdown(u, ref, block_of))
    if plots is not None:
        from physics.plots import save_error_map, save_field_plots

        k = min(3, ref.shape[0])
        title = f"{cfg.problem} {cfg.constraint}"
        if u.ndim == 4:  # (t, x, y): the last frame
            pred, true, ext, labels = u[:k, -1], ref[:k, -1], (0.0, 1.0, 0.0, 1.0), ("y", "x")
            title += f", t = {spec.extent[0]:g}"
        else:
            pred, true, ext, labels = u[:k], ref[:k], (0.0, 1.0, 0.0, spec.extent[0]), ("x", "t")
        res["plot"] = str(save_field_plots(pred.numpy(), true.numpy(), plots, title, extent=ext, labels=labels))
        if block_of is not None and u.ndim == 3:
            errors = plots.with_name("errors.png")
            res["error_plot"] = str(save_error_map(u, ref, block_of, res, errors, title, t_max=spec.extent[0]))
    return res


def _report_blocks(cfg: TrainConfig, spec: PDESpec) -> Tensor | None:
    """Block of every grid point under ``cfg.experts`` (for every constraint, so that PI-SC / PI-HC errors can be
    compared block by block with the experts'); None when the grid is too small for that partition."""
    try:
        return Router(spec.grid, normalise_experts(cfg.experts, len(spec.grid)), spec.collocation_mask()).block_of
    except PhysicsError:
        return None
