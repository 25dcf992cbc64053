"""``clarke train`` / ``clarke evaluate``: argparse wiring for robust training and honest robustness evaluation.

The ``clarke`` dispatcher calls ``add_parser(subparsers)``, which registers both commands; ``python -m
robust_train.cli train ...`` runs them standalone (e.g. ``torchrun --nproc_per_node=2 -m robust_train.cli train``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from verify.cli.common import (
    INT_MAX,
    ClarkeParser,
    CliError,
    HelpFormatter,
    add_verbosity,
    nonneg_float,
    nonneg_int,
    number,
    positive_int,
    print_json,
    run_guarded,
    seed_int,
    write_atomic,
)
from verify.cluster import CLUSTER_HELP, cluster_arg
from verify.device import device_arg, resolve_device

EXIT_STATUS = """Exit status: 0 for an answer; 2 with one line 'clarke: error: ...' on stderr for a bad option,
a missing data set or run file, or a failed check (nothing is overwritten then)."""

TRAIN_DESCRIPTION = """Train a classifier with one of the robust-training methods and write the run directory --out:
config.json, metrics.csv (one row per epoch), checkpoints/epoch-NNNN.pt, model/ (final weights),
model.onnx (for 'clarke verify') and training_curves.png.

examples:
  clarke train --data digits --model mlp-small --method pgd-at --eps 0.1 --epochs 5 --out runs/pgd
  clarke train --out runs/pgd --resume            # continue from the last checkpoint
  clarke train --config runs/pgd/config.json --method trades --out runs/trades
  torchrun --nproc_per_node=2 -m robust_train.cli train --method crown-ibp --out runs/cibp

""" + EXIT_STATUS

EVALUATE_DESCRIPTION = """Evaluate a run of 'clarke train' at l_inf radius --eps on the first --points points of its
test (or validation) split: clean, attacked (PGD, APGD) and certified accuracy, per class and on the
30 % tail classes (RA-Tail-30). The report is written to RUN/eval.json, the per-class plot to
RUN/per_class.png.

examples:
  clarke evaluate runs/pgd
  clarke evaluate runs/pgd --eps 0.05 --attacks pgd,apgd-dlr --certify crown,alpha-crown --bab 20 --json

""" + EXIT_STATUS

DEFAULT_ATTACKS = "pgd20,pgd50,apgd-ce,apgd-t"
ATTACK_ALIASES = {"pgd": ("pgd20", "pgd50"), "apgd": ("apgd-ce", "apgd-t")}

# One help line per TrainConfig field; the formatter appends each option's default.
FIELD_HELP = {
    "data": "data set",
    "data_dir": "directory of the data set files (fashion-mnist; default: the Debian package's directory)",
    "val_fraction": "fraction of the training pool held out for validation after every epoch",
    "subset": "train on a stratified subset of this many examples (default: all)",
    "test_subset": "keep a stratified subset of this many test examples (default: all)",
    "imbalance": "long-tail ratio rho >= 1 of the training set (head class / tail class; 1 = balanced)",
    "model": "network architecture from the model zoo",
    "method": "training method",
    "eps": "l_inf radius of the threat model, inputs in [0, 1]",
    "epochs": "training epochs",
    "batch_size": "global batch size (split over the processes under torchrun)",
    "lr": "initial learning rate",
    "optimizer": "optimiser",
    "momentum": "SGD momentum (--optimizer sgd)",
    "weight_decay": "L2 weight decay",
    "lr_schedule": "learning-rate schedule over the training steps",
    "grad_clip": "clip the global gradient norm to this value (0: off)",
    "warmup_epochs": "epochs at eps 0 before the ramp (default: 10 %% of --epochs for certified methods, else 0)",
    "ramp_epochs": "epochs over which eps grows to --eps (default: 50 %% of --epochs for certified methods, else 0)",
    "kappa_final": "final weight of the clean loss in IBP / CROWN-IBP (kappa ramps from 1)",
    "beta_final": "final CROWN weight of the CROWN-IBP bound (beta ramps from 1)",
    "loss_fusion": "crown-ibp: bound the cross-entropy itself with one CROWN row per example (exp chords on "
                   "the IBP margin ranges; auto_LiRPA's loss fusion) instead of K-1 margin rows: about 3.5x "
                   "faster steps, a looser bound",
    "pgd_steps": "PGD steps of the training attack",
    "pgd_step_size": "PGD step size of the training attack (default: 2.5 eps / --pgd-steps)",
    "trades_beta": "TRADES trade-off beta",
    "mart_beta": "MART trade-off beta",
    "gairat_lambda": "GAIRAT weight-function lambda",
    "mail_bias": "MAIL margin bias",
    "mail_slope": "MAIL margin slope",
    "reweight_start": "fraction of training before GAIRAT / MAIL / DONE reweighting starts (DONE: PGD-AT before) "
                      "(default: 0.5 for gairat, 0.625 for mail, 0.7 for done)",
    "r": "DONE: radius of the distributional ball over example weights, > 0 or inf",
    "tau": "DONE: temperature of the example weights, in (0, 1]",
    "inner": "DONE: inner maximisation (attack or bound) giving each example's robust loss",
    "barrier_c": "DONE barrier: barrier coefficient",
    "barrier_cg_iters": "DONE barrier: conjugate-gradient iterations",
    "barrier_damping": "DONE barrier: damping of the Hessian solve",
    "ib_beta": "regression (vib, csib): bottleneck weight beta >= 0",
    "ib_beta_warmup": "regression: epochs over which beta ramps linearly from 0",
    "sigma": "csib: one width for every Gaussian kernel (default: median heuristic on a reference batch)",
    "sigma_x_scale": "csib: factor on the median-heuristic x width (the x-neighbourhoods the conditional "
                     "divergence compares y and y_hat over)",
    "csib_normalization": "csib: denominator of the conditional CS divergence (Prop. 1, or the reference code's)",
    "csib_normalized_mi": "csib: train on the normalised I_CS(x;t)",
    "band_weight": "regression: weight of the certified band-width penalty (h_hi - h_lo over the eps-box)",
    "band_method": "regression: bounds of the band-width penalty",
    "val_pgd_steps": "PGD steps of the validation attack after every epoch",
    "val_points": "validation points attacked (and IBP-certified) after every epoch",
    "seed": "seed of the data splits, initialisation, batch order and attack noise",
    "device": "auto (this process's GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N",
    "dtype": "floating-point precision of the weights and data",
    "out": "run directory to write (new or empty, unless --resume or --overwrite)",
}

# Checked ranges of the numeric fields: (low, high, low_open); TrainConfig checks them again on construction.
FIELD_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "val_fraction": (0.0, 1.0, False), "subset": (1, INT_MAX, False), "test_subset": (1, INT_MAX, False),
    "imbalance": (1.0, None, False), "eps": (0.0, None, False), "epochs": (1, INT_MAX, False),
    "batch_size": (1, INT_MAX, False), "lr": (0.0, None, True), "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, None, False), "grad_clip": (0.0, None, False), "warmup_epochs": (0.0, None, False),
    "ramp_epochs": (0.0, None, False), "kappa_final": (0.0, 1.0, False), "beta_final": (0.0, 1.0, False),
    "pgd_steps": (0, INT_MAX, False), "pgd_step_size": (0.0, None, True), "trades_beta": (0.0, None, False),
    "mart_beta": (0.0, None, False), "reweight_start": (0.0, 1.0, False), "tau": (0.0, 1.0, True),
    "barrier_c": (0.0, None, True), "barrier_cg_iters": (0, INT_MAX, False), "barrier_damping": (0.0, None, False),
    "val_pgd_steps": (0, INT_MAX, False), "val_points": (0, INT_MAX, False), "seed": (0, 2**63 - 1, False),
    "ib_beta": (0.0, None, False), "ib_beta_warmup": (0.0, None, False), "sigma": (0.0, None, True),
    "sigma_x_scale": (0.0, None, True),
    "band_weight": (0.0, None, False),
}


def _field_choices() -> dict[str, tuple[str, ...]]:
    """The allowed names of the fields that pick from a list (imported here: they live in torch-importing modules)."""
    from models.data import DATASETS
    from models.regression_data import REGRESSION_DATASETS
    from models.regressor import REGRESSION_MODELS
    from models.zoo import MODELS
    from robust_train.config import BAND_METHODS, DTYPES, INNERS, METHODS, NORMALIZATIONS, OPTIMIZERS
    from robust_train.schedule import LR_SCHEDULES

    return {"data": (*DATASETS, *REGRESSION_DATASETS), "model": (*MODELS, *REGRESSION_MODELS), "method": METHODS,
            "inner": INNERS, "optimizer": OPTIMIZERS, "dtype": DTYPES, "lr_schedule": LR_SCHEDULES,
            "csib_normalization": NORMALIZATIONS, "band_method": BAND_METHODS}


def positive_or_inf(text: str) -> float:
    """argparse ``type=`` of DONE's radius ``r``: a number > 0, or ``inf`` (NaN is refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or inf, got {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or inf, got {text!r}")
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap an argparse ``type=`` so that ``none`` gives None (back to the method's default after --config)."""

    def wrapped(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


class _Explicit(argparse.Action):
    """Store the value and remember that the option was given: explicit options override --config."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "_explicit", ()))
        given.add(self.dest)
        namespace._explicit = given


class _ExplicitFlag(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, remembered like :class:`_Explicit`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace._explicit = set(getattr(namespace, "_explicit", ())) | {self.dest}


def _base_type(annotation: Any) -> tuple[type, bool]:
    """``(int | float | str | bool, optional)`` of a field annotation such as ``float | None``."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else ()
    if args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else str), type(None) in args
    return annotation, False


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One ``--field-name`` per TrainConfig field: typed and range-checked (numbers), ``choices`` for names."""
    from robust_train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    choices = _field_choices()
    g = p.add_argument_group("training configuration (TrainConfig fields)")
    for f in fields(TrainConfig):
        kind, optional = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else None
        kw: dict[str, Any] = {"default": default, "help": FIELD_HELP.get(f.name, f"TrainConfig.{f.name}"),
                              "action": _Explicit, "dest": f.name}
        if f.name == "r":
            kw["type"] = positive_or_inf
        elif kind is bool:
            kw["action"] = _ExplicitFlag
        elif kind in (int, float):
            low, high, low_open = FIELD_RANGES.get(f.name, (None, None, False))
            if kind is int and high is None:
                high = INT_MAX
            kw["type"] = number(kind, low, high, low_open=low_open, name=kind.__name__)
            kw["metavar"] = "N" if kind is int else "X"
        elif f.name in choices:
            kw["choices"] = choices[f.name]
        else:
            kw["metavar"] = "PATH" if f.name in ("out", "data_dir") else None
        if optional and "type" in kw:
            kw["type"] = _optional(kw["type"])
        if kw.get("metavar") is None:
            kw.pop("metavar", None)
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``csib`` (all at once: the dispatcher imports this module for any)."""
    t = subparsers.add_parser("train", help="robust training (PGD-AT, TRADES, MART, GAIRAT, MAIL, DONE, IBP, "
                              "CROWN-IBP) of a zoo model", description=TRAIN_DESCRIPTION,
                              formatter_class=HelpFormatter)
    add_config_options(t)
    r = t.add_argument_group("run")
    r.add_argument("--config", metavar="FILE",
                   help="config.json (or a run directory) to start from; options given here override it")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last checkpoint (its config.json is the starting "
                      "point; any option given must match it, but for --device and --out)")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory --out")
    r.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write RUN/training_curves.png from metrics.csv after training")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument("--json", action="store_true",
                   help="print the final epoch's metrics as one JSON object on stdout (nothing else there)")
    add_verbosity(t)
    t.set_defaults(func=run_train)

    from robust_train.evaluate import ATTACKS, CERTIFY_METHODS

    e = subparsers.add_parser("evaluate", help="clean / attacked / certified accuracy of a training run",
                              description=EVALUATE_DESCRIPTION, formatter_class=HelpFormatter)
    e.add_argument("run", metavar="RUN", help="run directory written by 'clarke train'")
    e.add_argument("--eps", type=nonneg_float, metavar="X", help="l_inf radius (default: the run's training eps)")
    e.add_argument("--attacks", type=name_list(ATTACKS, ATTACK_ALIASES), default=DEFAULT_ATTACKS, metavar="LIST",
                   help=f"comma list of {', '.join(ATTACKS)}; 'pgd' = pgd20,pgd50, 'apgd' = apgd-ce,apgd-t, "
                   "'none' for no attack")
    e.add_argument("--certify", type=name_list(CERTIFY_METHODS), default="crown", metavar="LIST",
                   help=f"comma list of bounding methods {', '.join(CERTIFY_METHODS)}, or 'none'")
    e.add_argument("--bab", type=nonneg_int, default=0, metavar="N",
                   help="send the first N points neither certified nor attacked to the complete verifier")
    e.add_argument("--bab-timeout", type=number(float, 0.0, low_open=True), default=30.0, metavar="SECONDS",
                   help="time limit of the complete verifier per point")
    e.add_argument("--points", type=positive_int, default=1000, metavar="N",
                   help="evaluate the first N points of the split (fewer if the split is smaller)")
    e.add_argument("--split", choices=("test", "val"), default="test", help="which split of the run's data set")
    e.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="points per batch")
    e.add_argument("--apgd-steps", type=positive_int, default=100, metavar="N", help="iterations of each APGD run")
    e.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed of the attacks' random starts")
    e.add_argument("--data-dir", metavar="PATH", help="where the data set lies (default: as the run was trained)")
    e.add_argument("--out", metavar="FILE", help="report file (default: RUN/eval.json)")
    e.add_argument("--export-vnnlib", metavar="DIR",
                   help="also write each evaluated point's property for 'clarke verify --instances "
                        "DIR/instances.csv': point_NNNN.vnnlib, model.onnx, instances.csv and expected.csv "
                        "(unsat where certified, sat where attacked)")
    e.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write RUN/per_class.png (per-class clean / robust / certified accuracy)")
    e.add_argument("--cluster", type=cluster_arg, metavar="ray[:ADDRESS]",
                   help="attack and certify on Ray, in shards of whole batches (the answers of a local run; "
                   "--bab runs here after them); " + CLUSTER_HELP)
    e.add_argument("--device", type=device_arg, default="cpu",
                   help="where the attacks and the bounds run: cpu (the default), auto (a CUDA GPU when present), cuda "
                        "or cuda:N")
    e.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    add_verbosity(e)
    e.set_defaults(func=run_evaluate)

    from robust_train import csib_cli

    csib_cli.add_parser(subparsers)


def name_list(allowed: Sequence[str], aliases: dict[str, tuple[str, ...]] | None = None
              ) -> Callable[[str], tuple[str, ...]]:
    """argparse ``type=``: a comma list of ``allowed`` names (aliases expanded, repeats dropped) or ``none``."""
    aliases = aliases or {}

    def parse(text: str) -> tuple[str, ...]:
        parts = [s.strip().lower() for s in text.split(",")]
        if parts == ["none"]:
            return ()
        out: list[str] = []
        for s in parts:
            if s not in allowed and s not in aliases:
                extra = f", {', '.join(aliases)}" if aliases else ""
                raise argparse.ArgumentTypeError(f"unknown name {s!r}; choose from {', '.join(allowed)}{extra} "
                                                 "(comma-separated) or none")
            out += [n for n in aliases.get(s, (s,)) if n not in out]
        return tuple(out)

    parse.__name__ = "list"
    return parse


# ------------------------------------------------------------------------------------------------- train


def _read_config_file(path: str) -> dict[str, Any]:
    """The JSON object of a config file (or of ``DIR/config.json``); a CliError naming the file otherwise."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise CliError(f"--config {path}: no such file")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CliError(f"{p}: malformed config ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise CliError(f"{p}: malformed config (not a JSON object)")
    return raw


def build_config(args: argparse.Namespace):
    """The TrainConfig of a ``train`` command line: dataclass defaults, then --config (or, with --resume, the
    run's own config.json), then the options given explicitly. A ConfigError (one line) if out of range."""
    from robust_train.config import ConfigError, TrainConfig

    explicit = {name: getattr(args, name) for name in getattr(args, "_explicit", ())}
    base: dict[str, Any] = {}
    if args.config:
        base = _read_config_file(args.config)
    elif args.resume:
        out = Path(explicit.get("out", args.out))
        if (out / "config.json").is_file():
            # the saved out may name the directory from another working directory or before a move
            base = {**_read_config_file(str(out)), "out": str(out)}
    if args.config and {"method", "epochs", "inner"} & set(explicit):
        # the saved schedule values were resolved for the saved method and epoch count: resolve them again
        for derived in ("warmup_epochs", "ramp_epochs", "reweight_start"):
            base.pop(derived, None)
    raw = {**base, **explicit}
    try:
        return TrainConfig.from_dict(raw)
    except ConfigError as e:
        where = f" (with {args.config})" if args.config else ""
        raise ConfigError(f"{e}{where}") from None
    except TypeError as e:  # a field of the wrong JSON type in --config
        raise ConfigError(f"{args.config}: malformed config ({e})") from None


def _is_lead() -> bool:
    """Rank 0 of a torchrun job (or the only process): the one that writes plots and prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _cell(text: str | None) -> int | float | None:
    """A metrics.csv cell as a number (None for an empty cell)."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def run_train(args: argparse.Namespace) -> int:
    """``clarke train``: build the config, train (refusing an existing run unless --resume / --overwrite), plot
    the curves and report the last epoch's metrics."""
    from models.data import DatasetUnavailable
    from robust_train import runs
    from robust_train.train import train

    cfg = build_config(args)
    quiet = bool(getattr(args, "quiet", False))
    try:
        out = Path(train(cfg, progress=not (args.no_progress or quiet), resume=args.resume,
                         overwrite=args.overwrite))
    except DatasetUnavailable as e:  # a RuntimeError, but a missing install is the user's to fix, not a bug
        raise CliError(str(e)) from None
    except FloatingPointError as e:
        raise CliError(f"training diverged: {e} (try a smaller --lr or --grad-clip)") from None
    if not _is_lead():
        return 0
    rows = runs.read_metrics(out)
    last = {k: _cell(v) for k, v in rows[-1].items()} if rows else {}
    plot = out / "training_curves.png"
    if args.plots and rows:
        from robust_train.plots import plot_training_curves

        plot_training_curves(out / "metrics.csv", plot)
    if args.json:
        # the row's own eps / epoch columns are the last epoch's (the eps ramp of certified methods ends there)
        print_json({"run": str(out), "method": cfg.method, "data": cfg.data, "model": cfg.model,
                    "epochs": cfg.epochs, **last})
    elif not quiet:
        print(_train_summary(cfg, out, last, plot if args.plots and rows else None))
    return 0


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _train_summary(cfg, out: Path, last: dict[str, Any], plot: Path | None) -> str:
    """A few lines: what was trained, where it was written, the last epoch's metrics."""
    lines = [f"trained {cfg.model} on {cfg.data} with {cfg.method} (eps {cfg.eps:g}), {cfg.epochs} epochs: {out}"]
    if last:
        parts = [f"epoch {last.get('epoch')}"]
        if last.get("train_loss") is not None:
            parts.append(f"train loss {last['train_loss']:.4g}")
        for key, name in (("train_acc", "train acc"), ("train_robust_acc", "train robust"),
                          ("val_clean_acc", "val clean"), ("val_pgd_acc", "val PGD"),
                          ("val_ibp_certified_acc", "val IBP-certified")):
            if last.get(key) is not None:
                parts.append(f"{name} {_pct(last[key])}")
        lines.append(", ".join(parts))
    lines.append(f"weights: {out / 'model'} ({out / 'model.onnx'} for 'clarke verify'); metrics: "
                 f"{out / 'metrics.csv'}" + (f"; curves: {plot}" if plot else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- evaluate


def load_run(run: str, data_dir: str | None = None, split: str = "test"):
    """``(config, model, meta, splits, (x, y))`` of a run directory; a one-line error if it is not one."""
    from models.checkpoint import load_model
    from models.data import DatasetUnavailable, load_dataset
    from robust_train.config import load_config

    path = Path(run)
    if not path.is_dir():
        raise CliError(f"{run}: no such run directory")
    cfg = load_config(path)
    model, meta = load_model(path / "model")
    try:
        splits = load_dataset(cfg.data, data_dir=data_dir if data_dir is not None else cfg.data_dir, seed=cfg.seed,
                              val_fraction=cfg.val_fraction, subset=cfg.subset, test_subset=cfg.test_subset,
                              imbalance=cfg.imbalance)
    except DatasetUnavailable as e:
        raise CliError(str(e)) from None
    x, y = getattr(splits, split).tensors[:2]
    shape = tuple(meta.get("input_shape") or ())
    if shape and tuple(x.shape[1:]) != shape:
        raise CliError(f"{path / 'model'}: the model takes inputs of shape {shape}, the {cfg.data} data "
                       f"has {tuple(x.shape[1:])}")
    return cfg, model, meta, splits, (x, y)


def run_evaluate(args: argparse.Namespace) -> int:
    """``clarke evaluate RUN``: attack and certify the run's model on its data; write the report (and plot)."""
    from robust_train import evaluate as ev

    if args.cluster is not None and args.device != "cpu":
        raise CliError("--device goes without --cluster (the cluster's workers compute on their CPUs)")
    device = resolve_device(args.device)  # a missing GPU is one line, before any work
    cfg, model, _, splits, (x, y) = load_run(args.run, args.data_dir, args.split)
    model = model.to(device)
    x, y = x[:args.points], y[:args.points]
    if x.shape[0] == 0:
        raise CliError(f"{args.run}: the {args.split} split of this run is empty")
    eps = cfg.eps if args.eps is None else args.eps
    quiet = bool(getattr(args, "quiet", False))
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    try:
        report = ev.evaluate(model, (x, y), eps, attacks=args.attacks, certify=args.certify, bab=args.bab,
                             class_names=splits.class_names, seed=args.seed,
                             progress=not (args.no_progress or quiet), apgd_steps=args.apgd_steps,
                             bab_timeout=args.bab_timeout, batch_size=args.batch_size,
                             per_point=bool(args.export_vnnlib), cluster=args.cluster)
    except ev.SoundnessError as e:  # a certified point was attacked: an engine bug, never an answer
        raise CliError(f"soundness check failed: {e}") from None
    report["run"] = str(args.run)
    report["split"] = args.split
    if args.export_vnnlib:
        export_vnnlib(Path(args.export_vnnlib), Path(args.run), model, x, y, eps, report, args.bab_timeout)
    write_atomic(out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    plot = Path(args.run) / "per_class.png"
    if args.plots:
        from robust_train.plots import plot_per_class

        plot_per_class(report, plot)
    if args.json:
        print_json(report)
    elif not quiet:
        _print_report(report, out, plot if args.plots else None)
    return 0


def export_vnnlib(folder: Path, run: Path, model: Any, x: Any, y: Any, eps: float, report: dict[str, Any],
                  timeout: float) -> None:
    """One VNNLIB robustness property per evaluated point over exactly the box the evaluation used
    (``robust_train.apgd.threat_box`` in the model's dtype, written as exact decimals), a copy of RUN/model.onnx,
    ``instances.csv`` and ``expected.csv``: ``unsat`` for a certified point, ``sat`` for an attacked one."""
    import shutil

    from robust_train.apgd import threat_box
    from robust_train.evaluate import write_robustness_vnnlib

    onnx_path = run / "model.onnx"
    if not onnx_path.is_file():
        raise CliError(f"{run}: no model.onnx to export the properties for")
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    points, classes = report.pop("points"), report["classes"]
    rows, expected = [], []
    for i in range(x.shape[0]):
        lo, hi = threat_box(x[i].to(dtype), eps)
        name = f"point_{i:04d}.vnnlib"
        write_robustness_vnnlib(folder / name, lo, hi, int(y[i]), classes)
        rows.append(f"model.onnx,{name},{timeout:g}")
        verdict = "unsat" if points["certified"][i] else ("sat" if not points["robust"][i] else "")
        expected.append(f"model.onnx,{name},{timeout:g},{verdict}")
    shutil.copyfile(onnx_path, folder / "model.onnx")
    write_atomic(folder / "instances.csv", "\n".join(rows) + "\n")
    write_atomic(folder / "expected.csv", "onnx,vnnlib,timeout,result\n" + "\n".join(expected) + "\n")
    report["exported_vnnlib"] = str(folder)


def _print_report(report: dict[str, Any], out: Path, plot: Path | None) -> None:
    """The accuracies as a small table on stdout, then where the report (and plot) went."""
    from rich.console import Console
    from rich.table import Table

    sec = report["seconds"]
    table = Table(title=f"{report['n']} {report.get('split', 'test')} points, eps {report['eps']:g}",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("accuracy", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("clean", _pct(report["clean_accuracy"]), f"{sec['clean']:.1f}")
    for a, acc in report["attack_accuracy"].items():
        table.add_row(f"attack {a}", _pct(acc), f"{sec['attack'][a]:.1f}")
    if report["attacks"]:
        table.add_row("robust (all attacks)", _pct(report["robust_accuracy"]), "")
    for m, acc in report["certified_by_method"].items():
        table.add_row(f"certified {m}", _pct(acc), f"{sec['certify'][m]:.1f}")
    bab = report.get("bab") or {}
    if bab.get("requested"):
        table.add_row(f"BaB ({bab.get('unsat', 0)} unsat, {bab.get('sat', 0)} sat)", "", f"{sec['bab']:.1f}")
    if report["certified_accuracy"] is not None:
        table.add_row("certified (any)", _pct(report["certified_accuracy"]), "")
    if report["ra_tail_30"] is not None:
        table.add_row("RA-Tail-30", _pct(report["ra_tail_30"]), "")
    if report["certified_tail_30"] is not None:
        table.add_row("certified tail-30", _pct(report["certified_tail_30"]), "")
    table.add_row("total", "", f"{sec['total']:.1f}")
    console = Console(file=sys.stdout)  # made here: the tests swap sys.stdout between commands
    console.print(table)
    console.print(f"report: {out}" + (f"; per-class plot: {plot}" if plot else ""), highlight=False)


# ------------------------------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m robust_train.cli train|evaluate ...``, e.g. under torchrun)."""
    parser = ClarkeParser(prog="python -m robust_train.cli", description="Robust training and evaluation "
                          "(the 'clarke train' and 'clarke evaluate' commands).")
    add_parser(parser.add_subparsers(dest="command", metavar="{train,evaluate,csib}", required=True))
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help, or a usage error already reported on one line
        return e.code if isinstance(e.code, int) else 2
    return run_guarded(args)


if __name__ == "__main__":
    sys.exit(main())
