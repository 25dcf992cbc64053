r"""Soundness campaign: random networks of the newer operators through the bound engine and through ``clarke verify``,
checked against points where the property's value is known. Zero tolerance; any finding is a bug.

    python benchmarks/soundness_campaign.py [--bounds N] [--pipeline M] [--first-seed S] [--timeout T] [--json]

``--bounds N`` networks (default 500): attention blocks (LayerNorm, query/key/value maps, the product of two
variables, softmax over the keys, residuals, a GELU MLP), chains of element-wise ops (sigmoid, tanh, sin, cos, abs,
square, leaky ReLU, ReLU6, ELU, SiLU, GELU, exp, log, sqrt, reciprocal, softmax, log-softmax, hardtanh, ReLU), each
optionally combined with a second branch by a product, max, min or sum, softmax over wide axes (33-48 entries, the
non-pairwise form), and features gathered at both ends of random "lines" (repeated indices, as ml4acopf's buses)
with their products and the sine / cosine of their differences. Weights are scaled up (more unstable neurons); boxes
have radius 1e-3 to 3. IBP, CROWN, alpha-CROWN and (every 3rd network) alpha-CROWN with optimised intermediate
slopes must contain ``f(x)`` (the model evaluated in float64) at 1024 uniform points, the box's corners (all up to 6
inputs) and PGD points pushed towards each bound (the test suite's ``tests.helpers.box_corners`` /
``extreme_points``). CROWN at ``precision="model"`` (``crown@model``: float32 arithmetic, float32 allowances) must
also contain the network's own float32 evaluation at those points, batched and one point at a time
(float64-precision bounds claim the real value and its float64 evaluation only: a float32 evaluation can leave them
by an ulp, as the README says).

``--pipeline M`` instances (default 150): a random network (ReLU MLP, attention block, element-wise chain, a CNN
with BatchNorm and max / average pooling, or the gathered "lines")
exported to ONNX, and a VNNLIB property ``y_0 <= c`` on a box. A strong attack (256 starts x 60 signed steps) finds
a low point; onnxruntime evaluates it (the value ``v`` the competition's rules use). With ``c = v + 1e-3 (|v| + 1)``
or ``c = v + 1e-6 (|v| + 1)`` a counterexample is known, so ``unsat`` is a bug; with ``c = v - 1e-3 (|v| + 1)`` the
truth is open, and an ``unsat`` answer is attacked again (2048 starts x 100 steps): a point at or below ``c`` is a
bug. ``sat`` answers carry counterexamples the pipeline re-checks with onnxruntime itself.

Prints counts per family and method (bounds) or family, kind and answer (pipeline), and every finding; exits 1 when
there is one. A progress line at every tenth of each stage, and each finding as it is found, go to stderr (a long
run stopped early still shows what it found). Networks the engine refuses (an op outside its domain, e.g. exp
overflowing on the box) are counted, not failures. ``--json``: the counts as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EPS_BOUNDS = (1e-3, 0.05, 0.3, 1.0, 3.0)
EPS_PIPELINE = (0.01, 0.05, 0.2, 0.5)
UNARY = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "sin": torch.sin, "cos": torch.cos, "abs": torch.abs,
    "square": lambda x: x * x, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "relu6": F.relu6, "elu": F.elu,
    "silu": F.silu, "gelu": F.gelu, "exp": lambda x: torch.exp(torch.clamp(x, -5, 3)),
    "log": lambda x: torch.log(torch.sigmoid(x) + 0.1), "sqrt": lambda x: torch.sqrt(x * x + 0.5),
    "reciprocal": lambda x: 1.0 / (x * x + 0.5), "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1), "hardtanh": F.hardtanh, "relu": torch.relu,
}
BINARY = ("none", "mul", "max", "min", "add")


class Attention(nn.Module):
    """One transformer block on ``T`` tokens of width ``d`` and a linear head."""

    def __init__(self, tokens: int, width: int, heads_width: int, out: int):
        super().__init__()
        self.tokens, self.width, self.scale = tokens, width, 1 / math.sqrt(heads_width)
        self.norm = nn.LayerNorm(width)
        self.q, self.k, self.v = (nn.Linear(width, heads_width) for _ in range(3))
        self.o = nn.Linear(heads_width, width)
        self.f1, self.f2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(tokens * width, out)

    def forward(self, x):
        x = x.reshape(x.shape[0], self.tokens, self.width)
        y = self.norm(x)
        attn = torch.softmax(torch.matmul(self.q(y), self.k(y).transpose(1, 2)) * self.scale, dim=-1)
        x = x + self.o(torch.matmul(attn, self.v(y)))
        x = x + self.f2(F.gelu(self.f1(x)))
        return self.head(x.flatten(1))


class Chain(nn.Module):
    """Linear maps, each followed by an element-wise op and optionally combined with a second branch."""

    def __init__(self, width: int, widths: list[int], ops: list[str], combine: list[str]):
        super().__init__()
        self.ops, self.combine = ops, combine
        sizes = [width, *widths]
        self.main = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.side = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(sizes[-1], 3)

    def forward(self, x):
        for main, side, op, how in zip(self.main, self.side, self.ops, self.combine, strict=True):
            a = UNARY[op](main(x))
            if how == "mul":
                a = a * torch.tanh(side(x))
            elif how == "max":
                a = torch.maximum(a, side(x))
            elif how == "min":
                a = torch.minimum(a, side(x))
            elif how == "add":
                a = a + torch.sigmoid(side(x))
            x = a
        return self.out(x)


class WideSoftmax(nn.Module):
    """Softmax (or log-softmax) over 33-48 scores: the per-axis form, not the pairwise one."""

    def __init__(self, width: int, scores: int, log: bool):
        super().__init__()
        self.a, self.b, self.log = nn.Linear(width, scores), nn.Linear(scores, 3), log

    def forward(self, x):
        z = self.a(x)
        return self.b(5 * (torch.log_softmax(z, dim=-1) if self.log else torch.softmax(z, dim=-1)))


class GatherMix(nn.Module):
    """Features gathered at both ends of random "lines" (indices repeat, as ml4acopf's buses do), their products and
    the sine / cosine of their differences, and a linear head."""

    def __init__(self, width: int, feats: int, lines: int, g: torch.Generator):
        super().__init__()
        self.a, self.head = nn.Linear(width, feats), nn.Linear(3 * lines, 3)
        self.register_buffer("f", torch.randint(0, feats, (lines,), generator=g))
        self.register_buffer("t", torch.randint(0, feats, (lines,), generator=g))

    def forward(self, x):
        z = torch.tanh(self.a(x))
        zf, zt = z[:, self.f], z[:, self.t]
        return self.head(torch.cat([zf * zt, torch.sin(zf - zt), torch.cos(zf - zt)], dim=1))


def relu_mlp(width: int, hidden: list[int], out: int) -> nn.Module:
    sizes = [width, *hidden, out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def random_network(seed: int, family: str) -> tuple[nn.Module, tuple[int, ...], str]:
    """``(module, per-sample input shape, description)``: seeded, weights scaled by 1.5 (wide softmax: 0.5-4)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    scale = 1.5
    if family == "attention":
        t, d = ri(2, 4), ri(2, 5)
        net, shape, desc = Attention(t, d, ri(2, 4), ri(1, 3)), (t * d,), f"attention T={t} d={d}"
    elif family == "chain":
        n, d = ri(1, 3), ri(1, 5)
        ops = [list(UNARY)[ri(0, len(UNARY) - 1)] for _ in range(n)]
        combine = [BINARY[ri(0, len(BINARY) - 1)] for _ in range(n)]
        net, shape, desc = Chain(d, [ri(2, 6) for _ in range(n)], ops, combine), (d,), f"chain {ops} {combine}"
    elif family == "wide_softmax":
        d, w, log = ri(1, 5), ri(33, 48), bool(ri(0, 1))
        net, shape, desc = WideSoftmax(d, w, log), (d,), f"wide {'log-' if log else ''}softmax over {w}"
        scale = (0.5, 1.5, 4.0)[ri(0, 2)]
    elif family == "cnn":
        side, ch = ri(4, 7), ri(2, 4)
        pool = (nn.Identity(), nn.MaxPool2d(2, 1), nn.AvgPool2d(2, 1))[ri(0, 2)]
        bn = nn.BatchNorm2d(ch)
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
        flat = ch * (side if isinstance(pool, nn.Identity) else side - 1) ** 2
        net = nn.Sequential(nn.Conv2d(1, ch, 3, padding=1), bn, nn.ReLU(), pool, nn.Flatten(), nn.Linear(flat, 10),
                            nn.ReLU(), nn.Linear(10, 3))
        shape, desc, scale = (1, side, side), f"cnn {side}x{side}, {ch} channels, {type(pool).__name__}", 1.0
    elif family == "gather":
        d, feats = ri(1, 5), ri(2, 5)
        lines = ri(feats, 3 * feats)
        net, shape, desc = GatherMix(d, feats, lines, g), (d,), f"gather {feats} features at {lines} line ends"
    elif family == "relu":
        d = ri(2, 8)
        hidden = [ri(8, 24) for _ in range(ri(1, 3))]
        net, shape, desc = relu_mlp(d, hidden, ri(2, 4)), (d,), f"relu MLP {d}-{'-'.join(map(str, hidden))}"
        scale = 1.0
    else:
        raise ValueError(f"unknown family {family!r}")
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
            p.requires_grad_(False)
    return net.eval(), shape, desc


# ------------------------------------------------------------------------------------------------ bounds


def worst_violation(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                    float32: bool = False) -> float:
    """The largest amount by which ``f`` (float64) leaves ``[lower, upper]`` at uniform points, corners and points
    pushed towards each bound of the box ``[lo, hi]`` (per-sample shape); <= 0: none. ``float32``: ``f`` evaluated
    in the network's own float32 counts too, in a batch and one point at a time (torch's two kernels; what bounds
    computed at ``precision="model"`` claim)."""
    from tests.helpers import box_corners, extreme_points

    flat_lo, flat_hi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = torch.cat([flat_lo + torch.rand(1024, lo.numel()) * (flat_hi - flat_lo), box_corners(lo, hi),
                     extreme_points(net, lo, hi, lower.numel())])
    with torch.no_grad():
        ys = [copy.deepcopy(net).double()(pts.reshape(-1, *lo.shape).double()).reshape(pts.shape[0], -1)]
        if float32:
            ys.append(net(pts.reshape(-1, *lo.shape)).reshape(pts.shape[0], -1).double())
            ys.append(torch.cat([net(p.reshape(1, *lo.shape)) for p in pts]).reshape(pts.shape[0], -1).double())
    return max(float(torch.maximum(lower.double() - y, y - upper.double()).max()) for y in ys)


def _report(findings: list[str], message: str) -> None:
    """Record a finding and print it at once (stderr), so a run stopped early still shows what it found."""
    findings.append(message)
    print("FINDING", message, file=sys.stderr, flush=True)


def _progress(stage: str, done: int, total: int, findings: list[str], t0: float) -> None:
    """A line on stderr at every tenth of a stage (the long runs take tens of minutes)."""
    if total and (done == total or done % max(1, total // 10) == 0):
        print(f"soundness campaign: {stage} {done}/{total}, findings {len(findings)}, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def _cases(first: int, count: int, families: tuple[str, ...], salt: int, eps_grid, stage: str, findings: list[str]):
    """``(seed, family, net, shape, desc, generator, eps)`` for seeds ``first .. first + count - 1``: the family by
    the seed, its random network, and the case's generator (seeded ``salt + seed``) after drawing ``eps`` from
    ``eps_grid``; with the stage's progress lines."""
    t0 = time.perf_counter()
    for seed in range(first, first + count):
        _progress(stage, seed - first, count, findings, t0)
        family = families[seed % len(families)]
        net, shape, desc = random_network(seed, family)
        g = torch.Generator().manual_seed(salt + seed)
        eps = eps_grid[int(torch.randint(0, len(eps_grid), (1,), generator=g))]
        yield seed, family, net, shape, desc, g, eps
    _progress(stage, count, count, findings, t0)


def bounds_campaign(first: int, count: int, findings: list[str]) -> Counter:
    from verify import bound, from_torch
    from verify.errors import ClarkeError

    counts: Counter = Counter()
    families = ("attention", "chain", "chain", "wide_softmax", "gather")
    for seed, family, net, shape, desc, g, eps in _cases(first, count, families, 10_000, EPS_BOUNDS,
                                                          "networks bounded", findings):
        x0 = torch.rand(1, *shape, generator=g) * 2 - 1
        lo, hi = x0 - eps, x0 + eps
        try:
            graph = from_torch(net, shape)
        except ClarkeError as e:
            counts[f"{family}/refused by the frontend ({type(e).__name__})"] += 1
            continue
        for method in ("ibp", "crown", "alpha-crown", "alpha-crown+intermediate", "crown@model"):
            if method.endswith("intermediate") and seed % 3:
                continue
            try:
                low, up = bound(graph, lo, hi, method=method.split("+")[0].split("@")[0],
                                optimize_intermediate=method.endswith("intermediate"),
                                precision="model" if method.endswith("@model") else "float64")
            except ClarkeError as e:  # refused: e.g. exp overflows somewhere on the box
                counts[f"{family}/{method}/refused ({type(e).__name__})"] += 1
                continue
            low, up = low.detach()[0], up.detach()[0]
            v = worst_violation(net, lo[0], hi[0], low, up, float32=method.endswith("@model"))
            counts[f"{family}/{method}/{'VIOLATION' if v > 0 else 'ok'}"] += 1
            if v > 0:
                _report(findings, f"bounds seed {seed} {desc} eps={eps} {method}: f leaves the bounds by {v:.3g}")
    return counts


# ------------------------------------------------------------------------------------------------ pipeline


def attack_minimum(net: nn.Module, shape, lo: torch.Tensor, hi: torch.Tensor, starts: int = 256, steps: int = 60
                   ) -> torch.Tensor:
    """The lowest point of ``y_0`` found by signed gradient steps from ``starts`` random points."""
    x = (lo + torch.rand(starts, lo.numel()) * (hi - lo)).requires_grad_(True)
    step = (hi - lo) / 10
    best, best_x = math.inf, lo.clone()
    for _ in range(steps):
        y = net(x.reshape(starts, *shape))[:, 0]
        i = int(y.argmin())
        if float(y[i]) < best:
            best, best_x = float(y[i]), x[i].detach().clone()
        (grad,) = torch.autograd.grad(y.sum(), x)
        with torch.no_grad():
            x -= step * grad.sign()
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            step *= 0.93
    return best_x


def _write_vnnlib(path: Path, lo: torch.Tensor, hi: torch.Tensor, c: float, outputs: int) -> None:
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    for i in range(lo.numel()):
        lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
    lines.append(f"(assert (<= Y_0 {c!r}))")
    path.write_text("\n".join(lines) + "\n")


def pipeline_campaign(first: int, count: int, timeout: float, findings: list[str]) -> Counter:
    from verify.counterexample import run_onnxruntime
    from verify.pipeline import verify_instance

    counts: Counter = Counter()
    families = ("relu", "attention", "chain", "cnn", "gather")
    with tempfile.TemporaryDirectory(prefix="clarke-soundness-") as tmp:
        for seed, family, net, shape, desc, g, eps in _cases(first, count, families, 20_000, EPS_PIPELINE,
                                                              "instances verified", findings):
            x0 = torch.rand(int(np.prod(shape)), generator=g) * 2 - 1
            lo, hi = x0 - eps, x0 + eps
            onnx_path, spec = Path(tmp) / f"net{seed}.onnx", Path(tmp) / f"prop{seed}.vnnlib"
            torch.onnx.export(net, torch.zeros(1, *shape), str(onnx_path), input_names=["x"], output_names=["y"],
                              dynamo=False)

            v = float(run_onnxruntime(onnx_path, attack_minimum(net, shape, lo, hi).numpy())[0])  # float32, as judged
            kind = ("witnessed", "witnessed-tight", "open")[int(torch.randint(0, 3, (1,), generator=g))]
            margin = {"witnessed": 1e-3, "witnessed-tight": 1e-6, "open": -1e-3}[kind]
            c = float(np.float32(v + margin * (abs(v) + 1)))
            if kind != "open" and not v <= c:  # the float32 constant rounded below the witness: skip
                continue
            _write_vnnlib(spec, lo, hi, c, int(net(torch.zeros(1, *shape)).numel()))
            try:
                status = verify_instance(onnx_path, spec, timeout=timeout, seed=seed).status
            except Exception as e:  # noqa: BLE001 (a crash is a finding too, reported with the rest)
                status = f"error ({type(e).__name__})"
                _report(findings, f"pipeline seed {seed} {desc}: {type(e).__name__}: {e}")
            bad = kind != "open" and status == "unsat"
            if kind == "open" and status == "unsat":
                again = attack_minimum(net, shape, lo, hi, starts=2048, steps=100)
                v2 = float(run_onnxruntime(onnx_path, again.numpy())[0])
                bad = v2 <= c
            counts[f"{family}/{kind}/{'BUG ' if bad else ''}{status}"] += 1
            if bad:
                _report(findings, f"pipeline seed {seed} {desc} eps={eps} {kind}: unsat, but y_0 <= {c!r} is reached")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bounds", type=int, default=500, help="random networks for the bound check (default %(default)s)")
    p.add_argument("--pipeline", type=int, default=150,
                   help="random instances through clarke verify (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first network (default %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per instance (default %(default)s)")
    p.add_argument("--json", action="store_true", help="the counts as one JSON object on the last line")
    args = p.parse_args(argv)
    if args.bounds < 0 or args.pipeline < 0 or not (math.isfinite(args.timeout) and args.timeout > 0):
        p.error("--bounds / --pipeline must be >= 0 and --timeout a positive number")
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")  # the legacy ONNX exporter's deprecation notice, once per network
    findings: list[str] = []
    t0 = time.perf_counter()
    counts = bounds_campaign(args.first_seed, args.bounds, findings)
    t_bounds = time.perf_counter() - t0
    counts += pipeline_campaign(args.first_seed, args.pipeline, args.timeout, findings)
    for key in sorted(counts):
        print(f"{counts[key]:6d}  {key}")
    print(f"{args.bounds} networks bounded in {t_bounds:.0f} s, {args.pipeline} instances verified in "
          f"{time.perf_counter() - t0 - t_bounds:.0f} s; findings: {len(findings)}")
    for f in findings:
        print("FINDING", f)
    if args.json:
        print(json.dumps({"counts": dict(counts), "findings": findings}))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
