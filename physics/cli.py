"""``clarke pde train`` / ``clarke pde eval``: argparse wiring for the PDE hard-constraint trainer.

The lead's dispatcher calls ``add_parser(subparsers)``; ``python -m physics.cli pde ...`` runs it standalone
(e.g. under ``torchrun --nproc_per_node=G -m physics.cli pde train --placement data ...``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from physics.errors import PhysicsError
from physics.model import CONSTRAINTS, MOE_LOSSES
from physics.parallel import PLACEMENTS
from physics.problems import RESIDUAL_UNITS

TRAINABLE = ("diffusion-sorption", "heat", "navier-stokes")
EXIT_STATUS = """Exit status: 0 with the metrics as one JSON line on stdout (relative L2 errors in
percent, keys *_pct; times in seconds, keys *_seconds); 2 with one line 'clarke: error: ...'
on stderr for a bad option or file, or a failed training (nothing is written then)."""


# argparse helpers. physics/ never imports verify/, so these mirror verify.cli.common's few lines.


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line ``clarke: error: ...`` with exit status 2 (``python -m physics.cli``;
    under ``clarke`` the subparsers inherit the same behaviour from the root parser)."""

    def error(self, message: str) -> NoReturn:
        first = message.strip().splitlines()[0] if message.strip() else "bad arguments"
        self.exit(2, f"clarke: error: {first} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to every option whose help does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, False, "", argparse.SUPPRESS) or "default" in text.lower()
                or not action.option_strings):
            return text
        return f"{text} (default: {action.default})"


def number(kind: type = int, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> Callable[[str], float | int]:
    """argparse ``type=``: a finite ``kind`` with ``low <= x`` (``low < x`` when ``low_open``) and ``x <= high``."""

    fmt = "d" if kind is int else "g"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:{fmt}}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:{fmt}}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


COUNT_MAX = 2**31 - 1
count = number(int, 1, COUNT_MAX)


def experts_arg(text: str) -> int | tuple[int, ...]:
    """``4`` (K blocks) or per-axis counts ``1,2,2`` (t, x[, y]); every count >= 1."""
    try:
        parts = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or per-axis counts like 1,2,2, got {text!r}") from None
    if not all(1 <= k <= COUNT_MAX for k in parts):
        raise argparse.ArgumentTypeError(f"every expert count must be >= 1, got {text!r}")
    return parts[0] if len(parts) == 1 else parts


def spike_factor(text: str) -> float:
    """``--skip-spikes``: 0 (off) or a finite factor > 1."""
    value = number(float, 0.0)(text)
    if 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or > 1, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    """Register ``pde`` with sub-commands ``train`` and ``eval``; the parser default ``func`` runs them."""
    pde = subparsers.add_parser("pde", help="physics-informed hard-constraint PDE surrogates (PI-SC/PI-HC/MoE)",
                                description="Train and evaluate PDE surrogates: 'clarke pde train --help',\n"
                                "'clarke pde eval --help'.\n\n" + EXIT_STATUS, formatter_class=HelpFormatter)
    pde.set_defaults(func=run)
    sub = pde.add_subparsers(dest="pde_command", metavar="{train,eval}")
    t = sub.add_parser("train", help="train a PI-SC, PI-HC or PI-HC-MoE model without solution data",
                       description="Train a PI-SC (soft), PI-HC (hard) or PI-HC-MoE (moe) model on the physics\n"
                       "loss only, then evaluate it on held-out reference solutions.\n\n" + EXIT_STATUS,
                       formatter_class=HelpFormatter)
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
        type=number(float, 0.0),
        default=0.0,
        help="weight of continuity rows between neighbouring experts (0: independent experts, as the paper)",
    )
    t.add_argument(
        "--moe-loss",
        default="expert",
        choices=MOE_LOSSES,
        help="moe training loss: each point's residual under its own expert plus the interface mismatch "
        "(expert), or F(u) of the stitched field by finite differences across interfaces (stitched: the "
        "paper's code)",
    )
    t.add_argument(
        "--residual-units",
        default="horizon",
        choices=RESIDUAL_UNITS,
        help="time unit of the solver's diffusion-sorption PDE rows: the horizon (rows O(1), like the IC rows) "
        "or seconds (physical: the paper's rows, ~1e-3, so the global IC/BC rows dominate every solve)",
    )
    t.add_argument("--points", type=count, default=1000, help="collocation points m sampled per solve (per expert)")
    t.add_argument("--basis", type=count, default=16, help="number N of basis functions output by the backbone")
    t.add_argument("--backbone", default="fno", choices=("fno", "mlp"), help="FNO over (t, x) or pointwise MLP")
    t.add_argument("--width", type=count, default=32, help="backbone width (channels / hidden units)")
    t.add_argument("--layers", type=count, default=4, help="spectral layers (FNO) or hidden layers (MLP)")
    t.add_argument("--modes", type=count, default=8, help="Fourier modes kept per axis (FNO)")
    t.add_argument("--nt", type=number(int, 3, COUNT_MAX), default=21, help="time frames of the grid (>= 3)")
    t.add_argument("--nx", type=number(int, 4, COUNT_MAX), default=64,
                   help="spatial cells of the grid, >= 4 (per axis for navier-stokes, even)")
    t.add_argument("--steps", type=count, default=300, help="training steps (>= 1)")
    t.add_argument("--batch", type=count, default=4, help="global batch size (initial conditions per step)")
    t.add_argument("--lr", type=number(float, 0.0, low_open=True), default=1e-3,
                   help="initial Adam learning rate, > 0 (halved 5 times)")
    t.add_argument("--max-iter", type=count, default=50, help="Levenberg-Marquardt iterations per solve")
    t.add_argument(
        "--skip-spikes",
        type=spike_factor,
        default=3.0,
        help="skip the update of a step whose loss exceeds this factor times the median of the last 50 "
        "(0: never; keeps a failed solve's gradient from derailing training)",
    )
    t.add_argument(
        "--hessian",
        default="exact",
        choices=("exact", "gauss_newton"),
        help="implicit backward: exact Hessian or the Gauss-Newton approximation",
    )
    t.add_argument(
        "--train-time-fraction",
        type=number(float, 0.0, 1.0, low_open=True),
        default=1.0,
        help="train on t <= fraction*T and report extrapolation error beyond it (paper: 0.8)",
    )
    t.add_argument("--n-test", type=count, default=8, help="held-out reference solutions for the final evaluation")
    t.add_argument("--eval-every", type=number(int, 0, COUNT_MAX), default=0,
                   help="also report the held-out error every this many steps (a learning curve in "
                   "history.json's 'eval'; 0: only at the end)")
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
    t.add_argument("--seed", type=number(int, 0, 2**32 - 1), default=0,
                   help="seed for initialisation and point sampling")
    t.add_argument("--cache", default="", help="dataset cache directory (default ~/.cache/clarke/pde)")
    t.add_argument("--out", required=True,
                   help="run directory for weights, history, metrics and plots (new or empty, unless --overwrite)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    e = sub.add_parser("eval", help="relative L2 of a trained run on held-out reference solutions, with plots",
                       description="Evaluate a run directory of 'clarke pde train' on held-out reference\n"
                       "solutions (metrics.json and fields.png are rewritten there).\n\n" + EXIT_STATUS,
                       formatter_class=HelpFormatter)
    e.add_argument("dir", help="run directory written by 'clarke pde train'")
    e.add_argument("--n-test", type=number(int, 0, COUNT_MAX), default=0,
                   help="override the number of test solutions (default 0: as trained)")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG of predicted vs reference fields")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: a GPU when available)")


def _fail(message: str) -> int:
    print(f"clarke: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Dispatch ``pde train`` / ``pde eval``; PhysicsError becomes a one-line message and exit status 2."""
    try:
        if getattr(args, "pde_command", None) == "train":
            return _train(args)
        if getattr(args, "pde_command", None) == "eval":
            return _eval(args)
        return _fail("pde needs a command: train or eval (see 'clarke pde --help')")
    except PhysicsError as exc:
        return _fail(str(exc))
    except OSError as exc:  # e.g. the disk filled while writing the run
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Before any training: ``out`` must be creatable (its nearest existing parent a writable directory) and not
    a file; an existing non-empty directory is refused unless ``overwrite`` (a run there would be mixed up)."""
    if out.exists() and not out.is_dir():
        raise PhysicsError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        if any(out.iterdir()) and not overwrite:
            what = "a training run" if (out / "config.json").exists() else "files"
            raise PhysicsError(f"--out {out}: already holds {what}; choose a new directory or pass --overwrite")
        if not os.access(out, os.W_OK | os.X_OK):
            raise PhysicsError(f"--out {out}: directory is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PhysicsError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PhysicsError(f"--out {out}: cannot create it, {parent} is not writable")


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write via a temporary file and rename: a reader never sees half a metrics file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _train(args: argparse.Namespace) -> int:
    from physics.train import TrainConfig, evaluate, train

    if args.problem not in TRAINABLE:
        raise PhysicsError(f"unknown problem {args.problem!r}; choose one of {', '.join(TRAINABLE)}")
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    cfg = TrainConfig(**kw, cache_dir=args.cache)
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    model, _ = train(cfg, out, log=lambda line: print(line, file=sys.stderr))  # stdout: the metrics only
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:  # evaluate once, on rank 0
        metrics = evaluate(cfg, model.backbone, plots=out / "fields.png")
        write_json_atomic(out / "metrics.json", metrics)
        print(json.dumps(metrics))
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0's evaluation, then all leave together
        dist.destroy_process_group()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from physics.train import evaluate, load, resolve_device

    out = Path(args.dir)
    if not out.is_dir():
        raise PhysicsError(f"{out}: no such run directory")
    cfg, net = load(out)
    if args.n_test:
        cfg.n_test = args.n_test
    device = resolve_device(args.device)
    metrics = evaluate(cfg, net.to(device), plots=None if args.no_plots else out / "fields.png")
    write_json_atomic(out / "metrics.json", metrics)
    print(json.dumps(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point mirroring ``clarke``'s sub-command layout."""
    parser = OneLineParser(prog="python -m physics.cli")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported on one line
        return e.code if isinstance(e.code, int) else 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
