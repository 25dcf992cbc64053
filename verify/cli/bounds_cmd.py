"""``clarke bounds``: sound output bounds of an ONNX model over an input box."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from verify.api import METHODS, bound
from verify.cli.common import (
    INT_MAX,
    CliError,
    HelpFormatter,
    add_verbosity,
    check_dtype_range,
    check_finite,
    finite_float,
    load_array,
    nonneg_float,
    number,
    positive_float,
    print_json,
    region_from_args,
)
from verify.device import DEVICE_HELP, device_arg, resolve_device
from verify.frontends.onnx_frontend import load_onnx
from verify.model_check import check_against_onnxruntime, sample_points
from verify.rounding import PRECISIONS, outward_box

log = logging.getLogger("verify.cli.bounds")

DESCRIPTION = """Compute certified lower/upper bounds of every network output (or of C*f(x)) over an
input region: either the ball ||x - x0|| <= eps (--center/--eps in the --norm, inf by default: a box;
clipped to --clip), an explicit box (--box LO HI),
or the input box of a VNNLIB property (second positional argument; a union of boxes is covered
by the union of their bounds). Every x in the box satisfies lower <= f(x) <= upper.

Exit status: 0 with the bounds on stdout; 2 with one line on stderr for an error (bad file or option,
unsupported operator, or bounds that come out NaN or infinite, which are never printed as a result)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bounds", help="bound network outputs over an input box (IBP, CROWN, alpha-CROWN)",
                       description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("model", help="ONNX model file")
    p.add_argument("spec", nargs="?", help="VNNLIB file whose input box to use (instead of --center/--box)")
    p.add_argument("--center", metavar="X.npy", help="centre point x0 (.npy, or text with one value per line)")
    p.add_argument("--eps", type=nonneg_float, help="radius around --center in the --norm (finite, >= 0)")
    p.add_argument("--norm", choices=("inf", "2", "1"), default="inf",
                   help="the ball around --center: l_inf (a box, default), l_2 or l_1 (intersected with --clip)")
    p.add_argument("--clip", nargs=2, type=finite_float, metavar=("MIN", "MAX"),
                   help="clip the eps-box to [MIN, MAX] (e.g. the data range 0 1)")
    p.add_argument("--box", nargs=2, metavar=("LO.npy", "HI.npy"), help="explicit input box")
    p.add_argument("--method", type=str.lower, choices=METHODS, default="crown",
                   help="ibp: interval propagation (fast, loose); crown-ibp: interval intermediate bounds, one "
                        "CROWN pass; crown: backward linear relaxation (default); alpha-crown: CROWN with "
                        "optimised ReLU/sigmoid slopes (tightest)")
    p.add_argument("--C", metavar="C.npy", help="spec matrix [S, n_outputs]: bound C*f(x) instead of f(x)")
    p.add_argument("--iterations", type=number(int, 0, INT_MAX), default=20,
                   help="alpha-CROWN optimisation steps, >= 0 (default 20)")
    p.add_argument("--lr", type=positive_float, default=0.5, help="alpha-CROWN Adam learning rate, > 0 (default 0.5)")
    p.add_argument("--optimize-intermediate", action="store_true",
                   help="alpha-CROWN: also optimise slopes of intermediate-layer bounds (tighter, slower)")
    p.add_argument("--precision", choices=PRECISIONS, default="float64",
                   help="arithmetic of the bound computation: float64, or the model's own precision (faster, "
                        "looser on wide layers); the bounds are rigorous either way")
    p.add_argument("--device", type=device_arg, default="auto", help=f"where to compute: {DEVICE_HELP}")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: lower, upper (one entry per output, C-order), method, seconds")
    add_verbosity(p)
    p.set_defaults(func=run)


def _boxes(args, graph) -> list[tuple[np.ndarray, np.ndarray]]:
    n = graph.input_numel
    given = [args.spec is not None, args.center is not None, args.box is not None]
    if sum(given) != 1:
        raise CliError("give exactly one input region: a VNNLIB spec, --center with --eps, or --box LO HI")
    if args.spec is not None:
        from verify.vnnlib import parse_vnnlib
        spec = parse_vnnlib(args.spec, n_inputs=n, n_outputs=graph.output_numel)
        return [(p.box.lo, p.box.hi) for p in spec.properties]
    lo, hi = region_from_args(args, n)
    return [(lo, hi)]


def _ball(args, graph) -> tuple | None:
    """``--norm 2|1``: ``(center, eps, p)`` for ``verify.bound``; None for the l_inf box."""
    if args.norm == "inf":
        return None
    if args.center is None:
        raise CliError(f"--norm {args.norm} goes with --center and --eps (a VNNLIB spec or --box is a box)")
    center = load_array(args.center, "centre").reshape(1, -1).astype(np.float64)
    return torch.from_numpy(center), float(args.eps), float(args.norm)


def _spec_matrix(path: str | None, n_outputs: int) -> np.ndarray | None:
    """``--C``: a finite matrix ``[S, n_outputs]`` (a single row may be given as a vector)."""
    if path is None:
        return None
    C = load_array(path, "spec matrix")
    if C.ndim == 1:
        C = C.reshape(1, -1)
    if C.ndim != 2 or C.shape[1] != n_outputs:
        raise CliError(f"{path}: spec matrix is {tuple(C.shape)}, expected [S, {n_outputs}] (one column per output)")
    return C


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    graph = load_onnx(args.model)  # in the model's own precision
    boxes = _boxes(args, graph)
    ball = _ball(args, graph)
    C = _spec_matrix(args.C, graph.output_numel)
    check_against_onnxruntime(graph, args.model, sample_points(boxes, per_box=1))
    lower = upper = None
    for i, (lo, hi) in enumerate(boxes):
        check_dtype_range(lo, hi, str(graph.dtype).replace("torch.", ""))
        log.info("%s on input box %d of %d", args.method, i + 1, len(boxes))
        # the float64 box (a decimal reading, or x0 -+ eps rounded once) widened by an ulp, in float64
        lo_t, hi_t = outward_box(lo.reshape(1, -1), hi.reshape(1, -1), torch.float64)
        with torch.no_grad() if args.method != "alpha-crown" else torch.enable_grad():
            lb, ub = bound(graph, lo_t, hi_t, C=C, method=args.method, iterations=args.iterations, lr=args.lr,
                           optimize_intermediate=args.optimize_intermediate, precision=args.precision, ball=ball,
                           device=device)
        lb, ub = lb[0].detach().double().cpu().numpy(), ub[0].detach().double().cpu().numpy()
        lower = lb if lower is None else np.minimum(lower, lb)
        upper = ub if upper is None else np.maximum(upper, ub)
    check_finite("lower bound", lower)
    check_finite("upper bound", upper)
    seconds = time.perf_counter() - t0
    if args.json:
        print_json({"lower": lower.tolist(), "upper": upper.tolist(), "method": args.method, "norm": args.norm,
                    "device": str(device), "precision": args.precision, "seconds": round(seconds, 6),
                    "model": args.model, "boxes": len(boxes)})
        return 0
    from rich.console import Console
    from rich.table import Table
    caption = f"{len(boxes)} input box(es), {seconds:.3f} s"
    table = Table(title=f"{args.method} bounds of {Path(args.model).name}", caption=caption,
                  min_width=len(caption) + 2)
    table.add_column("output" if C is None else "spec row", justify="right")
    table.add_column("lower", justify="right")
    table.add_column("upper", justify="right")
    table.add_column("width", justify="right")
    for i, (lb, ub) in enumerate(zip(lower, upper, strict=True)):
        table.add_row(str(i), f"{lb:.6g}", f"{ub:.6g}", f"{ub - lb:.4g}")
    Console().print(table)
    return 0
