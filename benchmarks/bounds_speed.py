"""Bound speed and tightness: IBP, CROWN and alpha-CROWN on an MNIST-sized MLP and a small CIFAR CNN.

    python benchmarks/bounds_speed.py [--inputs 5] [--iterations 20] [--json]

Prints, per model, eps and method: time per input (one box per call, median) and mean bound width,
beside the auto_LiRPA 0.7.1 times measured on the same kind of 2-core CPU (quoted from the issue,
measured in another run). Models use PyTorch's default initialisation with a fixed seed; inputs are
uniform in [0, 1] and boxes are clipped to [0, 1].
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from models.zoo import mlp, small_cnn
from verify import bound, from_torch

AUTO_LIRPA_MS = {  # auto_LiRPA 0.7.1, 2-core CPU (issue #2): IBP, CROWN, alpha-CROWN
    "mlp": {"ibp": 8, "crown": 152, "alpha-crown": 15_000},
    "cnn": {"ibp": 51, "crown": 450, "alpha-crown": 38_000},
}
TARGET_MS = {"mlp": {"crown": 50, "alpha-crown": 2000}, "cnn": {"crown": 150, "alpha-crown": 5000}}


def run(inputs: int, iterations: int) -> list[dict]:
    torch.manual_seed(0)
    models = {"mlp": (mlp([784, 100, 100, 10]).eval(), (784,)), "cnn": (small_cnn().eval(), (3, 32, 32))}
    rows = []
    for name, (net, shape) in models.items():
        graph = from_torch(net, shape)
        for p in net.parameters():
            p.requires_grad_(False)
        xs = torch.rand(inputs, *shape)
        bound(graph, xs[:1] - 0.01, xs[:1] + 0.01, method="alpha-crown", iterations=2)  # warm-up
        for eps in (1 / 255, 2 / 255):
            for method in ("ibp", "crown", "alpha-crown"):
                times, widths = [], []
                for i in range(inputs):
                    lo, hi = (xs[i:i + 1] - eps).clamp(0, 1), (xs[i:i + 1] + eps).clamp(0, 1)
                    t0 = time.perf_counter()
                    lower, upper = bound(graph, lo, hi, method=method, iterations=iterations)
                    times.append(time.perf_counter() - t0)
                    widths.append(float((upper - lower).mean()))
                rows.append({"model": name, "eps": round(eps * 255), "method": method,
                             "ms_per_input": 1000 * statistics.median(times),
                             "mean_width": statistics.mean(widths),
                             "auto_lirpa_ms": AUTO_LIRPA_MS[name][method],
                             "target_ms": TARGET_MS[name].get(method)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=5, help="inputs per (model, eps) (default 5)")
    ap.add_argument("--iterations", type=int, default=20, help="alpha-CROWN iterations (default 20)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: fastest for these sizes on a 2-core CPU; 0 = torch's choice)")
    ap.add_argument("--json", action="store_true", help="print the table as one JSON object on the last line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.inputs, args.iterations)
    from rich.console import Console
    from rich.table import Table
    t = Table(title="Bound speed and width (time per input; auto_LiRPA measured separately, same CPU kind)")
    for col in ("model", "eps", "method", "ms/input", "target ms", "auto_LiRPA ms", "speed-up", "mean width"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["model"], f"{r['eps']}/255", r["method"], f"{r['ms_per_input']:.1f}",
                  "-" if r["target_ms"] is None else str(r["target_ms"]), str(r["auto_lirpa_ms"]),
                  f"{r['auto_lirpa_ms'] / r['ms_per_input']:.1f}x", f"{r['mean_width']:.5g}")
    Console(width=160).print(t)
    for name in ("mlp", "cnn"):
        for eps in (1, 2):
            c = next(r for r in rows if r["model"] == name and r["eps"] == eps and r["method"] == "crown")
            a = next(r for r in rows if r["model"] == name and r["eps"] == eps and r["method"] == "alpha-crown")
            print(f"{name} eps={eps}/255: alpha-CROWN width / CROWN width = {a['mean_width'] / c['mean_width']:.4f}")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
