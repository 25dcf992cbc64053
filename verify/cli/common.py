"""Shared CLI helpers: one-line errors (argparse's too), checked numeric options, atomic writes, array loading,
and the ``-v`` / ``--quiet`` logging set-up."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from verify.errors import ClarkeError


class CliError(ClarkeError):
    """A usage problem found by a subcommand (bad file, conflicting options)."""


# ------------------------------------------------------------------------------------------ argparse


class ClarkeParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``clarke: error: MESSAGE (see 'PROG --help')`` and exit status 2.

    Subparsers made by ``add_subparsers`` inherit the class, so every subcommand reports the same way."""

    def error(self, message: str) -> NoReturn:
        first = message.strip().splitlines()[0] if message.strip() else "bad arguments"
        self.exit(2, f"clarke: error: {first} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; every option whose help does not already say its default gets
    ``(default: X)`` appended (flags and options without a default are left alone)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text.lower()
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


def number(kind: type = float, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           name: str = "") -> Callable[[str], float | int]:
    """An argparse ``type=``: parses ``kind`` (float or int) and checks that it is finite and in range
    (``low < x`` when ``low_open``, else ``low <= x``; ``x <= high``). argparse then names the option."""

    fmt = "d" if kind is int else "g"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:{fmt}}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:{fmt}}, got {text!r}")
        return value

    parse.__name__ = name or kind.__name__
    return parse


INT_MAX = 2**31 - 1  # counts and indices beyond it only overflow tensors or indexing
finite_float = number(float, name="finite_float")
nonneg_float = number(float, 0.0, name="nonneg_float")
positive_float = number(float, 0.0, low_open=True, name="positive_float")
nonneg_int = number(int, 0, INT_MAX, name="nonneg_int")
positive_int = number(int, 1, INT_MAX, name="positive_int")
seed_int = number(int, 0, 2**32 - 1, name="seed")  # numpy's and torch's seed range


def add_verbosity(p: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (progress lines on stderr) and ``-q/--quiet`` (nothing but stdout and errors)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true",
                   help="log progress on stderr every few seconds (phase, open domains, current bound, elapsed)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but the result on stdout (and a one-line error on failure)")


class _ElapsedFormatter(logging.Formatter):
    """``clarke [  12.3 s] bab.relu_split: MESSAGE``: seconds since the command started, then the engine part."""

    def __init__(self, t0: float):
        super().__init__()
        self.t0 = t0

    def format(self, record: logging.LogRecord) -> str:
        where = record.name.removeprefix("verify.")
        message = record.getMessage()
        short = where.rsplit(".", 1)[-1]
        message = message.removeprefix(f"{short}: ")  # some engine lines already name their part
        return f"clarke [{time.perf_counter() - self.t0:7.1f} s] {where}: {message}"


@contextlib.contextmanager
def cli_logging(verbose: bool = False, quiet: bool = False) -> Iterator[None]:
    """While a command runs: with ``verbose``, the ``verify`` loggers' debug lines (the BaB loops log every
    ~2 s) go to stderr stamped with the elapsed time; with ``quiet``, warnings are silenced too. The handler is
    removed afterwards (in-process callers, e.g. the tests, swap sys.stderr between commands)."""
    logger = logging.getLogger("verify")
    old_level = logger.level
    handler = None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ElapsedFormatter(time.perf_counter()))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    elif quiet:
        logger.setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if quiet:
            import warnings

            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        try:
            yield
        finally:
            if handler is not None:
                logger.removeHandler(handler)
            logger.setLevel(old_level)


# ------------------------------------------------------------------------------------------ files


def load_array(path: str, what: str) -> np.ndarray:
    """A float array from ``.npy`` or text (one value per line); NaN or inf values are an error."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{path}: is a directory, expected a {what} file")
    if not p.is_file():
        raise CliError(f"{path}: no such {what} file")
    try:
        with warnings.catch_warnings():  # numpy warns about an empty text file: one error line is enough
            warnings.simplefilter("ignore")
            if p.suffix == ".npy":
                a = np.load(p, allow_pickle=False)
            else:
                a = np.loadtxt(p, dtype=np.float64, ndmin=1)
            a = np.asarray(a, dtype=np.float64)
    except (ValueError, OSError, TypeError, EOFError) as e:
        raise CliError(f"{path}: cannot read {what} ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if a.size == 0:
        raise CliError(f"{path}: empty {what} file")
    if not np.isfinite(a).all():
        raise CliError(f"{path}: {what} holds NaN or infinite values")
    return a


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
    """One JSON object on a line; strict JSON (a NaN or inf that slipped through is an error, not output)."""
    text = json.dumps(obj, allow_nan=False)
    sys.stdout.write(text + "\n")


def fail(message: str, code: int = 2) -> int:
    """Write ``clarke: error: MESSAGE`` (its first line) on stderr; return the exit status."""
    first = (str(message).strip().splitlines() or ["unknown error"])[0]
    sys.stderr.write(f"clarke: error: {first}\n")
    return code


def check_finite(what: str, values: np.ndarray) -> None:
    """A computed result must be a number: NaN (or an overflow to inf) is an error, never an answer."""
    a = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        kind = "NaN" if np.isnan(a.reshape(-1)[i]) else "infinite"
        raise CliError(f"{what} came out {kind} (entry {i}): numerical failure, no result")


def region_from_args(args, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The input box of ``--center X --eps E [--clip MIN MAX]`` or ``--box LO HI``, checked against ``n``
    model inputs (float64, flattened)."""
    if args.box is not None and args.eps is not None:
        raise CliError("--eps goes with --center, not with --box")
    if getattr(args, "clip", None) and args.center is None:
        raise CliError("--clip goes with --center and --eps")
    if getattr(args, "clip", None) and args.clip[0] > args.clip[1]:
        raise CliError(f"argument --clip: MIN {args.clip[0]:g} is above MAX {args.clip[1]:g}")
    if args.center is not None:
        if args.eps is None:
            raise CliError("--center needs --eps")
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
        if not np.isfinite(a).all():  # x0 +- a huge eps
            raise CliError(f"{what} is not finite (--eps too large?)")
    if (lo > hi).any():
        i = int(np.flatnonzero(lo > hi)[0])
        raise CliError(f"empty input box: lower > upper at input index {i}")
    return lo, hi


def check_dtype_range(lo: np.ndarray, hi: np.ndarray, dtype_name: str = "float32") -> None:
    """The box must be representable in the precision the model is evaluated in."""
    big = float(np.finfo(np.dtype(dtype_name)).max)
    if max(np.abs(lo).max(initial=0.0), np.abs(hi).max(initial=0.0)) > big:
        raise CliError(f"input box exceeds the {dtype_name} range (|x| > {big:.3g}; --eps too large?)")


def run_guarded(args: argparse.Namespace) -> int:
    """Run a parsed subcommand ``args.func(args)``: its status, or for any error one stderr line and exit 2
    (130 on Ctrl-C); an engine bug is an "internal error" line (with -v, the traceback before it)."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        with cli_logging(verbose, bool(getattr(args, "quiet", False))):
            return int(args.func(args) or 0)
    except ClarkeError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))
    except ValueError as e:  # the Python API's check of an argument (e.g. a non-finite number)
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as e:
        if verbose:
            import traceback

            traceback.print_exc()
        return fail(f"internal error: {type(e).__name__}: {e}")
