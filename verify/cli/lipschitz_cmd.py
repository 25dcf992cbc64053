"""``clarke lipschitz`` and ``clarke monotonicity``: local Lipschitz constants and gradient-sign certificates."""

from __future__ import annotations

import argparse
import logging

import numpy as np

from verify.cli.common import (
    CliError,
    HelpFormatter,
    add_verbosity,
    check_finite,
    finite_float,
    load_array,
    nonneg_float,
    nonneg_int,
    number,
    positive_float,
    print_json,
    region_from_args,
)
from verify.cluster import CLUSTER_HELP, DEFAULT_RETRIES, cluster_arg
from verify.device import device_arg, resolve_device

log = logging.getLogger("verify.cli.lipschitz")

EXIT_STATUS = """Exit status, as for 'clarke verify': 0 when an answer is printed, whatever it says
({answers});
2 with one line on stderr for an error: a bad file or option, or a result that came out NaN
or infinite (never printed as an answer)."""

LIP_DESCRIPTION = """Certified upper bound on the local l_inf Lipschitz constant of an ONNX model over an input
box, max_j sup_x ||grad f_j(x)||_1 (every Clarke Jacobian row), with a lower bound attained by a gradient
in the box (sampling + PGD). Methods: naive (product of norms), ibp, crown (default), alpha-crown, bab
(branch and bound, converges to the exact value), mip (exact LipMIP; dual bound on timeout), lipsdp
(global l2 SDP bound times sqrt(d)). With --centers X.npy (a batch [B, ...]) and --eps, one upper bound
per centre in one call, e.g. the per-point certificates of a test set.

""" + EXIT_STATUS.format(answers="status exact (proved optimal) or bounded")

MONO_DESCRIPTION = """Certify the sign of d f_J / d x_I over an input box (f_J non-decreasing or non-increasing in
x_I), or report a counterexample point whose gradient has the wrong sign.

""" + EXIT_STATUS.format(answers="increasing, decreasing, not_monotone or unknown")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--center", metavar="X.npy", help="centre point x0 (.npy, or text with one value per line)")
    p.add_argument("--eps", type=nonneg_float, help="l_inf radius around --center (finite, >= 0)")
    p.add_argument("--clip", nargs=2, type=finite_float, metavar=("MIN", "MAX"), help="clip the eps-box to [MIN, MAX]")
    p.add_argument("--box", nargs=2, metavar=("LO.npy", "HI.npy"), help="explicit input box")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds for bab / mip, > 0 (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="where the attack, the bounds and the split search run: cpu (the default), auto (a CUDA GPU "
                        "when present), cuda or cuda:N; MIP, LipSDP and LP steps use the CPU")
    add_verbosity(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``lipschitz`` and ``monotonicity`` on the ``clarke`` subcommand parser."""
    from verify.lipschitz.api import METHODS

    p = sub.add_parser("lipschitz", help="certified local Lipschitz constant over an input box",
                       description=LIP_DESCRIPTION, formatter_class=HelpFormatter)
    _common(p)
    p.add_argument("--output", type=nonneg_int, action="append", metavar="J",
                   help="output index to bound (repeatable; default: all outputs)")
    p.add_argument("--method", type=str.lower, choices=METHODS, default="crown", help="bounding method (default crown)")
    p.add_argument("--no-attack", action="store_true",
                   help="skip the sampled/PGD lower bound (lower is then the trivial 0)")
    p.add_argument("--centers", metavar="X.npy",
                   help="a batch of centres [B, ...] (.npy) with --eps: one certified bound per centre in one call "
                   "(naive / ibp / crown batched, other methods one box at a time; no attack)")
    p.add_argument("--cluster", type=cluster_arg, metavar="ray[:ADDRESS]",
                   help="with --centers: shard the centres over Ray tasks (the values of a local call, to "
                   "float64 summation order); " + CLUSTER_HELP)
    p.add_argument("--retries", type=number(int, 0, 100),
                   help=f"with --cluster: re-runs of a shard whose worker died (default {DEFAULT_RETRIES})")
    p.set_defaults(func=run_lipschitz)
    m = sub.add_parser("monotonicity", help="certify the sign of a partial derivative over an input box",
                       description=MONO_DESCRIPTION, formatter_class=HelpFormatter)
    _common(m)
    m.add_argument("--feature", type=nonneg_int, required=True, metavar="I", help="input index (C-order flattened)")
    m.add_argument("--output", type=nonneg_int, default=0, metavar="J", help="output index (default 0)")
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

    if args.centers is None:
        for opt, v in (("--cluster", args.cluster), ("--retries", args.retries)):
            if v is not None:
                raise CliError(f"{opt} goes with --centers")
    elif args.retries is not None and args.cluster is None:
        raise CliError("--retries goes with --cluster")
    graph = load_onnx(args.model)
    resolve_device(args.device)  # a missing GPU is one line, before any work
    if args.centers is not None:
        return _run_batch(args, graph)
    lo, hi = _box(args, graph.input_numel)
    log.info("%s bound over the box (timeout %g s)", args.method, args.timeout)
    res = lipschitz(graph, lo, hi, outputs=args.output, method=args.method, timeout=args.timeout,
                    attack=not args.no_attack, device=args.device)
    if args.no_attack:  # no attained value: the trivial lower bound of a norm (-inf is not a number to print)
        res.lower = max(res.lower, 0.0)
        for p in res.per_output:
            p["lower"] = max(p["lower"], 0.0)
    check_finite("Lipschitz upper bound", [p["upper"] for p in res.per_output] + [res.upper])
    check_finite("Lipschitz lower bound", [p["lower"] for p in res.per_output] + [res.lower])
    if args.json:
        out = res.to_json()
        out["seconds"] = round(out["seconds"], 6)
        out["model"] = args.model
        print_json(out)
        return 0
    from rich.console import Console
    from rich.table import Table

    caption = f"upper {res.upper:.6g}, lower {res.lower:.6g}, {res.status}, {res.seconds:.3f} s"
    table = Table(title=f"local l_inf Lipschitz bound ({res.method})", caption=caption, min_width=len(caption) + 2)
    table.add_column("output", justify="right")
    table.add_column("lower", justify="right")
    table.add_column("upper", justify="right")
    for p in res.per_output:
        table.add_row(str(p["output"]), f"{p['lower']:.6g}", f"{p['upper']:.6g}")
    Console().print(table)
    return 0


def _run_batch(args: argparse.Namespace, graph) -> int:
    """``--centers X.npy --eps E``: one bound per centre (``verify.lipschitz.lipschitz_batch``)."""
    from verify.lipschitz.batch import lipschitz_batch

    if args.center is not None or args.box is not None:
        raise CliError("--centers replaces --center / --box: give one input region")
    if args.eps is None:
        raise CliError("--centers needs --eps")
    if getattr(args, "clip", None) and args.clip[0] > args.clip[1]:
        raise CliError(f"argument --clip: MIN {args.clip[0]:g} is above MAX {args.clip[1]:g}")
    x = load_array(args.centers, "centres").astype(np.float64)
    n = graph.input_numel
    if x.ndim < 1 or x.size == 0 or x.size % n:
        raise CliError(f"{args.centers}: {x.size} values are not a whole number of centres of {n} inputs")
    x = x.reshape(-1, n)
    lo, hi = x - args.eps, x + args.eps
    if getattr(args, "clip", None):
        lo, hi = np.clip(lo, *args.clip), np.clip(hi, *args.clip)
    check_finite("box", np.concatenate([lo, hi]))
    log.info("%s bounds over %d boxes", args.method, x.shape[0])
    if args.cluster is not None:
        from verify.lipschitz.cluster import lipschitz_batch_cluster

        if args.device != "cpu":
            raise CliError("--device goes without --cluster (the cluster's workers compute on their CPUs)")

        res = lipschitz_batch_cluster(args.model, lo, hi, args.cluster, outputs=args.output, method=args.method,
                                      timeout=args.timeout,
                                      retries=DEFAULT_RETRIES if args.retries is None else args.retries)
    else:
        res = lipschitz_batch(graph, lo, hi, outputs=args.output, method=args.method, timeout=args.timeout,
                              device=args.device)
    check_finite("Lipschitz upper bound", res.per_output.numpy())
    if args.json:
        out = res.to_json()
        out.update(seconds=round(out["seconds"], 6), model=args.model, eps=args.eps, centers=args.centers)
        print_json(out)
        return 0
    for b, u in enumerate(res.upper.tolist()):
        print(f"centre {b}: upper {u:.6g}")
    print(f"{x.shape[0]} centres, {res.method}, {res.seconds:.3f} s")
    return 0


def run_monotonicity(args: argparse.Namespace) -> int:
    from verify.frontends.onnx_frontend import load_onnx
    from verify.lipschitz.api import monotonicity

    graph = load_onnx(args.model)
    resolve_device(args.device)
    lo, hi = _box(args, graph.input_numel)
    log.info("sign of d f_%d / d x_%d over the box (timeout %g s)", args.output, args.feature, args.timeout)
    res = monotonicity(graph, lo, hi, feature=args.feature, output=args.output, direction=args.direction,
                       timeout=args.timeout, device=args.device)
    check_finite("derivative bound", [res.lower, res.upper])
    if res.counterexample is not None:
        check_finite("counterexample", [*res.counterexample, res.gradient])
    if args.json:
        print_json(res.to_json())
        return 0
    line = (f"output {res.output} vs feature {res.feature}: {res.status} "
            f"(d f/d x in [{res.lower:.6g}, {res.upper:.6g}], {res.seconds:.3f} s)")
    if res.counterexample is not None:
        line += f"; counterexample gradient {res.gradient:.6g} at x = {res.counterexample}"
    print(line)
    return 0
