"""``clarke pde train`` / ``clarke pde eval``: argparse wiring for the PDE hard-constraint trainer.

The lead's dispatcher calls ``add_parser(subparsers)``; ``python -m physics.cli pde ...`` runs it standalone
(e.g. under ``torchrun --nproc_per_node=G -m physics.cli pde train --placement data ...``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from physics.errors import PhysicsError
from physics.model import CONSTRAINTS
from physics.parallel import PLACEMENTS

TRAINABLE = ("diffusion-sorption", "heat", "navier-stokes")


def experts_arg(text: str) -> int | tuple[int, ...]:
    """``4`` (K blocks) or per-axis counts ``1,2,2`` (t, x[, y])."""
    try:
        parts = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or per-axis counts like 1,2,2, got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def add_parser(subparsers) -> None:
    """Register ``pde`` with sub-commands ``train`` and ``eval``; the parser default ``func`` runs them."""
    pde = subparsers.add_parser("pde", help="physics-informed hard-constraint PDE surrogates (PI-SC/PI-HC/MoE)")
    pde.set_defaults(func=run)
    sub = pde.add_subparsers(dest="pde_command", metavar="{train,eval}")
    t = sub.add_parser("train", help="train a PI-SC, PI-HC or PI-HC-MoE model without solution data")
    t.add_argument("--problem", default="diffusion-sorption", help=f"PDE to solve ({', '.join(TRAINABLE)})")
    t.add_argument(
        "--constraint",
        default="moe",
        choices=CONSTRAINTS,
        help="soft: residual penalty only (PI-SC); hard: one LM solve per sample (PI-HC); "
        "moe: one solve per sample and expert (PI-HC-MoE)",
    )
    t.add_argument(
        "--experts",
        type=experts_arg,
        default=4,
        help="experts for --constraint moe: K spatial blocks (along x; a near-square x-y split for navier-stokes) "
        "or per-axis block counts such as 1,2,2 for (t, x, y)",
    )
    t.add_argument(
        "--interface-weight",
        type=float,
        default=0.0,
        help="weight of continuity rows between neighbouring experts (0: independent experts, as the paper)",
    )
    t.add_argument("--points", type=int, default=1000, help="collocation points m sampled per solve (per expert)")
    t.add_argument("--basis", type=int, default=16, help="number N of basis functions output by the backbone")
    t.add_argument("--backbone", default="fno", choices=("fno", "mlp"), help="FNO over (t, x) or pointwise MLP")
    t.add_argument("--width", type=int, default=32, help="backbone width (channels / hidden units)")
    t.add_argument("--layers", type=int, default=4, help="spectral layers (FNO) or hidden layers (MLP)")
    t.add_argument("--modes", type=int, default=8, help="Fourier modes kept per axis (FNO)")
    t.add_argument("--nt", type=int, default=21, help="time frames of the grid")
    t.add_argument("--nx", type=int, default=64, help="spatial cells of the grid (per axis for navier-stokes)")
    t.add_argument("--steps", type=int, default=300, help="training steps")
    t.add_argument("--batch", type=int, default=4, help="global batch size (initial conditions per step)")
    t.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (halved 5 times)")
    t.add_argument("--max-iter", type=int, default=50, help="Levenberg-Marquardt iterations per solve")
    t.add_argument(
        "--hessian",
        default="exact",
        choices=("exact", "gauss_newton"),
        help="implicit backward: exact Hessian or the Gauss-Newton approximation",
    )
    t.add_argument(
        "--train-time-fraction",
        type=float,
        default=1.0,
        help="train on t <= fraction*T and report extrapolation error beyond it (paper: 0.8)",
    )
    t.add_argument("--n-test", type=int, default=8, help="held-out reference solutions for the final evaluation")
    t.add_argument(
        "--placement",
        default="local",
        choices=PLACEMENTS,
        help="local: one process; data/expert: torch.distributed (launch with torchrun)",
    )
    t.add_argument(
        "--device",
        default="auto",
        help="auto (this process's GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N; "
        "distributed placements use NCCL on GPUs and gloo on CPUs",
    )
    t.add_argument("--seed", type=int, default=0, help="seed for initialisation and point sampling")
    t.add_argument("--cache", default="", help="dataset cache directory (default ~/.cache/clarke/pde)")
    t.add_argument("--out", required=True, help="run directory for weights, history, metrics and plots")
    e = sub.add_parser("eval", help="relative L2 of a trained run on held-out reference solutions, with plots")
    e.add_argument("dir", help="run directory written by 'clarke pde train'")
    e.add_argument("--n-test", type=int, default=0, help="override the number of test solutions (0: as trained)")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG of predicted vs reference fields")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: a GPU when available)")


def run(args: argparse.Namespace) -> int:
    """Dispatch ``pde train`` / ``pde eval``; PhysicsError becomes a one-line message and exit status 2."""
    try:
        if getattr(args, "pde_command", None) == "train":
            return _train(args)
        if getattr(args, "pde_command", None) == "eval":
            return _eval(args)
        print("usage: pde {train,eval} ... (see --help)", file=sys.stderr)
        return 2
    except PhysicsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from physics.train import TrainConfig, evaluate, train

    if args.problem not in TRAINABLE:
        raise PhysicsError(f"unknown problem {args.problem!r}; choose one of {', '.join(TRAINABLE)}")
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    cfg = TrainConfig(**kw, cache_dir=args.cache)
    out = Path(args.out)
    model, _ = train(cfg, out)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:  # evaluate once, on rank 0
        metrics = evaluate(cfg, model.backbone, plots=out / "fields.png")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics))
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0's evaluation, then all leave together
        dist.destroy_process_group()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from physics.train import evaluate, load, resolve_device

    out = Path(args.dir)
    cfg, net = load(out)
    if args.n_test:
        cfg.n_test = args.n_test
    device = resolve_device(args.device)
    metrics = evaluate(cfg, net.to(device), plots=None if args.no_plots else out / "fields.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point mirroring ``clarke``'s sub-command layout."""
    parser = argparse.ArgumentParser(prog="python -m physics.cli")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
