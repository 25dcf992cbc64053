r"""The cost of one training step per method, Clarke beside plain torch and auto_LiRPA 0.7.1, measured in one run.

    python benchmarks/training_steps.py [--model cnn-small] [--repeats 7] [--no-peer] [--json]

One optimiser step (loss, backward, Adam) on ``--model`` (1x28x28, batch 128, eps 0.1, one thread, seed 0), the
median of ``--repeats`` steps after a warm-up:

- Clarke (``robust_train.methods``, kappa 0.5: the clean and the bound term are both on; beta 1: the CROWN pass is
  on): standard, IBP, CROWN-IBP (K-1 margin rows), CROWN-IBP with loss fusion (one row), PGD-10 AT, DONE.
- plain torch: forward, cross-entropy, backward, Adam on the bare module: the cheapest standard step; and the least
  an IBP step can cost, textbook centre / radius IBP in plain torch with the same kappa-0.5 loss (no engine).
- auto_LiRPA (when importable: ``pip install -e ".[bench]"`` and ``../shared/peers/auto_LiRPA``, see
  ``bounds_speed.py``), ``conv_mode="patches"``: IBP and CROWN-IBP (``compute_bounds(IBP=True, C=margins,
  method=None | "backward", bound_upper=False)``) with the same kappa-0.5 loss, and CROWN-IBP with its loss
  fusion (``bound_opts={"loss_fusion": True}`` on a module returning ``sum_k exp(z_k - z_y)``; the label enters
  as a one-hot input because this torch exports ``gather`` as OneHot, which auto_LiRPA does not take).

Ratios are to the plain-torch step and to Clarke's standard step, both of this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

STEP_METHODS = ("standard", "ibp", "crown-ibp", "crown-ibp+fusion", "pgd-at", "done")
SHAPE = (1, 28, 28)


def _median_ms(step: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:])


def _data(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *SHAPE), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return x, y, gen


def clarke_steps(model_name: str, repeats: int, eps: float, batch: int) -> dict[str, float]:
    from models.zoo import build_model
    from robust_train.config import TrainConfig
    from robust_train.distributed import Collective
    from robust_train.methods import Batch, build_method

    x, y, gen = _data(batch)
    ms: dict[str, float] = {}
    for name in STEP_METHODS:
        method, fusion = name.removesuffix("+fusion"), name.endswith("+fusion")
        cfg = TrainConfig(data="digits", model=model_name, method=method, eps=eps, epochs=1, loss_fusion=fusion)
        model = build_model(model_name, SHAPE, 10, seed=0)
        step = build_method(cfg, model, SHAPE, Collective())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def noise(kind: str) -> torch.Tensor:
            return (2 * torch.rand(x.shape, generator=gen) - 1) * eps if kind == "uniform" \
                else 0.001 * torch.randn(x.shape, generator=gen)

        b = Batch(x, y, batch, eps, 0.5, 1.0, 0.5, noise)  # kappa 0.5, beta 1: both bound terms on

        def one(step=step, opt=opt, b=b) -> None:
            res = step(b)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()

        ms[name] = _median_ms(one, repeats)
    return ms


def plain_step(model_name: str, repeats: int, batch: int) -> float:
    from models.zoo import build_model
    x, y, _ = _data(batch)
    model = build_model(model_name, SHAPE, 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def one() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_ms(one, repeats)


def _interval_logits(model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook IBP in centre / radius form (Gowal et al., 2018) through Conv2d / Linear / ReLU / Flatten layers."""
    c, r = (hi + lo) / 2, (hi - lo) / 2
    for m in model:
        if isinstance(m, nn.Conv2d):
            c = F.conv2d(c, m.weight, m.bias, m.stride, m.padding)
            r = F.conv2d(r, m.weight.abs(), None, m.stride, m.padding)
        elif isinstance(m, nn.Linear):
            c, r = F.linear(c, m.weight, m.bias), F.linear(r, m.weight.abs())
        elif isinstance(m, nn.ReLU):
            low, high = (c - r).relu(), (c + r).relu()
            c, r = (high + low) / 2, (high - low) / 2
        elif isinstance(m, nn.Flatten):
            c, r = c.flatten(1), r.flatten(1)
        else:
            raise TypeError(f"no IBP rule here for {type(m).__name__}")
    return c - r, c + r


def minimal_ibp_step(model_name: str, repeats: int, eps: float, batch: int) -> float:
    """The least an IBP step costs: clean and interval passes in plain torch, no rounding allowances, no engine;
    the same kappa-0.5 loss (worst-case logits: the true class's lower end, the others' upper ends)."""
    from models.zoo import build_model
    x, y, _ = _data(batch)
    model = build_model(model_name, SHAPE, 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    onehot = F.one_hot(y, 10).bool()

    def one() -> None:
        z_lo, z_hi = _interval_logits(model, lo, hi)
        worst = torch.where(onehot, z_lo, z_hi)
        loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(worst, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_ms(one, repeats)


class _ExpSumLoss(nn.Module):
    """``sum_k exp(z_k - z_y)`` (its log is the cross-entropy): what auto_LiRPA's loss fusion bounds above."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return torch.exp(z - (z * onehot).sum(-1, keepdim=True)).sum(-1, keepdim=True)


def peer_steps(lirpa, model_name: str, repeats: int, eps: float, batch: int) -> dict[str, float]:
    from models.zoo import build_model
    from robust_train.certified import margin_spec, worst_case_logits
    x, y, _ = _data(batch)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    C = margin_spec(y, 10)
    onehot = F.one_hot(y, 10).float()
    opts = {"conv_mode": "patches"}
    ms: dict[str, float] = {}
    for name in ("ibp", "crown-ibp", "crown-ibp+fusion"):
        model = build_model(model_name, SHAPE, 10, seed=0)
        fusion = name.endswith("+fusion")
        if fusion:
            bounded = lirpa.BoundedModule(_ExpSumLoss(model), (torch.zeros(1, *SHAPE), torch.zeros(1, 10)),
                                          bound_opts={**opts, "loss_fusion": True})
        else:
            bounded = lirpa.BoundedModule(model, torch.zeros(1, *SHAPE), bound_opts=opts)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def one(bounded=bounded, opt=opt, model=model, fusion=fusion, name=name) -> None:
            xt = lirpa.BoundedTensor(x, lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo, x_U=hi))
            clean = F.cross_entropy(model(x), y)
            method = None if name == "ibp" else "backward"
            if fusion:
                _, ub = bounded.compute_bounds(x=(xt, onehot), IBP=True, C=None, method=method, bound_lower=False)
                robust = torch.log(ub).mean()
            else:
                lb, _ = bounded.compute_bounds(x=(xt,), IBP=True, C=C, method=method, bound_upper=False)
                robust = F.cross_entropy(worst_case_logits(lb, y), y)
            loss = 0.5 * clean + 0.5 * robust
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ms[name] = _median_ms(one, repeats)
    return ms


def step_times(model_name: str = "cnn-small", repeats: int = 7, eps: float = 0.1, batch: int = 128,
               peer: bool = True) -> dict:
    """Median milliseconds of one optimiser step per (tool, method), with the ratios of the module docstring."""
    torch.set_num_threads(1)
    plain = plain_step(model_name, repeats, batch)
    clarke = clarke_steps(model_name, repeats, eps, batch)
    rows = [{"tool": "torch", "method": "standard", "ms": plain},
            {"tool": "torch", "method": "ibp (minimal)", "ms": minimal_ibp_step(model_name, repeats, eps, batch)}]
    rows += [{"tool": "clarke", "method": m, "ms": v} for m, v in clarke.items()]
    note = ""
    if peer:
        from bounds_speed import load_auto_lirpa
        lirpa, note = load_auto_lirpa()
        if lirpa is not None:
            rows += [{"tool": "auto_LiRPA", "method": m, "ms": v}
                     for m, v in peer_steps(lirpa, model_name, repeats, eps, batch).items()]
    for r in rows:
        r["x_plain"] = r["ms"] / plain
        r["x_clarke_standard"] = r["ms"] / clarke["standard"]
    return {"model": model_name, "batch": batch, "threads": 1, "eps": eps, "rows": rows, "peer_note": note}


def print_steps(steps: dict) -> None:
    print(f"\nOne training step: {steps['model']}, 1x28x28, batch {steps['batch']}, eps {steps['eps']}, "
          f"{steps['threads']} thread (median ms, measured in this run; ratios to this run's plain-torch step and "
          "to Clarke's standard step)")
    print(f"{'tool':>10} {'method':>17} {'ms':>9} {'x plain':>8} {'x Clarke std':>13}")
    for r in steps["rows"]:
        print(f"{r['tool']:>10} {r['method']:>17} {r['ms']:9.1f} {r['x_plain']:7.2f}x {r['x_clarke_standard']:12.2f}x")
    if steps.get("peer_note"):
        print(f"auto_LiRPA not measured: {steps['peer_note']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="cnn-small", help="zoo model (models.zoo) on 1x28x28")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per row (after one warm-up step)")
    p.add_argument("--no-peer", action="store_true", help="skip auto_LiRPA")
    p.add_argument("--json", action="store_true", help="also print the table as one JSON object on the last line")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    steps = step_times(args.model, args.repeats, peer=not args.no_peer)
    print_steps(steps)
    if args.json:
        print(json.dumps(steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
