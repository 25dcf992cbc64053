r"""Robust training side by side: every method on the same model, data, eps and epoch budget, several seeds,
balanced and long-tailed training sets; and the cost of one training step per method.

    python benchmarks/robust_training.py [--quick] [--json] [--seeds 3] [--methods pgd-at,done,...]
                                         [--data fashion-mnist] [--subset N] [--epochs N] [--imbalance 1,10]
                                         [--points N] [--jobs 2] [--keep DIR]

Every number printed here was measured in this run. Per (training set, method, seed) the script trains with
``robust_train.train`` (one thread per job, ``--jobs`` jobs at a time) and evaluates the first ``--points`` test
points with ``robust_train.evaluate.evaluate``:

- SA: clean accuracy; RA-PGD: PGD-20 (step eps/4, random start); RA-APGD: robust to every APGD attack of
  ``--attacks`` (default APGD-CE and APGD-T with DLR and 9 targets, AutoAttack's two gradient attacks);
  RA-Tail-30: mean of the 3 lowest per-class PGD-20 robust accuracies (the DONE paper's metric,
  robust_training.md section 1.4); worst-Tail-30: the same over the worst case of all attacks; Cert:
  certified by the engine (``--certify``, default CROWN-IBP bounds: full CROWN needs ~0.8 s per point on
  cnn-small); Cert-Tail-30; s/epoch: training seconds per epoch.
- Columns are mean +- standard deviation over the seeds. The comparison lines give DONE - PGD-AT per training
  set (difference of the seed means), and DONE over the certified loss (done-ibp) - IBP on the Cert columns.

The step-time table (``benchmarks/training_steps.py``) times one optimiser step on ``--step-model`` (default
cnn-small, 1x28x28, batch 128, one thread) per method, beside a plain-torch step and auto_LiRPA's IBP / CROWN-IBP
steps (when importable; ``--no-peer`` skips them), median of ``--step-repeats`` steps after a warm-up.

``--quick`` (under 20 minutes on 2 cores): Fashion-MNIST 3000-example subset when the Debian package
dataset-fashion-mnist is installed, else scikit-learn digits; 2 seeds, 8 epochs, 200 test points, mlp-small.
``--json``: the same tables as one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from training_steps import print_steps, step_times  # noqa: E402

DEFAULT_METHODS = ("standard", "pgd-at", "trades", "mart", "gairat", "mail", "done", "ibp", "done-ibp", "crown-ibp")
ATTACKS = ("pgd20", "apgd-ce", "apgd-t")
COLUMNS = ("SA", "RA-PGD", "RA-APGD", "RA-Tail-30", "worst-Tail-30", "Cert", "Cert-Tail-30", "s/epoch")


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return v
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small settings that finish in under 20 minutes")
    p.add_argument("--json", action="store_true", help="print the tables as one JSON object on the last line")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated training methods; done-INNER is DONE with --inner INNER (e.g. done-ibp: "
                        "instances reweighted by their IBP certified loss); METHOD:FIELD=VALUE:... overrides "
                        "TrainConfig fields for that row (e.g. done:r=1:reweight_start=0.5)")
    p.add_argument("--seeds", type=positive(int), default=None, help="seeds per method (default 3; quick 2)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default=None, help="zoo model (default cnn-small; quick mlp-small)")
    p.add_argument("--subset", type=positive(int), default=None,
                   help="training examples before the long-tail profile (default: all; quick 3000)")
    p.add_argument("--epochs", type=positive(int), default=None, help="epochs per run (default 10; quick 8)")
    p.add_argument("--eps", type=positive(float), default=0.1)
    p.add_argument("--imbalance", default="1,10", help="comma-separated imbalance ratios rho (1 = balanced)")
    p.add_argument("--points", type=positive(int), default=None,
                   help="test points evaluated per run (default 1000; quick 200)")
    p.add_argument("--points-offset", type=int, default=0,
                   help="evaluate test points OFFSET .. OFFSET + points - 1 (held-out points after a selection)")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help="evaluation attacks: pgd20 first, then APGD attacks (RA-APGD = robust to all of them)")
    p.add_argument("--certify", default="crown-ibp",
                   help="engine method for the Cert columns (crown-ibp, crown, alpha-crown; none: skip)")
    p.add_argument("--r", type=positive(float), default=1.0, help="DONE's KL-DRO temperature")
    p.add_argument("--tau", type=positive(float), default=0.5, help="DONE's normaliser step")
    p.add_argument("--lr", type=positive(float), default=1e-3)
    p.add_argument("--batch-size", type=positive(int), default=128)
    p.add_argument("--jobs", type=positive(int), default=2, help="training runs at a time (one thread each)")
    p.add_argument("--step-model", default="cnn-small")
    p.add_argument("--step-repeats", type=positive(int), default=7)
    p.add_argument("--no-step-times", action="store_true")
    p.add_argument("--no-peer", action="store_true", help="step times without auto_LiRPA's")
    p.add_argument("--no-table", action="store_true", help="only the step-time table")
    p.add_argument("--keep", default=None, help="keep the run directories under this folder")
    args = p.parse_args(argv)
    # explicit options win over --quick's settings
    quick = {"seeds": 2, "epochs": 8, "points": 200, "model": "mlp-small"}
    full = {"seeds": 3, "epochs": 10, "points": 1000, "model": "cnn-small"}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick and args.subset is None:
        from models.data import DatasetUnavailable, load_dataset
        try:
            load_dataset("fashion-mnist", data_dir=args.data_dir, subset=100, test_subset=10)
            args.data, args.subset = "fashion-mnist", 3000
        except DatasetUnavailable:
            args.data = "digits"
    args.attacks = [a for a in args.attacks.split(",") if a]
    if not args.attacks or args.attacks[0] != "pgd20" or len(args.attacks) < 2:
        p.error("--attacks: pgd20 first, then at least one APGD attack")
    args.methods = [m for m in args.methods.split(",") if m]
    args.imbalance = [float(r) for r in args.imbalance.split(",") if r]
    if any(not (math.isfinite(r) and r >= 1) for r in args.imbalance):
        p.error("--imbalance: ratios must be finite numbers >= 1")
    if args.points_offset < 0:
        p.error(f"--points-offset must be >= 0, got {args.points_offset}")
    from robust_train.config import INNERS, METHODS
    known = (*METHODS, *(f"done-{inner}" for inner in INNERS if inner != "pgd"))
    unknown = [m for m in args.methods if m.split(":")[0] not in known]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    for m in args.methods:
        try:
            method_overrides(m)
        except ValueError as e:
            p.error(f"--methods: {m}: {e}")
    args.certify = [] if args.certify == "none" else [args.certify]
    return args


# ------------------------------------------------------------------------------------------- one run


def method_overrides(token: str) -> dict[str, float]:
    """``{field: value}`` of a method token's ``:FIELD=VALUE`` parts (numeric TrainConfig fields)."""
    from dataclasses import fields

    from robust_train.config import TrainConfig
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for part in token.split(":")[1:]:
        key, eq, value = part.partition("=")
        if not eq or key not in names:
            raise ValueError(f"{part!r} is not FIELD=VALUE of a TrainConfig field")
        out[key] = float(value)
    return out


def run_one(job: dict) -> dict:
    """Train one (training set, method, seed) and evaluate it; returns the row of measured numbers."""
    import torch
    torch.set_num_threads(1)
    from models.checkpoint import load_model
    from models.data import load_dataset
    from robust_train.config import TrainConfig
    from robust_train.evaluate import evaluate, tail_accuracy
    from robust_train.runs import read_metrics
    from robust_train.train import train

    a = job["args"]
    out = Path(job["out"])
    base = job["method"].split(":")[0]
    method, _, inner = base.partition("-") if base.startswith("done-") else (base, "", "")
    settings = {"r": a["r"], "tau": a["tau"], **method_overrides(job["method"])}
    cfg = TrainConfig(data=a["data"], data_dir=a["data_dir"], subset=a["subset"], imbalance=job["imbalance"],
                      model=a["model"], method=method, inner=inner or "pgd", eps=a["eps"], epochs=a["epochs"],
                      batch_size=a["batch_size"], lr=a["lr"], seed=job["seed"], device="cpu", out=str(out),
                      val_points=500, **settings)
    splits = load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction,
                          subset=cfg.subset, imbalance=cfg.imbalance)
    t0 = time.perf_counter()
    train(cfg, splits, progress=False, overwrite=True)
    train_seconds = time.perf_counter() - t0
    epoch_seconds = [float(r["seconds"]) for r in read_metrics(out)]
    model, _ = load_model(out / "model")
    x, y = splits.test.tensors
    start = a.get("points_offset", 0)
    x, y = x[start:start + a["points"]], y[start:start + a["points"]]
    rep = evaluate(model, (x, y), a["eps"], attacks=a["attacks"], certify=a["certify"], classes=splits.classes,
                   seed=job["seed"], per_point=True)
    pts = rep["points"]
    correct = torch.tensor(pts["correct"])
    apgd_robust = correct.clone()
    for name in a["attacks"][1:]:
        apgd_robust &= ~torch.tensor(pts["attacked"][name])
    apgd = float(apgd_robust.double().mean())
    return {"set": job["set"], "method": job["method"], "seed": job["seed"],
            "SA": rep["clean_accuracy"], "RA-PGD": rep["attack_accuracy"]["pgd20"], "RA-APGD": apgd,
            "RA-Tail-30": rep["ra_tail_30_by_attack"]["pgd20"]["value"], "worst-Tail-30": rep["ra_tail_30"],
            "RA-worst": rep["robust_accuracy"], "Cert": rep["certified_accuracy"],
            "Cert-Tail-30": rep["certified_tail_30"], "s/epoch": statistics.fmean(epoch_seconds),
            "train_seconds": train_seconds, "eval_seconds": rep["seconds"]["total"],
            "per_class_pgd": rep["per_class"]["attack"]["pgd20"],
            "train_counts": splits.class_counts("train"), "tail_check": tail_accuracy(
                rep["per_class"]["attack"]["pgd20"])[1]}


def set_name(rho: float) -> str:
    return "balanced" if rho == 1 else f"long-tailed rho={rho:g}"


def aggregate(rows: list[dict], sets: list[str], methods: list[str]) -> list[dict]:
    table = []
    for s in sets:
        for m in methods:
            mine = [r for r in rows if r["set"] == s and r["method"] == m]
            if not mine:
                continue
            entry = {"set": s, "method": m, "seeds": len(mine)}
            for c in COLUMNS:
                vals = [r[c] for r in mine if r[c] is not None]
                entry[c] = statistics.fmean(vals) if vals else None
                entry[c + " sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            table.append(entry)
    return table


def fmt(v, sd=None, pct=True) -> str:
    if v is None:
        return "-"
    if not pct:
        return f"{v:.1f}"
    s = f"{100 * v:.1f}"
    return s + (f"±{100 * sd:.1f}" if sd is not None else "")


def print_table(table: list[dict], args: argparse.Namespace) -> list[dict]:
    print(f"\n{args.data}{f' (subset {args.subset})' if args.subset else ''}, {args.model}, eps {args.eps:g}, "
          f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr:g} cosine, {args.points} test points "
          f"from {args.points_offset}, "
          f"{args.seeds} seeds (mean±sd, %); attacks {','.join(args.attacks)}; DONE r={args.r:g} tau={args.tau:g}")
    head = ["set", "method", *COLUMNS]
    print(" | ".join(f"{h:>14}" for h in head))
    for e in table:
        cells = [e["set"], e["method"]] + [fmt(e[c], e[c + " sd"]) for c in COLUMNS[:-1]] + \
                [fmt(e["s/epoch"], pct=False)]
        print(" | ".join(f"{c:>14}" for c in cells))
    comparisons = []
    for s in dict.fromkeys(e["set"] for e in table):
        by = {e["method"]: e for e in table if e["set"] == s}
        if "done" in by and "pgd-at" in by:
            d, p = by["done"], by["pgd-at"]
            c = {"set": s, "tail_gain_points": 100 * (d["RA-Tail-30"] - p["RA-Tail-30"]),
                 "ra_pgd_change_points": 100 * (d["RA-PGD"] - p["RA-PGD"])}
            comparisons.append(c)
            print(f"{s}: DONE - PGD-AT: RA-Tail-30 {c['tail_gain_points']:+.1f} points, "
                  f"RA-PGD {c['ra_pgd_change_points']:+.1f} points")
        for inner in ("ibp", "crown-ibp"):
            d, p = by.get(f"done-{inner}"), by.get(inner)
            if d and p and d["Cert"] is not None and p["Cert"] is not None:
                c = {"set": s, "compare": f"done-{inner} - {inner}",
                     "cert_tail_gain_points": 100 * (d["Cert-Tail-30"] - p["Cert-Tail-30"]),
                     "cert_change_points": 100 * (d["Cert"] - p["Cert"])}
                comparisons.append(c)
                print(f"{s}: DONE({inner}) - {inner.upper()}: Cert-Tail-30 {c['cert_tail_gain_points']:+.1f} points, "
                      f"Cert {c['cert_change_points']:+.1f} points")
    return comparisons


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("json",)}}
    if not args.no_step_times:
        result["step_times"] = step_times(args.step_model, args.step_repeats, peer=not args.no_peer)
        print_steps(result["step_times"])
    if not args.no_table:
        keep = Path(args.keep) if args.keep else None
        tmp = None if keep else tempfile.TemporaryDirectory(prefix="clarke-bench-")
        root = keep or Path(tmp.name)
        shared = {k: getattr(args, k) for k in ("data", "data_dir", "subset", "model", "eps", "epochs", "batch_size",
                                                 "lr", "r", "tau", "points", "points_offset", "certify", "attacks")}
        jobs = [{"args": shared, "set": set_name(rho), "imbalance": rho, "method": m, "seed": s,
                 "out": str(root / f"rho{rho:g}" / m / f"seed{s}")}
                for rho in args.imbalance for s in range(args.seeds) for m in args.methods]
        rows = []
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for row in pool.imap_unordered(run_one, jobs):
                rows.append(row)
                print(f"[{time.perf_counter() - t_start:7.0f} s] {len(rows)}/{len(jobs)} {row['set']} "
                      f"{row['method']} seed {row['seed']}: SA {fmt(row['SA'])} RA-PGD {fmt(row['RA-PGD'])} "
                      f"RA-Tail-30 {fmt(row['RA-Tail-30'])} Cert {fmt(row['Cert'])}", file=sys.stderr, flush=True)
        rows.sort(key=lambda r: (r["set"], args.methods.index(r["method"]), r["seed"]))
        table = aggregate(rows, [set_name(r) for r in args.imbalance], args.methods)
        result["comparisons"] = print_table(table, args)
        result["table"], result["runs"] = table, rows
        if tmp is not None:
            tmp.cleanup()
    result["seconds"] = time.perf_counter() - t_start
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
