"""``clarke csib``: train a regressor (CS-IB, VIB or MSE) on the training loop, then measure its robustness.

Registered by ``robust_train.cli.add_parser``. The run directory is the one ``clarke train`` writes (config.json,
metrics.csv, checkpoints/, model/, model.onnx of the deterministic path for ``clarke bounds`` / ``clarke
lipschitz``) plus ``robustness.json`` (RMSE under FGSM / PGD / random search and certified band widths per eps),
``band_width.png`` and ``information_plane.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from verify.cli.common import (
    INT_MAX,
    CliError,
    HelpFormatter,
    add_verbosity,
    nonneg_float,
    number,
    positive_int,
    print_json,
    seed_int,
    write_atomic,
)

DESCRIPTION = """Train a regressor with the Cauchy-Schwarz information bottleneck (CS-IB, Yu et al., ICLR 2024), the
variational IB, the HSIC bottleneck or plain MSE, select the epoch on the validation split, and certify it per
test input: the engine's bounds on the prediction over the l_inf eps-ball give an error band
|h(x') - h(x)| <= band (CROWN, alpha-CROWN, or the local Lipschitz bound). Inputs are standardised for
tabular data (eps in standard deviations) and in [0, 1] for images; RMSE and bands are in standardised target
units (robustness.json also gives y_std to convert).

Writes to --out: config.json, metrics.csv, checkpoints/, model/, model.onnx (the deterministic path x -> mu(x) ->
decoder, for 'clarke bounds' and 'clarke lipschitz'), robustness.json, band_width.png, information_plane.png.

examples:
  clarke csib --data diabetes --beta 0.01 --epochs 100 --out runs/csib
  clarke csib --data diabetes --method mse --out runs/mse --certify crown,alpha-crown,lipschitz
  clarke csib --data rotation --model ib-mlp-small --epochs 30 --out runs/rot --eval-eps 0,0.01,0.02

Exit status: 0 for an answer; 2 with one line 'clarke: error: ...' on stderr for a bad option, a missing data
package, bad data (NaN or infinite values, a constant target) or a failed soundness check; nothing is written then.
"""

# TrainConfig fields that `clarke csib` sets, with its own defaults where they differ from `clarke train`'s.
DEFAULTS: dict[str, Any] = {"data": "diabetes", "model": "ib-mlp", "method": "csib", "ib_beta": 0.01, "epochs": 100,
                            "batch_size": 128, "lr": 1e-3, "eps": 0.1, "val_fraction": 0.15, "dtype": "float64",
                            "val_points": 500, "out": "runs/csib"}


def eps_list(text: str) -> tuple[float, ...]:
    """argparse ``type=``: a comma list of radii >= 0 (finite), e.g. ``0,0.05,0.1``."""
    try:
        vals = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}") from None
    if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"radii must be finite and >= 0, got {text!r}")
    return vals


def band_list(text: str) -> tuple[str, ...]:
    from robust_train.regression_eval import BAND_METHODS
    parts = [t.strip().lower() for t in text.split(",")]
    if parts == ["none"]:
        return ()
    bad = [p for p in parts if p not in BAND_METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown band method {bad[0]!r}; choose from "
                                         f"{', '.join(BAND_METHODS)} (comma-separated) or none")
    return tuple(dict.fromkeys(parts))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from models.regression_data import REGRESSION_DATASETS
    from models.regressor import REGRESSION_MODELS
    from robust_train.config import BAND_METHODS, NORMALIZATIONS, REGRESSION_METHODS

    p = subparsers.add_parser("csib", help="CS-IB / VIB / MSE regressor with per-input certified error bands",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    g = p.add_argument_group("training")
    g.add_argument("--data", choices=REGRESSION_DATASETS, default=DEFAULTS["data"], help="regression data set")
    g.add_argument("--data-dir", metavar="PATH", help="Fashion-MNIST directory for --data rotation")
    g.add_argument("--subset", type=number(int, 2, INT_MAX), metavar="N", help="a seeded subset of N examples")
    g.add_argument("--val-fraction", type=number(float, 0.0, 1.0, low_open=True), default=DEFAULTS["val_fraction"],
                   metavar="X", help="fraction held out for model selection")
    g.add_argument("--method", choices=REGRESSION_METHODS, default=DEFAULTS["method"], help="training loss")
    g.add_argument("--model", choices=tuple(REGRESSION_MODELS), default=DEFAULTS["model"],
                   help="encoder / decoder architecture")
    g.add_argument("--beta", type=nonneg_float, default=DEFAULTS["ib_beta"], metavar="B",
                   help="bottleneck weight beta >= 0 (csib: on I_CS(x;t); vib: on the KL term; hsic: on nHSIC(x;t))")
    g.add_argument("--beta-warmup", type=nonneg_float, default=0.0, metavar="EPOCHS",
                   help="ramp beta linearly from 0 over this many epochs")
    g.add_argument("--sigma", type=number(float, 0.0, low_open=True), metavar="X",
                   help="one kernel width for every CS kernel (default: median heuristic on a reference batch)")
    g.add_argument("--sigma-x-scale", type=number(float, 0.0, low_open=True), default=0.1, metavar="X",
                   help="factor on the median-heuristic x width: smaller compares y and y_hat over tighter "
                   "x-neighbourhoods (towards a pointwise loss); 0.1 won on validation on every benchmark set, "
                   "1 (the plain median) costs RMSE 0.30 -> 0.70 on concrete and 0.21 -> 0.80 on rotation")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default="paper",
                   help="denominator of the conditional CS divergence (Prop. 1, or the reference code's)")
    g.add_argument("--normalized-mi", action=argparse.BooleanOptionalAction, default=True,
                   help="train on the normalised I_CS(x;t) / sqrt(I_CS(x;x) I_CS(t;t))")
    g.add_argument("--band-weight", type=nonneg_float, default=0.0, metavar="X",
                   help="add X * (h_hi - h_lo) over the eps-box to the loss (certified band-width penalty)")
    g.add_argument("--band-method", choices=BAND_METHODS, default="ibp", help="bounds of the band-width penalty")
    g.add_argument("--eps", type=nonneg_float, default=DEFAULTS["eps"], metavar="X",
                   help="l_inf radius of the penalty and of the validation attack")
    g.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"], metavar="N", help="training epochs")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"], metavar="N",
                   help="global batch size (>= 2: the kernel estimators need pairs)")
    g.add_argument("--lr", type=number(float, 0.0, low_open=True), default=DEFAULTS["lr"], metavar="X",
                   help="Adam learning rate (cosine schedule)")
    g.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed of splits, initialisation, noise")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", choices=("float64", "float32"), default=DEFAULTS["dtype"],
                   help="precision of the model (float64: bands tight to rounding; float32 bands pay worst-case "
                   "float32 rounding)")
    g.add_argument("--out", default=DEFAULTS["out"], metavar="DIR", help="run directory")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory --out")
    e = p.add_argument_group("robustness evaluation (test split)")
    e.add_argument("--eval-eps", type=eps_list, default="0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5",
                   metavar="LIST", help="radii of the attacks and certified bands")
    e.add_argument("--certify", type=band_list, default="crown,lipschitz", metavar="LIST",
                   help="band methods: crown, alpha-crown, lipschitz (comma list) or none")
    e.add_argument("--points", type=positive_int, default=1000, metavar="N", help="test points evaluated")
    e.add_argument("--lipschitz-points", type=number(int, 0, INT_MAX), default=100, metavar="N",
                   help="points with a Lipschitz band (one engine call each)")
    e.add_argument("--pgd-steps", type=positive_int, default=20, metavar="N", help="PGD steps of the attacks")
    e.add_argument("--no-eval", action="store_true", help="train only")
    o = p.add_argument_group("output")
    o.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write band_width.png and information_plane.png")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    o.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    add_verbosity(p)
    p.set_defaults(func=run_csib)


def build_config(args: argparse.Namespace):
    from robust_train.config import TrainConfig, load_config

    if args.resume and (Path(args.out) / "config.json").is_file():
        cfg = load_config(args.out)
        cfg.device, cfg.out = args.device, args.out
        return TrainConfig.from_dict(json.loads(cfg.to_json()))
    if args.method == "csib" and args.batch_size < 2:
        raise CliError(f"--batch-size {args.batch_size}: CS-IB's kernel estimators need at least 2 examples per "
                       "batch")
    return TrainConfig(
        data=args.data, data_dir=args.data_dir, subset=args.subset, val_fraction=args.val_fraction,
        model=args.model, method=args.method, eps=args.eps, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, ib_beta=args.beta, ib_beta_warmup=args.beta_warmup, sigma=args.sigma,
        sigma_x_scale=args.sigma_x_scale,
        csib_normalization=args.normalization, csib_normalized_mi=args.normalized_mi,
        band_weight=args.band_weight, band_method=args.band_method, seed=args.seed, device=args.device,
        dtype=args.dtype, val_points=DEFAULTS["val_points"], out=args.out)


def load_regression_run(run: str | Path, split: str = "test"):
    """``(config, regressor, its model.json, splits, (x, y))`` of a ``clarke csib`` run, x and y in the model's
    dtype."""
    import torch

    from models.checkpoint import load_model
    from robust_train.config import load_config
    from robust_train.train import load_splits

    cfg = load_config(run)
    model, meta = load_model(Path(run) / "model")
    splits = load_splits(cfg)
    x, y = getattr(splits, split).tensors
    dtype = next(model.parameters()).dtype
    return cfg, model, meta, splits, (x.to(dtype), y.to(dtype) if torch.is_floating_point(y) else y)


def run_csib(args: argparse.Namespace) -> int:
    from models.data import DatasetUnavailable
    from robust_train import runs
    from robust_train.regression import input_domain
    from robust_train.regression_eval import evaluate_regressor
    from robust_train.train import train

    cfg = build_config(args)
    quiet = bool(getattr(args, "quiet", False))
    progress = not (args.no_progress or quiet)
    try:
        out = Path(train(cfg, progress=progress, resume=args.resume, overwrite=args.overwrite))
    except DatasetUnavailable as e:
        raise CliError(str(e)) from None
    except FloatingPointError as e:
        raise CliError(f"training diverged: {e} (try a smaller --lr)") from None
    from robust_train.cli import _cell, _is_lead

    if not _is_lead():  # under torchrun rank 0 evaluates and writes; the others are done
        return 0
    rows = runs.read_metrics(out)
    summary: dict[str, Any] = {"run": str(out), "method": cfg.method, "data": cfg.data, "beta": cfg.ib_beta,
                               "epochs": cfg.epochs}
    _, model, meta, splits, (x, y) = load_regression_run(out)
    summary["selected_epoch"] = meta.get("selected_epoch")
    summary["val_rmse"] = _cell(rows[meta["selected_epoch"] - 1]["val_rmse"]) if meta.get("selected_epoch") else None
    x, y = x[:args.points], y[:args.points]
    y_std = float(splits.y_std.reshape(-1)[0])
    if not args.no_eval:
        note = (lambda s: print(s, file=__import__("sys").stderr)) if progress else None
        report = evaluate_regressor(model.deterministic(), x, y, eps_grid=args.eval_eps, bands=args.certify,
                                    domain=input_domain(splits), pgd_steps=args.pgd_steps,
                                    lipschitz_points=args.lipschitz_points, seed=cfg.seed, progress=note)
        bad = {k: v for r in report["rows"] for k, v in r.items() if k.startswith("violations_") and v}
        if bad:  # an attacked prediction outside its certified band: an engine bug, never a result
            raise CliError(f"soundness check failed: attacked predictions outside the certified band ({bad})")
        report.update(run=str(out), split="test", y_std=y_std, dtype=cfg.dtype,
                      units="standardised target (multiply by y_std for original units)")
        write_atomic(out / "robustness.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        summary["test_rmse"] = report["rmse_clean"]
        summary["rows"] = report["rows"]
        if args.plots:
            from robust_train.plots import plot_band_widths
            plot_band_widths({cfg.method: report}, out / "band_width.png")
    if args.plots and rows:
        from robust_train.plots import plot_information_plane, read_metrics
        plot_information_plane({cfg.method: read_metrics(out / "metrics.csv")}, out / "information_plane.png")
    summary["y_std"] = y_std
    if args.json:
        print_json(summary)
    elif not quiet:
        print(_text(summary, out))
    return 0


def _text(summary: dict, out: Path) -> str:
    lines = [f"trained {summary['method']} on {summary['data']} (beta {summary['beta']:g}), "
             f"{summary['epochs']} epochs, selected epoch {summary['selected_epoch']} "
             f"(val RMSE {summary['val_rmse']:.4f}): {out}" if summary.get("val_rmse") is not None
             else f"trained {summary['method']} on {summary['data']}: {out}"]
    if "test_rmse" in summary:
        lines.append(f"test RMSE {summary['test_rmse']:.4f} (standardised; x y_std {summary['y_std']:.4g} for "
                     "original units)")
        for r in summary["rows"]:
            bands = "  ".join(f"{k[5:]} {v:.4f}" for k, v in r.items()
                              if k.startswith("band_") and not k.endswith("_max"))
            lines.append(f"  eps {r['eps']:.2f}: RMSE fgsm {r['rmse_fgsm']:.4f} pgd {r['rmse_pgd']:.4f}  "
                         f"mean band {bands}")
    lines.append(f"model.onnx for 'clarke bounds' / 'clarke lipschitz'; report: {out / 'robustness.json'}")
    return "\n".join(lines)
