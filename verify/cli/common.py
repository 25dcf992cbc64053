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
