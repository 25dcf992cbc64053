"""``clarke lipschitz`` and ``clarke monotonicity``: local Lipschitz constants and gradient-sign certificates."""

from __future__ import annotations

import argparse

import numpy as np

from verify.cli.common import CliError, print_json, region_from_args

LIP_DESCRIPTION = """Certified upper bound on the local l_inf Lipschitz constant of an ONNX model over an input
box, max_j sup_x ||grad f_j(x)||_1 (every Clarke Jacobian row), with a lower bound attained by a gradient
in the box (sampling + PGD). Methods: naive (product of norms), ibp, crown (default), alpha-crown, bab
(branch and bound, converges to the exact value), mip (exact LipMIP; dual bound on timeout), lipsdp
(global l2 SDP bound times sqrt(d))."""

MONO_DESCRIPTION = """Certify the sign of d f_J / d x_I over an input box (f_J non-decreasing or non-increasing in
x_I), or report a counterexample point whose gradient has the wrong sign."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--center", metavar="X.npy", help="centre point x0 (.npy, or text with one value per line)")
    p.add_argument("--eps", type=float, help="l_inf radius around --center")
    p.add_argument("--clip", nargs=2, type=float, metavar=("MIN", "MAX"), help="clip the eps-box to [MIN, MAX]")
    p.add_argument("--box", nargs=2, metavar=("LO.npy", "HI.npy"), help="explicit input box")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for bab / mip (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``lipschitz`` and ``monotonicity`` on the ``clarke`` subcommand parser."""
    from verify.lipschitz.api import METHODS

    p = sub.add_parser("lipschitz", help="certified local Lipschitz constant over an input box",
                       description=LIP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--output", type=int, action="append", metavar="J",
                   help="output index to bound (repeatable; default: all outputs)")
    p.add_argument("--method", choices=METHODS, default="crown", help="bounding method (default crown)")
    p.add_argument("--no-attack", action="store_true", help="skip the sampled/PGD lower bound")
    p.set_defaults(func=run_lipschitz)
    m = sub.add_parser("monotonicity", help="certify the sign of a partial derivative over an input box",
                       description=MONO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(m)
    m.add_argument("--feature", type=int, required=True, metavar="I", help="input index (C-order flattened)")
    m.add_argument("--output", type=int, default=0, metavar="J", help="output index (default 0)")
    m.add_argument("--direction", choices=("increasing", "decreasing"),
                   help="the sign to certify (default: whichever holds; else the sign at the centre)")
    m.set_defaults(func=run_monotonicity)


def _box(args, n: int) -> tuple[np.ndarray, np.ndarray]:
    if (args.center is not None) == (args.box is not None):
        raise CliError("give exactly one input region: --center with --eps, or --box LO HI")
    return region_from_args(args, n)


def run_lipschitz(args: argparse.Namespace) -> int:
    from verify.frontends.onnx_frontend import load_onnx
    from verify.lipschitz.api import lipschitz

    graph = load_onnx(args.model)
    lo, hi = _box(args, graph.input_numel)
    res = lipschitz(graph, lo, hi, outputs=args.output, method=args.method, timeout=args.timeout,
                    attack=not args.no_attack)
    if args.json:
        out = res.to_json()
        out["seconds"] = round(out["seconds"], 6)
        out["model"] = args.model
        print_json(out)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"local l_inf Lipschitz bound ({res.method})",
                  caption=f"upper {res.upper:.6g}, lower {res.lower:.6g}, {res.status}, {res.seconds:.3f} s")
    table.add_column("output", justify="right")
    table.add_column("lower", justify="right")
    table.add_column("upper", justify="right")
    for p in res.per_output:
        table.add_row(str(p["output"]), f"{p['lower']:.6g}", f"{p['upper']:.6g}")
    Console().print(table)
    return 0


def run_monotonicity(args: argparse.Namespace) -> int:
    from verify.frontends.onnx_frontend import load_onnx
    from verify.lipschitz.api import monotonicity

    graph = load_onnx(args.model)
    lo, hi = _box(args, graph.input_numel)
    res = monotonicity(graph, lo, hi, feature=args.feature, output=args.output, direction=args.direction,
                       timeout=args.timeout)
    if args.json:
        print_json(res.to_json())
        return 0
    line = (f"output {res.output} vs feature {res.feature}: {res.status} "
            f"(d f/d x in [{res.lower:.6g}, {res.upper:.6g}], {res.seconds:.3f} s)")
    if res.counterexample is not None:
        line += f"; counterexample gradient {res.gradient:.6g} at x = {res.counterexample}"
    print(line)
    return 0
