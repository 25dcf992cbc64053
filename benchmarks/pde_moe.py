"""PI-SC vs PI-HC vs PI-HC-MoE on 1D diffusion-sorption (CPU-sized), timing sweep and gloo wall times.

    python benchmarks/pde_moe.py [--quick] [--json] [--sections accuracy,timing,distributed]
        [--points 100,1000,10000] [--experts 1,2,4,8,4i] [--grid 41x256] [--device cpu|cuda|auto]

One table: relative L2 (%) on held-out reference solutions over the whole horizon and on the extrapolated frames
t > 0.8 T (trained on t <= 0.8 T); time per training step (forward + backward) and per inference for
K in {1, 2, 4, 8} experts and m in {1e2, 1e3, 1e4} collocation points in total (m / K per expert, so every
configuration fits the same number of PDE rows; K = 1 is PI-HC); wall time of one training step with 1, 2 and 4
gloo processes (data and expert placements). ``--json`` prints the same table as one JSON object on the last line.

Accuracy, measured 2026-12-07 (2 CPU cores, one torch thread, float64 solves; ``--sections accuracy --seeds 5``,
two processes side by side). Diffusion-sorption: 21 x 64 grid, N = 8, m = 1000 (per expert, capped at the 336
points of a block), batch 4, 1200 steps, loss-spike guard 3 (the default), 16 test ICs per seed; test relative L2 %
per seed, mean, median; last column: share of the squared error in the block x in [0.25, 0.5):

    PI-SC                          195.5 237.7 163.9 165.2 167.3    mean 185.9  median 167.3   block 2: 0.13
    PI-HC                           10.1   8.8   7.8   8.9   9.7    mean   9.1  median   8.9   block 2: 0.09
    PI-HC-MoE (paper)               70.1  82.5  67.5  91.9  76.8    mean  77.8  median  76.8   block 2: 0.21
    PI-HC-MoE expert-loss           33.3  30.3  30.5 183.6  36.4    mean  62.8  median  33.3   block 2: 0.46
    PI-HC-MoE+interface+stitched     8.8  14.7   9.2  10.6   8.5    mean  10.4  median   9.2   block 2: 0.13

So the paper's ordering is **not** reproduced here: PI-HC beats the paper's MoE by 8x; only experts coupled by
interface rows (not in the paper) come close to PI-HC. Why (``evaluate``'s per-block errors, ``errors.png``):

- The front stops at the first interface. Expert 2 (x in [0.25, 0.5)) solves its own PDE rows plus the global
  IC/BC rows; the undisturbed state u = u0 satisfies its PDE rows exactly, and the Dirichlet rows at x = 0 can be
  met by basis functions that vanish inside its block, so nothing in its problem carries the front in. With the
  expert loss its block is at 63-71 % relative L2 (blocks 3, 4: under 31 %) and holds 46-63 % of the error (seed 3,
  whose expert 1 diverged, aside): its prediction stays at u0 for all t.
- The paper's stitched loss (F(u) of the stitched field by finite differences) then makes it worse: the jump at
  x = 0.25 is cheapest to remove by bending expert 1's front down to expert 2's u0, so block 1's error grows from
  ~20 % to 65-95 %, and 12 % of its LM solves end unconverged (PI-HC 8 %, expert loss 5 %).
- Not too few points: every expert uses all 336 points of its block. Not the loss alone: both losses fail.
- Not the small grid or budget: closer to the paper (``--problem diffusion-sorption-41x256 --steps 2000``: N = 16,
  m = 1000, ~5 min per run on one core; 5 seeds) PI-SC 88.7 125.6 277.4 283.0 121.1 (mean 179.1, median 125.6),
  PI-HC 23.8 59.0 27.1 49.8 36.5 (39.2, 36.5), the paper's MoE 42.5 40.4 53.2 43.1 42.6 (44.4, 42.6) with block 2
  again at 63-86 % relative L2 and a third of the error. The MoE is steadier (std 5 vs 15) and lower on 2 of 5
  paired seeds, but its mean and median stay above PI-HC's; at this size PI-HC's front also stalls on some seeds
  (block 2 at 113-125 % on seeds 1 and 3). And more steps make the paper's MoE worse, not better on the small grid:
  seeds 0 / 1 at 400 steps 33.0 / 41.5 %, at 1200 steps 70.1 / 82.5 %.
- Row weighting. Our PDE rows are in units of the horizon (O(1), like the relative IC rows); the paper writes them
  in seconds (``--residual-units physical``: 500x smaller), so its solves are dominated by the global IC/BC rows,
  which tie every expert to the same fit (runs without the guard). That removes the artefact (400 steps, expert
  loss, seed 0: block 2 relative L2 42 % instead of 68 %; seeds 0-4: MoE 24.2 22.9 34.3 32.1 36.1 vs PI-HC 21.0
  23.6 34.3 35.1 41.0, MoE lower on 4 of 5, mean 29.9 vs 31.0) but trains far worse and unstably: at 1200 steps
  PI-HC 40.6 131.4 44.4 43.5 73.6 and the paper's MoE 39.3 19.7 50.2 41.3 102.5. Intermediate units (PDE rows
  x 1/5, 1/20, 1/100 of ours; 400 steps, seeds 0-2, expert loss): MoE 30-32 / 26-30 / 70-95 %, PI-HC 8-11 / 16-31 /
  53-94 %: the MoE is never below PI-HC. With the guard, physical units, 1200 steps, 5 seeds
  (``--residual-units physical``): PI-HC 38.1 95.2 44.4 64.6 55.0 (mean 59.5, median 55.0), the paper's MoE 39.3
  21.0 50.2 52.8 92.5 (mean 51.1, median 50.2): lower mean and median, but lower on only 2 of the 5 paired seeds,
  within the spread, and 6x worse than PI-HC in our units. The paper's ordering at the paper's accuracy is not
  reached here.

At the paper's budget (``--problem diffusion-sorption-41x256 --steps 4000 --eval-every 500``: N = 16, m = 1000, the
learning rate halved every 800 steps down to 1e-4 as in the paper; 11-20 min per run on one core; measured
2026-12-07, seeds 0-4), test relative L2 % per seed, mean, median:

    PI-HC                           8.4  51.9  12.4  44.3  79.1    mean 39.2  median 44.3
    PI-HC-MoE (paper)              48.0  47.9  54.5  58.1  57.0    mean 53.1  median 54.5
    PI-HC-MoE+interface+stitched    7.0  62.5  69.9   7.3  24.2    mean 34.2  median 24.2

Learning curves (``--eval-every``: test % after 500, 1000, ..., 4000 steps): PI-HC seed 0 40 32 18 12 9.2 8.0 8.4
8.4 and seed 2 49 36 24 16 14 13 13 12 (the front crosses x = 0.25 between steps 1000 and 2500), seeds 1 / 3 / 4
54 -> 52, 53 -> 44, 46 -> 79 (it never does; seed 4 drifts away); the paper's MoE 46 42 44 46 48 47 48 48, 37 71 40 64
48 48 48 48, 56 40 63 65 63 62 56 54, 40 41 42 43 47 46 50 58, 40 40 44 45 45 45 45 57 (never below 37 %, no trend
down after step 500); the interface variant 39 8.5 6.7 6.5 7.5 6.9 6.9 7.0, 76 86 70 66 65 63 63 63, 104 78 69 65 64 68
71 70, 76 8.5 7.5 6.5 6.9 6.9 7.0 7.3 and 42 12 7.3 64 67 70 63 24 (seed 4 reached 7.3 % and was thrown out of that
basin between steps 1500 and 2000, the only seed of the three models to leave a good basin). So at the
paper's step count PI-HC reaches the paper's accuracy on 2 of 5 seeds (8.4 and 12.4 % against its 7.55 +- 8.10) and
the front stalls on the other 3 (block 2 at 103-143 %: the same stall as the MoE's, with no interface at all); the
paper's MoE stalls on every seed and more steps do not help. The stall is a low-residual basin of the hard-constrained
problem itself (the undisturbed state satisfies the PDE rows downstream of the front); PI-HC finds the other basin
on some seeds, the experts' independent solves on none. LM solves that ended unconverged during training: PI-HC
13445 of 80000 (5 seeds x 4000 steps x 4 samples), the paper's MoE 7697 of 320000 (x 4 experts), interface 12045.

Two more configurations at this budget leave the stall in place (seeds that stalled above, m per solve changed):
the paper's sampling ratios (m = 2000: PI-HC solves 19 % of the grid as the paper's 20k of 103k, each expert 76 % of
its block as the paper's 20k of 25.9k) give PI-HC seed 1 45.5 % (block 2 at 104 %) and the paper's MoE seed 0
48.4 % (block 2 at 73 %); the paper's row units (``--residual-units physical``, seed 0) give PI-HC 85.3 % and the
paper's MoE 85.2 % (block 1 holds 87-90 % of the error), so the ordering seen in physical units at 21 x 64 and 1200
steps (above) does not carry over to the paper's budget.

Training stability. Without the guard, PI-HC seed 4 trained to 10.1 % by step 450, then one loss spike (97 against
a median of 1.3; gradient norm 1e3 before clipping) threw it into another basin: loss back to ~1.5 within 300 steps,
but test error 55-77 % to the end (54.7 %). The earlier 400-step spread (10 % to 104 % over 12 seeds) is mostly
under-training: seed 1 goes 57 -> 34 % (step 400) -> 8.8 % (step 1200) with no spike. With the guard (skip the
update of a step whose loss exceeds 3x the median of the last 50) all five PI-HC seeds train (max / median 1.13).
Dropping the gradient of unconverged solves instead (``drop_nonconverged``) makes seed 4 worse (80 %).

Navier-Stokes at 3000 steps (``--problem navier-stokes --steps 3000 --eval-every 500 --seeds 3``, 1-4 min per run):
PI-SC 32.4 32.9 32.0 (mean 32.5), PI-HC 26.4 27.2 25.0 (26.2), PI-HC-MoE (paper) 26.7 27.3 26.1 (26.7),
+interface+stitched 26.2 27.5 24.8 (26.2); mean learning curves from 500 to 3000 steps: PI-SC 35.9 -> 32.5, PI-HC
28.2 -> 26.2, MoE 31.7 -> 26.7, all flat after 2000 steps: at 16 x 16 x 9 with N = 16 and a width-16 backbone every
model is capacity-bound, and the paper's ordering (MoE < HC < SC) is not reproduced (HC = interface <= MoE < SC).

Navier-Stokes (``--problem navier-stokes``: 16 x 16 x 9 frames, N = 16, 2 x 2 spatial experts, m = 1000 capped at
576 per block, batch 2, 300 steps, 5 seeds): PI-SC 40.2 41.9 39.8 39.9 41.9 (mean 40.7), PI-HC 30.8 33.4 30.8 32.0
34.0 (32.2), PI-HC-MoE (paper) 33.3 34.0 33.8 33.1 34.4 (33.7), expert-loss 33.5 34.0 33.8 33.3 34.7 (33.9),
+interface+stitched 30.5 34.3 30.6 31.8 34.6 (32.4); the error is spread evenly over the four blocks. All far from
the paper (8-18 %) at this budget: a field frozen at w0 scores 44-46 %.

Time per training step at m = 1e4 points, N = 16, 41 x 256 grid, batch 4, mean over 4 steps of the minimum of 3
interleaved repeats (``--sections timing --points 10000``; the previous code in brackets):

    model           backbone   LM solve   layer bwd   step                layer            inference        LM iters
    PI-HC            61 [154]  142 [206]   24 [67]    228 [426]           166 [272]        171 [268]        25.9
    PI-HC-MoE K=4    60 [154]   71 [97]    28 [67]    158 (1.44x) [1.34x]  98 (1.69x)       97 (1.77x)       9.7
    MoE+interface    61 [154]  105 [159]   34 [71]    200 (1.14x) [1.11x] 139 (1.20x)      129 (1.33x)      13.8

What changed (same points, rows, tolerances and backbone for every model): truncated-DFT spectral layers in the FNO
(a full FFT of every 41 x 256 line, 41 a prime length, kept 8 of the modes), feature-major storage of the sampled
features (per-feature passes 3x faster), matrix-vector products that avoid bmm's one-column path and einsum's copies
of L, the IC/BC Gram matrix L^T L formed once per solve instead of in every iteration of every expert, a compacted
LM state that is gathered and scattered only when problems converge, a structured implicit backward that never forms
the (P, m, J, N) feature gradient (physics.implicit.solve_nlls_factored), stencil features with a hand-written
adjoint, and the experts' residuals computed from K fields b . w_k instead of N basis functions.

Why MoE K = 4 is not 2x faster per step here. Per mean LM iteration the LM column costs 5.5 ms (PI-HC, 4 problems
of 1e4 rows) vs 7.3 ms (MoE, 16 problems of 2500 rows; 7.7 vs 10.3 ms before), the loop alone (without the ~12 ms
setup) 5.1 vs 6.1 ms: the flops are equal, the rest is per-problem overhead (16 small Cholesky solves and
matrix-vector products, one Python iteration per iteration of the slowest expert).
Rejected steps are no waste (3 % for PI-HC, none for MoE). So the LM loop is 2.2x faster (131 vs 59 ms), from 2.7x
fewer iterations. What does not shrink with K caps the step: backbone 60 ms, solve setup 12 ms (full-grid
features, gathers, linear rows, first normal equations), layer backward 24-28 ms. With a free MoE loop the step
would be at most 228 / 100 = 2.3x faster; 2x needs the MoE loop <= 14 ms, i.e. <= 1.4 ms per iteration or <= 2.3
iterations. The layer alone is 1.69x faster, inference 1.77x. A looser LM tolerance shrinks the gap (fewer tail
iterations for PI-HC): gtol 1e-6 gives 157 vs 123 ms (1.28x, LM iterations 16.9 vs 5.8), the paper's 1e-4 125 vs
112 ms (1.12x, 7.1 vs 2.0; 2026-11-29, same configuration; the default 1e-8 keeps the IFT gradients exact).
At m = 1e2 and 1e3 the backbone dominates and K = 4 is 0.98x and 0.93x.

Scaling with m on the paper's 101 x 1024 grid (103,424 points; ``--grid 101x1024 --experts 1,4``): step / layer /
inference speedup of K = 4 over PI-HC, LM iterations PI-HC vs MoE:

    m = 1e4     0.93x / 0.80x / 1.01x     21.4 vs 8.1     step 1462 vs 1574 ms (backbone 1041 ms)
    m = 3e4     1.07x / 1.12x / 1.25x     20.0 vs 7.0     step 1704 vs 1589 ms
    m = 1e5     1.21x / 1.40x / 1.61x     20.8 vs 6.3     step 2576 vs 2129 ms (LM 1315 vs 717 ms)

The ratio grows with m, but on a large grid the full-grid work dominates on one CPU thread: the backbone (~1 s),
and, for MoE only, K-channel full-grid tensors (the experts' fields and residuals, and the 2K-channel adjoint of the
structured backward: 273 vs 129 ms layer backward at m = 1e4), memory-bound and slowed by page faults on fresh
50 MB buffers. (The paper's 3.19x at 1e5 was measured on an A100.)

On a GPU (``--device cuda``; ``benchmarks/pde_gpu_check.sh`` is the prepared one-shot check: GPU-vs-CPU equality
tests, then this sweep) an LM iteration is bound by kernel launches rather than flops, so the step ratio should
move towards the ratio of LM iterations (about 2.7x here) as in the paper; not measured yet: no GPU was lent to the
sessions so far.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from physics.dist_check import CheckConfig, single_process, worker  # noqa: E402
from physics.errors import PhysicsError  # noqa: E402
from physics.layer import HardConstraintMoE  # noqa: E402
from physics.model import PDEModel, physics_loss  # noqa: E402
from physics.problems import RESIDUAL_UNITS, make_spec  # noqa: E402
from physics.train import (  # noqa: E402
    TrainConfig,
    build_backbone,
    build_layer,
    evaluate,
    resolve_device,
    sample_fields,
    synchronize,
    train,
)


def effective_points(model: PDEModel) -> int | None:
    """PDE rows actually fitted per sample: m is capped by the points available (per expert block)."""
    layer = model.layer
    if layer is None:
        return None
    if isinstance(layer, HardConstraintMoE):
        return min(layer.points, layer.router.block_size()) * layer.K
    return min(layer.points, len(layer.allowed))


def agg(per_seed: list[dict], key: str, fn=statistics.mean) -> float | None:
    """Mean (or std, median) over seeds of a per-seed metric; the std of one seed is 0."""
    vals = [r[key] for r in per_seed if r.get(key) is not None]
    if not vals:
        return None
    return fn(vals) if len(vals) > 1 or fn is not statistics.stdev else 0.0


# CPU-sized configurations: the backbone, grid and batch of every model of the accuracy table.
DS, NS = "diffusion-sorption", "navier-stokes"
GRIDS = {
    DS: dict(problem=DS, basis=8, width=32, layers=3, modes=8, nt=21, nx=64, batch=4),
    # Closer to the paper (N = 16, 4x the grid; 2000 steps take ~5 min per run on one core).
    f"{DS}-41x256": dict(problem=DS, basis=16, width=32, layers=3, modes=8, nt=41, nx=256, batch=4),
    # 16 x 16 periodic grid, 9 frames; experts 4 = a 2 x 2 spatial split (1, 2, 2) as the paper's.
    NS: dict(problem=NS, basis=16, width=16, layers=3, modes=4, nt=9, nx=16, batch=2),
}


def seed_mean(per_seed: list[dict], key: str) -> list[float]:
    """Elementwise mean over seeds of a per-seed list (e.g. the error of each block)."""
    return [statistics.mean(v) for v in zip(*(r[key] for r in per_seed), strict=True)]


MODELS = {
    "PI-SC": dict(constraint="soft"),
    "PI-HC": dict(constraint="hard", points=1000),
    # As the paper: independent experts (own points, global IC/BC rows) and the loss F(u) of the stitched field by
    # finite differences across the interfaces (the reference code's loss).
    "PI-HC-MoE": dict(constraint="moe", experts=4, points=1000, moe_loss="stitched"),
    # Not in the paper: each point's residual under its own expert plus the interface mismatch as a loss term.
    "PI-HC-MoE expert-loss": dict(constraint="moe", experts=4, points=1000),
    # Not in the paper: continuity rows between neighbouring experts (joint solve per sample).
    "PI-HC-MoE+interface": dict(constraint="moe", experts=4, points=1000, interface_weight=100.0),
    "PI-HC-MoE+interface+stitched": dict(
        constraint="moe", experts=4, points=1000, interface_weight=100.0, moe_loss="stitched"
    ),
    # The same two with the gradient of non-converged solves dropped (a gradient at a non-stationary point).
    "PI-HC drop": dict(constraint="hard", points=1000, drop_nonconverged=True),
    "PI-HC-MoE+interface+stitched drop": dict(
        constraint="moe", experts=4, points=1000, interface_weight=100.0, moe_loss="stitched", drop_nonconverged=True
    ),
}
DEFAULT_MODELS = ("PI-SC", "PI-HC", "PI-HC-MoE", "PI-HC-MoE expert-loss", "PI-HC-MoE+interface+stitched")


def accuracy(
    quick: bool,
    cache: str,
    seeds: int,
    log,
    models: tuple[str, ...] = (),
    device: str = "cpu",
    steps: int = 0,
    residual_units: str = "horizon",
    problem: str = "diffusion-sorption",
    eval_every: int = 0,
    first_seed: int = 0,
) -> list[dict]:
    """Train PI-SC, PI-HC and PI-HC-MoE with the same backbone and budget for several seeds (initialisation,
    points and test set); report the mean and median over seeds of the per-seed mean relative L2, its std over
    seeds, and where the error lives (pooled relative L2 per block of four along x, share of the error)."""
    rows = []
    base = dict(
        steps=steps or (80 if quick else 1200),
        residual_units=residual_units,
        train_time_fraction=0.8,
        n_test=4 if quick else 16,
        eval_every=eval_every,
        cache_dir=cache,
        device=device,
        **GRIDS[problem],
    )
    for name, kw in MODELS.items():
        if name not in (models or DEFAULT_MODELS):
            continue
        per_seed = []
        for seed in range(first_seed, first_seed + seeds):
            cfg = TrainConfig(**base, **kw, seed=seed)  # experts default 4: also the blocks of the breakdown
            t0 = time.perf_counter()
            model, hist = train(cfg, log=None)
            res = evaluate(cfg, model.backbone)
            res.update(
                train_step_ms=1e3 * statistics.median(hist["step_seconds"]),
                infer_ms=1e3 * res["infer_seconds"],
                train_s=time.perf_counter() - t0,
                nonconverged=sum(hist["nonconverged"]),
                curve=[(e["step"], e["test_rel_l2_pct"]) for e in hist["eval"]],
            )
            per_seed.append(res)
            log(
                f"{name} seed {seed}: test {res['test_rel_l2_pct']:.2f}% "
                f"extrap {res.get('extrap_rel_l2_pct', float('nan')):.2f}% "
                f"by block {' '.join(f'{v:.1f}' for v in res['block_rel_l2_pct'])} % "
                f"(error share {' '.join(f'{v:.2f}' for v in res['block_error_share'])})"
            )

        rows.append(
            {
                "model": name,
                "K": cfg.experts if cfg.constraint == "moe" else (1 if name == "PI-HC" else None),
                "points": effective_points(model),
                "seeds": seeds,
                "test_rel_l2_pct": agg(per_seed, "test_rel_l2_pct"),
                "test_rel_l2_std_pct": agg(per_seed, "test_rel_l2_pct", statistics.stdev),
                "test_rel_l2_median_pct": agg(per_seed, "test_rel_l2_pct", statistics.median),
                "extrap_rel_l2_pct": agg(per_seed, "extrap_rel_l2_pct"),
                "extrap_rel_l2_std_pct": agg(per_seed, "extrap_rel_l2_pct", statistics.stdev),
                "test_rel_l2_pct_per_seed": [r["test_rel_l2_pct"] for r in per_seed],
                "block_rel_l2_pct": seed_mean(per_seed, "block_rel_l2_pct"),
                "block_error_share": seed_mean(per_seed, "block_error_share"),
                "train_step_ms": agg(per_seed, "train_step_ms"),
                "infer_ms": agg(per_seed, "infer_ms"),
                "train_s": agg(per_seed, "train_s"),
                "nonconverged": sum(r["nonconverged"] for r in per_seed),
                "curve_steps": [s for s, _ in per_seed[0]["curve"]],
                "curve_rel_l2_pct_per_seed": [[e for _, e in r["curve"]] for r in per_seed],
            }
        )
    return rows


def _timed_step(model: PDEModel, spec, data, step: int, ids: list[int]) -> dict:
    """One training step's parts (s): backbone forward + backward, LM solve (layer forward), layer backward, and
    one inference; the model's gradients are left in .grad. On a GPU every mark waits for the queued kernels."""
    dev = data.u0.device

    def mark() -> float:
        synchronize(dev)
        return time.perf_counter()

    x = spec.inputs(data).float()
    model.zero_grad()
    t0 = mark()
    b = model.backbone(x)
    t1 = mark()
    bl = b.detach().requires_grad_(True)
    u, info = model.layer(bl, data, step, ids)
    t2 = mark()
    (gb,) = torch.autograd.grad(physics_loss(spec, u, data, info).total(), bl)
    t3 = mark()
    b.backward(gb)
    t4 = mark()
    with torch.no_grad():
        model(data, step, ids)
    t5 = mark()
    return {
        "backbone": t1 - t0 + t4 - t3,
        "solve": t2 - t1,
        "implicit": t3 - t2,
        "infer": t5 - t4,
        "iters": float(info.iterations.double().mean()),
        "iters_max": float(info.iterations.max()),
    }


def timing(
    quick: bool,
    log,
    only_points: tuple[int, ...] = (),
    variants: tuple[str, ...] = (),
    grid: tuple[int, int] = (41, 256),
    device: str = "cpu",
) -> list[dict]:
    """Time per training step and per inference, split into backbone, LM solve (layer forward) and layer backward
    (implicit gradient + loss), for K experts and m collocation points in total, over a few steps of real training
    (the basis evolves). K = 1 is PI-HC; the paper's diffusion-sorption basis N = 16.

    All configurations of one m train side by side and are timed interleaved (step s of every configuration, then
    step s + 1), so that a change of external load hits them alike. Every step is repeated ``reps`` times on the
    same weights and data and its minimum kept (external load only ever adds time); the table shows the mean over
    steps of these minima, because the number of LM iterations, and so the cost, varies from step to step.
    """
    rows = []
    dev = resolve_device(device)
    points = only_points or ((100, 1000) if quick else (100, 1000, 10000))
    steps, reps = (2, 2) if quick else (4, 3)
    # "Ki": K experts solved jointly with interface rows (the accurate MoE variant of the accuracy table).
    variants = variants or (("1", "2", "4", "4i") if quick else ("1", "2", "4", "8", "4i"))
    configs = [(int(v.rstrip("i")), 100.0 if v.endswith("i") else 0.0) for v in variants]
    for m in points:
        runs = []
        for K, iw in configs:
            cfg = TrainConfig(
                interface_weight=iw,
                problem="diffusion-sorption",
                constraint="hard" if K == 1 else "moe",
                experts=K,
                points=max(1, m // K),
                basis=16,
                width=32,
                layers=3,
                nt=grid[0],
                nx=grid[1],
                batch=4,
                steps=steps,
                device=device,
            )
            spec = make_spec(cfg.problem, cfg.nt, cfg.nx)
            model = PDEModel(spec, build_backbone(cfg), build_layer(cfg, spec)).to(dev)
            runs.append((K, iw, cfg, spec, model, torch.optim.Adam(model.parameters(), lr=1e-3), []))
        for step in range(steps + 1):  # the first step is warm-up
            ids = list(range(step * 4, (step + 1) * 4))
            best: list[dict] = [{} for _ in runs]
            data = [sample_fields(cfg, spec, step, ids, dev) for _, _, cfg, spec, *_ in runs]
            for _ in range(reps):
                for i, (_, _, _, spec, model, _, _) in enumerate(runs):
                    t = _timed_step(model, spec, data[i], step, ids)
                    best[i] = {k: min(v, best[i].get(k, float("inf"))) for k, v in t.items()}
            for i, (*_, opt, parts) in enumerate(runs):
                opt.step()
                if step:
                    parts.append(best[i])
        base_ms = None
        for K, iw, *_, parts in runs:
            mean = {k: statistics.mean(p[k] for p in parts) for k in parts[0]}
            row = {
                "model": "PI-HC" if K == 1 else ("PI-HC-MoE+interface" if iw else "PI-HC-MoE"),
                "K": K,
                "points": m,
                "train_step_ms": 1e3 * (mean["backbone"] + mean["solve"] + mean["implicit"]),
                "layer_ms": 1e3 * (mean["solve"] + mean["implicit"]),
                "solve_ms": 1e3 * mean["solve"],
                "implicit_ms": 1e3 * mean["implicit"],
                "backbone_ms": 1e3 * mean["backbone"],
                "infer_ms": 1e3 * mean["infer"],
                "lm_iters": mean["iters"],
                "lm_iters_max": mean["iters_max"],
            }
            base_ms = base_ms or row
            for key in ("train", "layer", "infer"):
                k_ms = "train_step_ms" if key == "train" else f"{key}_ms"
                row[f"{key}_speedup"] = base_ms[k_ms] / row[k_ms]
            rows.append(row)
            log(
                f"{row['model']} K={K} m={m}: step {row['train_step_ms']:.0f} ms ({row['train_speedup']:.2f}x) = "
                f"backbone {row['backbone_ms']:.0f} + LM {row['solve_ms']:.0f} + implicit {row['implicit_ms']:.0f}; "
                f"layer {row['layer_ms']:.0f} ms ({row['layer_speedup']:.2f}x); inference {row['infer_ms']:.0f} ms "
                f"({row['infer_speedup']:.2f}x); LM iters {row['lm_iters']:.1f} (max {row['lm_iters_max']:.1f})"
            )
    return rows


def distributed(quick: bool, log) -> list[dict]:
    """Wall time of one step with 1, 2, 4 gloo processes; gradients checked against one process."""
    import torch.multiprocessing as mp

    cfg = CheckConfig()
    _, ref = single_process(cfg)
    rows = []
    for world in (1, 2) if quick else (1, 2, 4):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            mp.spawn(worker, args=(world, os.path.join(d, "store"), d, cfg), nprocs=world, join=True)
            total = time.perf_counter() - t0
            for placement in ("data", "expert"):
                out = np.load(Path(d) / f"{placement}.npy")
                rel = float(np.linalg.norm(out[2:] - ref) / np.linalg.norm(ref))
                rows.append(
                    {
                        "model": f"gloo {placement}",
                        "K": cfg.experts,
                        "points": cfg.points * cfg.experts,
                        "processes": world,
                        "train_step_ms": 1e3 * float(out[1]),
                        "wall_s": total,
                        "grad_rel_diff": rel,
                    }
                )
                log(f"{placement} W={world}: step {1e3 * out[1]:.1f} ms, wall {total:.1f} s, grad diff {rel:.1e}")
    return rows


def fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="PI-SC / PI-HC / PI-HC-MoE (CPU)")
    cols = [
        ("model", "model", "s"),
        ("K", "K", "d"),
        ("points", "points (total)", "d"),
        ("W", "processes", "d"),
        ("test_rel_l2_pct", "test rel L2 %", ".2f"),
        ("test_rel_l2_std_pct", "± (seeds)", ".2f"),
        ("test_rel_l2_median_pct", "median", ".2f"),
        ("block2_share", "error share, block 2", ".2f"),
        ("extrap_rel_l2_pct", "extrap rel L2 %", ".2f"),
        ("extrap_rel_l2_std_pct", "± (seeds)", ".2f"),
        ("train_step_ms", "train step ms", ".1f"),
        ("train_speedup", "train speedup", ".2f"),
        ("backbone_ms", "backbone ms", ".1f"),
        ("solve_ms", "LM solve ms", ".1f"),
        ("implicit_ms", "implicit bwd ms", ".1f"),
        ("layer_ms", "layer ms", ".1f"),
        ("layer_speedup", "layer speedup", ".2f"),
        ("infer_ms", "inference ms", ".1f"),
        ("infer_speedup", "infer speedup", ".2f"),
        ("lm_iters", "LM iters", ".1f"),
        ("wall_s", "wall s", ".1f"),
        ("grad_rel_diff", "grad diff", ".1e"),
    ]
    for _, head, _ in cols:
        t.add_column(head)
    for r in rows:
        share = r.get("block_error_share")
        r = {**r, "W": r.get("processes"), "block2_share": share[1] if share else None}
        t.add_row(*[fmt(r.get(k), f) for k, _, f in cols])
    Console(width=200).print(t)
    curves = [r for r in rows if r.get("curve_steps")]
    if curves:
        c = Table(title="Learning curves: test rel L2 % after each number of steps (mean over seeds; median)")
        c.add_column("model")
        for step in curves[0]["curve_steps"]:
            c.add_column(str(step))
        for r in curves:
            per_step = zip(*r["curve_rel_l2_pct_per_seed"], strict=True)
            cells = [f"{statistics.mean(v):.1f}; {statistics.median(v):.1f}" for v in per_step]
            c.add_row(r["model"], *cells)
        Console(width=200).print(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small budgets (a few minutes on 2 cores)")
    ap.add_argument("--json", action="store_true", help="print the table as one JSON object on the last line")
    ap.add_argument("--cache", default="", help="dataset cache directory (default ~/.cache/clarke/pde)")
    ap.add_argument("--sections", default="accuracy,timing,distributed", help="comma-separated subset to run")
    ap.add_argument("--seeds", type=int, default=0, help="training seeds per model (0: 1 with --quick, else 5)")
    ap.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated accuracy models, of: {', '.join(MODELS)}",
    )
    ap.add_argument("--problem", default="diffusion-sorption", choices=tuple(GRIDS), help="PDE of the accuracy table")
    ap.add_argument("--steps", type=int, default=0, help="training steps of the accuracy models (0: 80 quick or 1200)")
    ap.add_argument(
        "--residual-units",
        default="horizon",
        choices=RESIDUAL_UNITS,
        help="unit of the solver's PDE rows for every hard model (physical: seconds, the paper's rows)",
    )
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    ap.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="accuracy models: also evaluate every this many steps and print the learning curves (0: off)",
    )
    ap.add_argument("--points", default="", help="comma-separated m values of the timing sweep (default all)")
    ap.add_argument(
        "--experts",
        default="",
        help="comma-separated timing variants: K experts, or Ki for K jointly solved experts with interface rows "
        "(default 1,2,4,8,4i; 1 = PI-HC, the reference of the speedups, should come first)",
    )
    ap.add_argument("--grid", default="41x256", help="timing grid NTxNX (m is capped by the grid size)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument(
        "--device",
        default="cpu",
        help="device of the accuracy and timing sections: cpu, cuda, cuda:N or auto (the distributed section "
        "always runs gloo CPU processes)",
    )
    args = ap.parse_args(argv)
    if min(args.steps, args.seeds, args.eval_every, args.first_seed) < 0 or args.threads < 1:
        ap.error("--steps, --seeds, --first-seed and --eval-every must be >= 0, --threads >= 1")
    torch.set_num_threads(args.threads)
    try:
        resolve_device(args.device)  # fail before any work if the device is not there
    except PhysicsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    sections = set(args.sections.split(","))
    rows: list[dict] = []
    if "accuracy" in sections:
        models = tuple(m for m in args.models.split(",") if m)
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            print(f"error: --models: unknown {', '.join(unknown)}", file=sys.stderr)
            return 2
        seeds = args.seeds or (1 if args.quick else 5)
        rows += accuracy(
            args.quick, args.cache, seeds, log, models, args.device, args.steps, args.residual_units, args.problem,
            args.eval_every, args.first_seed,
        )
    if "timing" in sections:
        grid = tuple(int(v) for v in args.grid.lower().split("x"))
        variants = tuple(v for v in args.experts.split(",") if v)
        points = tuple(int(p) for p in args.points.split(",") if p)
        rows += timing(args.quick, log, points, variants, grid, args.device)
    if "distributed" in sections:
        rows += distributed(args.quick, log)
    print_table(rows)
    if args.json:
        print(json.dumps({"benchmark": "pde_moe", "quick": args.quick, "device": args.device, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
