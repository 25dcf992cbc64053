r"""Bound speed and tightness: Clarke beside auto_LiRPA 0.7.1, both measured in this run, in this process.

    python benchmarks/bounds_speed.py [--inputs 2] [--iterations 20] [--threads 1] [--models mlp,cnn,mnist_cnn]
                                      [--methods ibp,crown,alpha-crown,alpha-crown+interm]
                                      [--precision model|float64] [--default-allocator] [--no-peer] [--json]

Nets (PyTorch's default initialisation, seed 0, float32): ``mlp`` 784-100-100-10; ``cnn`` =
``models.zoo.small_cnn`` on 3x32x32; ``mnist_cnn`` = Conv 1->16 k4 s2 p1, Conv 16->32 k4 s2 p1, FC 1568->100->10
on 1x28x28 (the CNN of issue 15); ``cifar_base``, ``cifar_wide``, ``cifar_deep``: the architectures of the
VNN-COMP oval21 networks (``cifar_*_kw.onnx``) on 3x32x32, randomly initialised like the others.

``--precision`` is Clarke's arithmetic (``verify.bound(precision=...)``): ``float64`` (default) gives auto_LiRPA's
widths (to ~1e-6 relative), so the times compare equal work; ``model`` computes in the network's float32 as
auto_LiRPA does, but Clarke's rigorous float32 rounding allowances (``n u`` per dot product of length ``n``) then
widen CROWN bounds, several times over on the CNNs (the width table shows by how much). Clarke's bounds are rigorous
either way (they contain the exact real-arithmetic value); auto_LiRPA's are float32 results.

Inputs are uniform in [0, 1]; each box is ``x +- eps`` clipped to [0, 1], eps 1/255
and 2/255; one box per call. Methods: IBP, CROWN, and two alpha-CROWNs (``--iterations`` steps, lr 0.5):
``alpha-crown`` optimises the final pass's slopes over fixed CROWN intermediate bounds (Clarke's default;
auto_LiRPA gets its own CROWN intermediate bounds, ``save_intermediate()``, as ``interm_bounds``, inside the timed
call), ``alpha-crown+interm`` also optimises the slopes of the intermediate passes (auto_LiRPA's default when no
``interm_bounds`` are passed; Clarke's ``optimize_intermediate=True``). ``--methods`` picks a subset (the
``+interm`` rows take seconds per call on the CIFAR nets). Each tool gets one warm-up call per (net, method) first;
the time per input is the median over inputs (calls under 20 ms are repeated 5 times and the fastest counts).

Both tools see the same nets, boxes, thread count (``--threads``, default 1), the same allocator (glibc's
thresholds raised by ``verify.tune_allocator()``, as the ``clarke`` command sets them; ``--default-allocator``
leaves glibc's defaults, under which Clarke's float64 tensors pay fresh page faults on every call) and the same
relaxation:
auto_LiRPA runs ``compute_bounds(method='IBP' | 'backward' | 'CROWN-Optimized')`` on a ``BoundedModule`` built
once per net (as Clarke's graph is), with ``compare_crown_with_ibp=True`` because Clarke intersects its CROWN
bounds (intermediate and final) with interval bounds; its alpha-CROWN uses ``optimize_bound_args``
``iteration=--iterations, lr_alpha=0.5`` and otherwise its defaults (it optimises lower and upper bounds in two
runs and stops early after 10 iterations without improvement; Clarke optimises both in one batched run and
runs every iteration). The width table gives both tools' mean width (upper - lower) and the largest relative
difference of any single output's width: at float32 round-off (~1e-6) for IBP and CROWN means both computed
the same relaxation; alpha-CROWN may differ (different optimiser schedules). The time ratio is
auto_LiRPA ms / Clarke ms from this run (> 1: Clarke faster). No number from elsewhere enters this script.

Setting up the auto_LiRPA columns (auto_LiRPA is a peer tool, not a dependency; BSD-3, source vendored read-only
at ``../shared/peers/auto_LiRPA`` beside this repository):

    pip install -e ".[bench]"      # its pure-Python run-time needs (appdirs, pyyaml, tqdm, graphviz, packaging)
    echo "$(cd ../shared/peers/auto_LiRPA && pwd)" > \
      "$(python -c 'import site; print(site.getsitepackages()[0])')/auto_lirpa_peer.pth"

Never pip-install auto_LiRPA itself (its setup.py pins torch < 2.9; it runs on torch 2.13). Without the ``.pth``
the script also tries ``../shared/peers/auto_LiRPA`` relative to the repository root. When the import still
fails it prints ``auto_LiRPA not available: <reason>`` and Clarke's columns only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/bounds_speed.py` from anywhere
    sys.path.insert(0, str(REPO))

from models.zoo import mlp, small_cnn  # noqa: E402
from verify import bound, from_torch, tune_allocator  # noqa: E402

PEER_DIR = REPO.parent / "shared" / "peers" / "auto_LiRPA"
LR = 0.5
EPS = (1, 2)  # in units of 1/255
METHODS = ("ibp", "crown", "alpha-crown", "alpha-crown+interm")
LIRPA_METHOD = {"ibp": "IBP", "crown": "backward", "alpha-crown": "CROWN-Optimized",
                "alpha-crown+interm": "CROWN-Optimized"}


def load_auto_lirpa():
    """``(module, "")`` or ``(None, reason)``: import auto_LiRPA, else retry with ``../shared/peers/auto_LiRPA``."""
    try:
        import auto_LiRPA
        return auto_LiRPA, ""
    except ImportError as e:
        first = f"{type(e).__name__}: {e}"
    if not PEER_DIR.is_dir():
        return None, f"{first}; and {PEER_DIR} does not exist"
    sys.path.append(str(PEER_DIR))
    for name in [m for m in sys.modules if m == "auto_LiRPA" or m.startswith("auto_LiRPA.")]:
        del sys.modules[name]  # drop a half-imported package before retrying
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import auto_LiRPA
    except Exception as e:  # noqa: BLE001 - any import failure is reported, never raised
        hint = " (pip install -e \".[bench]\" installs its run-time needs)" if isinstance(e, ImportError) else ""
        return None, f"importing it from {PEER_DIR} failed: {type(e).__name__}: {e}{hint}"
    return auto_LiRPA, ""


def mnist_cnn() -> nn.Sequential:
    """Conv 1->16 k4 s2 p1, ReLU, Conv 16->32 k4 s2 p1, ReLU, FC 1568->100, ReLU, FC 100->10 (issue 15)."""
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, 10))


def oval21_cnn(kind: str) -> nn.Sequential:
    """The layer stack of VNN-COMP's oval21 ``cifar_{kind}_kw.onnx`` (base, wide, deep), freshly initialised."""
    def conv(i, o, k, s):
        return [nn.Conv2d(i, o, k, stride=s, padding=1), nn.ReLU()]
    if kind == "base":
        body, flat = conv(3, 8, 4, 2) + conv(8, 16, 4, 2), 16 * 8 * 8
    elif kind == "wide":
        body, flat = conv(3, 16, 4, 2) + conv(16, 32, 4, 2), 32 * 8 * 8
    else:
        body, flat = conv(3, 8, 4, 2) + conv(8, 8, 3, 1) + conv(8, 8, 3, 1) + conv(8, 8, 4, 2), 8 * 8 * 8
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(flat, 100), nn.ReLU(), nn.Linear(100, 10))


MODELS = {
    "mlp": (lambda: mlp([784, 100, 100, 10]), (784,)),
    "cnn": (small_cnn, (3, 32, 32)),
    "mnist_cnn": (mnist_cnn, (1, 28, 28)),
    "cifar_base": (lambda: oval21_cnn("base"), (3, 32, 32)),
    "cifar_wide": (lambda: oval21_cnn("wide"), (3, 32, 32)),
    "cifar_deep": (lambda: oval21_cnn("deep"), (3, 32, 32)),
}


class _Lirpa:
    """auto_LiRPA on one net, configured like Clarke (see the module docstring)."""

    def __init__(self, lirpa, net: nn.Module, shape: tuple[int, ...], iterations: int):
        self.lirpa, self.iterations = lirpa, iterations
        opts = {"compare_crown_with_ibp": True, "verbosity": 0,
                "optimize_bound_args": {"iteration": iterations, "lr_alpha": LR}}
        self.sink = io.StringIO()  # auto_LiRPA prints ("Early stop at ...") and logs to stdout
        with contextlib.redirect_stdout(self.sink):
            self.module = lirpa.BoundedModule(net, torch.zeros(1, *shape), bound_opts=opts)

    def bound(self, lo: torch.Tensor, hi: torch.Tensor, method: str, iterations: int | None = None):
        if iterations is not None:
            self.module.set_bound_opts({"optimize_bound_args": {"iteration": iterations}})
        x = self.lirpa.BoundedTensor((lo + hi) / 2, self.lirpa.PerturbationLpNorm(x_L=lo, x_U=hi))
        try:
            with contextlib.redirect_stdout(self.sink):
                interm = None
                if method == "alpha-crown":  # fixed intermediate bounds: its CROWN ones, as Clarke's
                    self.module.compute_bounds(x=(x,), method="backward")
                    final = self.module.final_name
                    interm = {k: [v[0].detach(), v[1].detach()]
                              for k, v in self.module.save_intermediate().items() if k != final}
                lower, upper = self.module.compute_bounds(x=(x,), method=LIRPA_METHOD[method],
                                                          interm_bounds=interm)
        finally:
            if iterations is not None:
                self.module.set_bound_opts({"optimize_bound_args": {"iteration": self.iterations}})
            self.sink.seek(0)
            self.sink.truncate()
        return lower.detach(), upper.detach()


def _timed(fn, *args, **kwargs):
    """Seconds for one call; calls under 20 ms are repeated (5 in all) and the fastest counts, which keeps
    scheduler noise out of sub-millisecond rows. Returns ``(seconds, result of the first call)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync()
    best = time.perf_counter() - t0
    for _ in range(4 if best < 0.02 else 0):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clarke_bound(graph, lo, hi, method: str, iterations: int, precision: str, device: str):
    """``verify.bound`` for a benchmark method name (``alpha-crown+interm``: intermediate slopes optimised)."""
    return bound(graph, lo, hi, method=method.split("+")[0], iterations=iterations, lr=LR,
                 optimize_intermediate=method.endswith("+interm"), precision=precision, device=device)


def run(inputs: int, iterations: int, models: list[str], lirpa=None, precision: str = "float64",
        device: str = "cpu", methods: tuple[str, ...] = METHODS) -> list[dict]:
    rows = []
    for name in models:
        factory, shape = MODELS[name]
        torch.manual_seed(0)
        net = factory().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        xs = torch.rand(inputs, *shape)
        graph = from_torch(net, shape)
        peer = _Lirpa(lirpa, net, shape, iterations) if lirpa is not None else None
        w_lo, w_hi = (xs[:1] - 1 / 255).clamp(0, 1), (xs[:1] + 1 / 255).clamp(0, 1)
        for method in methods:  # warm-up: one call per tool and method
            clarke_bound(graph, w_lo, w_hi, method, 2, precision, device)
            if peer is not None:
                peer.bound(w_lo, w_hi, method, iterations=2)
        for eps in EPS:
            for method in methods:
                t_c, t_l, w_c, w_l, rel = [], [], [], [], []
                for i in range(inputs):
                    lo = (xs[i:i + 1] - eps / 255).clamp(0, 1)
                    hi = (xs[i:i + 1] + eps / 255).clamp(0, 1)
                    dt, (cl, cu) = _timed(clarke_bound, graph, lo, hi, method, iterations, precision, device)
                    t_c.append(dt)
                    wc = (cu - cl).detach().double().cpu().flatten()
                    w_c.append(float(wc.mean()))
                    if peer is not None:
                        dt, (ll, lu) = _timed(peer.bound, lo, hi, method)
                        t_l.append(dt)
                        wl = (lu - ll).double().flatten()
                        w_l.append(float(wl.mean()))
                        rel.append(float(((wc - wl).abs() / wl.abs().clamp(min=1e-30)).max()))
                row = {"model": name, "eps": f"{eps}/255", "method": method,
                       "clarke_ms": 1000 * statistics.median(t_c), "clarke_mean_width": statistics.mean(w_c),
                       "auto_lirpa_ms": None, "ratio": None, "auto_lirpa_mean_width": None,
                       "max_rel_width_diff": None}
                if peer is not None:
                    lirpa_ms = 1000 * statistics.median(t_l)
                    row.update(auto_lirpa_ms=lirpa_ms, ratio=lirpa_ms / row["clarke_ms"],
                               auto_lirpa_mean_width=statistics.mean(w_l), max_rel_width_diff=max(rel))
                rows.append(row)
    return rows


def format_table(title: str, headers: list[tuple[str, str]], rows: list[list[str]], right: set[int]) -> str:
    """A plain-text table; headers are two lines each, so the full names fit without truncation."""
    widths = [max(len(h[0]), len(h[1]), *(len(r[j]) for r in rows)) for j, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if j in right else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [title, line([h[0] for h in headers]), line([h[1] for h in headers]),
           "  ".join("-" * w for w in widths)]
    return "\n".join(out + [line(r) for r in rows])


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def report(rows: list[dict], peer: bool) -> str:
    key = [[r["model"], r["eps"], r["method"]] for r in rows]
    head = [("model", ""), ("eps", ""), ("method", "")]
    times = [k + [_f(r["clarke_ms"], ".1f")] for k, r in zip(key, rows, strict=True)]
    widths = [k + [_f(r["clarke_mean_width"], ".6g")] for k, r in zip(key, rows, strict=True)]
    t_head, w_head = head + [("Clarke", "ms")], head + [("Clarke", "mean width")]
    if peer:
        for t, w, r in zip(times, widths, rows, strict=True):
            t += [_f(r["auto_lirpa_ms"], ".1f"), _f(r["ratio"], ".2f") + "x"]
            w += [_f(r["auto_lirpa_mean_width"], ".6g"), _f(r["max_rel_width_diff"], ".1e")]
        t_head += [("auto_LiRPA", "ms"), ("auto_LiRPA ms", "/ Clarke ms")]
        w_head += [("auto_LiRPA", "mean width"), ("max relative", "width diff")]
    n = len(t_head)
    return "\n\n".join([
        format_table("Time per input (median over inputs, one box per call; measured in this run)",
                     t_head, times, set(range(3, n))),
        format_table("Bound width (upper - lower; mean over inputs and outputs; this run)",
                     w_head, widths, set(range(3, n)))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=2,
                    help="inputs per (model, eps) (default 2, about 30 s with auto_LiRPA; 5 gives steadier medians)")
    ap.add_argument("--iterations", type=int, default=20, help="alpha-CROWN iterations, both tools (default 20)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both tools (default 1: fastest for these sizes on a 2-core CPU; "
                         "0 = torch's choice)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {', '.join(METHODS)} (default: all)")
    ap.add_argument("--precision", choices=("model", "float64"), default="float64",
                    help="Clarke's arithmetic: float64 (default; auto_LiRPA's widths), or the network's float32")
    ap.add_argument("--device", default="cpu",
                    help="where Clarke computes: cpu (default), cuda, cuda:N (auto_LiRPA stays on the CPU: use "
                         "--no-peer for a GPU run)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's allocator as it is (default: verify.tune_allocator(), as the clarke command "
                         "does; both tools run in this process, so both get the same setting)")
    ap.add_argument("--no-peer", action="store_true", help="do not run auto_LiRPA (Clarke's columns only)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = tuple(m.strip().lower() for m in args.methods.split(",") if m.strip())
    bad = [m for m in models if m not in MODELS]
    bad_methods = [m for m in methods if m not in METHODS]
    if args.inputs < 1 or args.iterations < 0 or args.threads < 0 or bad or bad_methods or not models or not methods:
        ap.error(f"unknown model(s) {', '.join(bad)}" if bad else
                 f"unknown method(s) {', '.join(bad_methods)}" if bad_methods else
                 "--inputs must be >= 1, --iterations and --threads >= 0, --models and --methods non-empty")
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = "glibc default" if args.default_allocator else (
        "tuned (verify.tune_allocator)" if tune_allocator() else "not tuned (not glibc, or GLIBC_TUNABLES sets it)")

    lirpa, reason = (None, "skipped (--no-peer)") if args.no_peer else load_auto_lirpa()
    if lirpa is not None:
        logging.getLogger("auto_LiRPA").setLevel(logging.WARNING)
        peer_line = (f"auto_LiRPA {getattr(lirpa, '__version__', '?')} from "
                     f"{Path(lirpa.__file__).resolve().parent.parent}: measured in this process")
    else:
        peer_line = f"auto_LiRPA not available: {reason}"
    print(peer_line)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.inputs} input(s) per row, "
          f"alpha-CROWN {args.iterations} iterations at lr {LR}, Clarke precision {args.precision} on {args.device}, "
          f"allocator {allocator}",
          flush=True)
    t0 = time.perf_counter()
    rows = run(args.inputs, args.iterations, models, lirpa, args.precision, args.device, methods)
    print()
    print(report(rows, lirpa is not None))
    print()
    for name in models:
        for eps in EPS:
            sel = {r["method"]: r for r in rows if r["model"] == name and r["eps"] == f"{eps}/255"}
            for alpha in ("alpha-crown", "alpha-crown+interm"):
                if alpha not in sel or "crown" not in sel:
                    continue
                a, c = sel[alpha], sel["crown"]
                line = (f"{name} eps={eps}/255: {alpha} width / crown width = Clarke "
                        f"{a['clarke_mean_width'] / c['clarke_mean_width']:.4f}")
                if lirpa is not None:
                    line += f", auto_LiRPA {a['auto_lirpa_mean_width'] / c['auto_lirpa_mean_width']:.4f}"
                print(line)
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        peer_info = ({"available": True, "version": getattr(lirpa, "__version__", None)} if lirpa is not None
                     else {"available": False, "reason": reason})
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "inputs": args.inputs,
                          "precision": args.precision, "allocator": allocator,
                          "iterations": args.iterations, "lr": LR, "auto_lirpa": peer_info, "rows": rows}))


if __name__ == "__main__":
    main()
