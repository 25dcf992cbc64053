"""Shared CLI helpers: one-line errors, atomic writes, array loading."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from verify.errors import ClarkeError


class CliError(ClarkeError):
    """A usage problem found by a subcommand (bad file, conflicting options)."""


def load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{path}: no such {what} file")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        return np.loadtxt(p, dtype=np.float64, ndmin=1)
    except (ValueError, OSError) as e:
        raise CliError(f"{path}: cannot read {what} ({str(e).splitlines()[0]})") from None


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a partial result."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    except OSError as e:
        raise CliError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(f"{path}: cannot write ({e.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"clarke: error: {message}\n")
    return code


def region_from_args(args, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The input box of ``--center X --eps E [--clip MIN MAX]`` or ``--box LO HI``, checked against ``n``
    model inputs (float64, flattened)."""
    if args.box is not None and args.eps is not None:
        raise CliError("--eps goes with --center, not with --box")
    if args.center is not None:
        if args.eps is None or args.eps < 0:
            raise CliError("--center needs a non-negative --eps")
        x0 = load_array(args.center, "centre").reshape(-1).astype(np.float64)
        lo, hi = x0 - args.eps, x0 + args.eps
        if getattr(args, "clip", None):
            lo, hi = np.clip(lo, *args.clip), np.clip(hi, *args.clip)
    else:
        lo = load_array(args.box[0], "box lower").reshape(-1).astype(np.float64)
        hi = load_array(args.box[1], "box upper").reshape(-1).astype(np.float64)
    for what, a in (("box lower", lo), ("box upper", hi)):
        if a.size != n:
            raise CliError(f"{what} has {a.size} values but the model input has {n}")
    return lo, hi
