"""VNNLIB (VNN-COMP subset): `(declare-const X_i|Y_j Real)`, `(assert B)`; B := (<=|>= t t) | (and|or B+).
The conjoined asserts (counterexamples) become the DNF `[(box, [(A_k, b_k)])] = x ∈ box ∧ ∨_k A_k y ≤ b_k`.

Semantics
---------
``X_i`` is element ``i`` of the C-order flattening of the (single) network input, ``Y_j`` element ``j`` of
the flattened output. All asserts are conjoined and describe the *counterexample* set. The whole
conjunction is put in disjunctive normal form; each DNF term is a conjunction of atoms, each atom a linear
inequality ``a·[x; y] <= b`` (``(<= A B)`` is ``A - B <= 0``, ``(>= A B)`` is ``B - A <= 0``):

* input atoms (X variables and constants only) must bound a single variable; they make the term's box
  (tightest bound wins). An atom relating two X variables is unsupported (:class:`VnnlibError`);
* output atoms (Y variables and constants only) are the rows of ``A y <= b``;
* mixed atoms (X and Y, e.g. ``(<= Y_0 X_0)``) are kept in :attr:`Disjunct.mixed` as ``(Ax, Ay, b)``
  meaning ``Ax x + Ay y <= b``; ``None`` when the term has none (nearly all competition specs);
* an atom between constants is dropped when true and removes its term when false.

Terms with identical boxes are grouped into one :class:`Property`, whose disjuncts are OR-ed. A spec whose
every term is false has no properties (its counterexample set is empty).

Variables are declared (sort ``Real``) before use, once each, numbered ``X_0..X_{n-1}`` / ``Y_0..Y_{m-1}``
without gaps; every X_i needs a finite lower and upper bound in every box. Numbers are decimal literals
(``4``, ``-0.5``, ``+2``, ``5.81e-05``, ``1E-3``). Comments run from ``;`` to the end of the line.

The syntax is read by :mod:`verify.vnnlib_syntax`; this module assembles its DNF into boxes and rows. Every
error is a :class:`~verify.errors.VnnlibError` carrying the line of the offending token, and no input text
raises anything else. Parsing pauses the cyclic garbage collector (it only allocates acyclic
tuples); a 784-input MNIST spec parses in about 5 ms.
"""

from __future__ import annotations

import gc
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verify.errors import ShapeError, VnnlibError
from verify.vnnlib_syntax import MAX_DNF_ATOMS, MAX_DNF_TERMS, XB, YR, Parser

__all__ = [
    "InputBox",
    "Disjunct",
    "Property",
    "VnnlibSpec",
    "parse_vnnlib",
    "parse_vnnlib_text",
    "MAX_DNF_TERMS",
    "MAX_DNF_ATOMS",
]


# --------------------------------------------------------------------------------------------- results


@dataclass


class InputBox:
    """Axis-aligned input box ``lo <= x <= hi`` (float64, shape ``[n_inputs]``, all finite, lo <= hi)."""

    lo: np.ndarray
    hi: np.ndarray

    def contains(self, x: np.ndarray, atol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lo - atol) and np.all(x <= self.hi + atol))


@dataclass


class Disjunct:
    """One disjunct of the output constraint: all rows of ``A y <= b`` hold (``A`` [k, n_outputs], ``b`` [k]).

    ``mixed`` is ``None`` or ``(Ax, Ay, bm)`` with ``Ax`` [m, n_inputs], ``Ay`` [m, n_outputs], ``bm`` [m]:
    extra rows ``Ax x + Ay y <= bm`` of the same disjunct that involve both inputs and outputs.
    """

    A: np.ndarray
    b: np.ndarray
    mixed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def holds(self, x: np.ndarray, y: np.ndarray, atol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if not np.all(self.A @ y <= self.b + atol):
            return False
        if self.mixed is not None:
            ax, ay, bm = self.mixed
            if not np.all(ax @ x + ay @ y <= bm + atol):
                return False
        return True


@dataclass


class Property:
    """``x ∈ box ∧ (disjuncts[0] ∨ disjuncts[1] ∨ ...)``: one input region of the counterexample set."""

    box: InputBox
    disjuncts: list[Disjunct]


@dataclass


class VnnlibSpec:
    """A parsed VNNLIB file: the counterexample set is the union over ``properties``."""

    path: str
    n_inputs: int
    n_outputs: int
    properties: list[Property]

    def is_counterexample(self, x: np.ndarray, y: np.ndarray, atol: float = 0.0) -> bool:
        """True iff ``x`` lies in some property's box (within ``atol``) and ``y`` (with ``x`` for mixed rows)
        satisfies every row of one of that property's disjuncts (``A y <= b + atol``)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.size != self.n_inputs or y.size != self.n_outputs:
            raise ShapeError(
                f"{self.path}: is_counterexample got {x.size} inputs / {y.size} outputs, "
                f"spec has {self.n_inputs} / {self.n_outputs}"
            )
        for prop in self.properties:
            if prop.box.contains(x, atol) and any(d.holds(x, y, atol) for d in prop.disjuncts):
                return True
        return False


# --------------------------------------------------------------------------------------------- assembly


def _build(p: Parser, n_inputs: int | None, n_outputs: int | None) -> VnnlibSpec:
    """The spec of a parsed text: each DNF term's box and rows, terms with equal boxes grouped into one property."""
    common, terms = p.parse()
    nx, ny = len(p.xdecl), len(p.ydecl)
    _check_count(p, p.xdecl, "X", "inputs", n_inputs)
    _check_count(p, p.ydecl, "Y", "outputs", n_outputs)

    # Bounds are tightened in Python lists (numpy scalar indexing is slow), converted once per box.
    lo0 = [-np.inf] * nx
    hi0 = [np.inf] * nx
    rows0: list[tuple] = []
    mixed0: list[tuple] = []
    _apply(p, common, lo0, hi0, rows0, mixed0)
    base: tuple[np.ndarray, np.ndarray, tuple[bytes, bytes]] | None = None

    groups: dict[tuple[bytes, bytes], Property] = {}
    for term in terms:
        rows, mixed = rows0, mixed0
        if any(atom[0] == XB for atom in term):
            lo, hi, rows, mixed = lo0.copy(), hi0.copy(), rows0.copy(), mixed0.copy()
            _apply(p, term, lo, hi, rows, mixed)
            lo_a, hi_a = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
            _check_finite(p, lo_a, hi_a)
            key = (lo_a.tobytes(), hi_a.tobytes())
        else:
            if term:
                rows, mixed = rows0.copy(), mixed0.copy()
                _apply(p, term, lo0, hi0, rows, mixed)  # no bound atoms: lo0 / hi0 untouched
            if base is None:
                lo_a, hi_a = np.array(lo0, dtype=np.float64), np.array(hi0, dtype=np.float64)
                _check_finite(p, lo_a, hi_a)
                base = (lo_a, hi_a, (lo_a.tobytes(), hi_a.tobytes()))
            lo_a, hi_a, key = base
        prop = groups.get(key)
        if prop is None:
            prop = groups[key] = Property(InputBox(lo_a, hi_a), [])
        prop.disjuncts.append(_disjunct(rows, mixed, nx, ny))
    return VnnlibSpec(path=p.path, n_inputs=nx, n_outputs=ny, properties=list(groups.values()))


def _apply(
    p: Parser, atoms: list[tuple] | tuple, lo: list[float], hi: list[float], rows: list, mixed: list
) -> None:
    for kind, tok, payload in atoms:
        if kind == XB:
            i, upper, v = payload
            if upper:
                if v < hi[i]:
                    hi[i] = v
            elif v > lo[i]:
                lo[i] = v
            if lo[i] > hi[i]:
                raise p.error(
                    f"empty input box for X_{i}: lower bound {lo[i]!r} > upper bound {hi[i]!r}", tok
                )
        elif kind == YR:
            rows.append(payload)
        else:
            mixed.append(payload)


def _check_finite(p: Parser, lo: np.ndarray, hi: np.ndarray) -> None:
    for arr, what in ((lo, "lower"), (hi, "upper")):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            raise p.error(
                f"no {what} bound for input X_{i} (every input needs finite lower and upper bounds)",
                p.xdecl[i],
            )


def _check_count(p: Parser, decl: dict[int, int], letter: str, what: str, expected: int | None) -> None:
    n = len(decl)
    if expected is None or n == expected:
        return
    tok = decl[expected] if n > expected >= 0 else decl[n - 1]
    raise p.error(
        f"spec declares {n} {what} {letter}_0..{letter}_{n - 1} but the model has {expected} {what}", tok
    )


def _disjunct(rows: list[tuple], mixed: list[tuple], nx: int, ny: int) -> Disjunct:
    A = np.zeros((len(rows), ny))
    b = np.empty(len(rows))
    for r, (yc, rhs) in enumerate(rows):
        for j, c in yc:
            A[r, j] += c
        b[r] = rhs
    mx = None
    if mixed:
        ax = np.zeros((len(mixed), nx))
        ay = np.zeros((len(mixed), ny))
        bm = np.empty(len(mixed))
        for r, (xc, yc, rhs) in enumerate(mixed):
            for i, c in xc:
                ax[r, i] += c
            for j, c in yc:
                ay[r, j] += c
            bm[r] = rhs
        mx = (ax, ay, bm)
    return Disjunct(A, b, mx)


# --------------------------------------------------------------------------------------------- entry points


def parse_vnnlib_text(
    text: str, path: str = "<string>", n_inputs: int | None = None, n_outputs: int | None = None
) -> VnnlibSpec:
    """Parse VNNLIB source ``text`` (``path`` only names it in errors). If ``n_inputs`` / ``n_outputs`` are
    given (from the model), the declared X / Y counts must match them exactly."""
    if not isinstance(text, str):
        raise VnnlibError(f"expected VNNLIB text (str), got {type(text).__name__}", path=path)
    # The parse allocates tens of thousands of small tuples and no reference cycles; with a large heap
    # (torch, onnx loaded) the cyclic GC would repeatedly scan everything, making parses 5x slower.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(Parser(text, path), n_inputs, n_outputs)
    finally:
        if gc_was_enabled:
            gc.enable()


def _read_file(p: Path) -> str:
    name = str(p)
    try:
        if not p.exists():
            raise VnnlibError("VNNLIB file not found", path=name)
        if not p.is_file():
            raise VnnlibError("not a regular file", path=name)
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                data = f.read()
        else:
            data = p.read_bytes()
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise VnnlibError(f"cannot read file: {e}", path=name) from e
    # Undecodable bytes become lone surrogates: harmless in comments, a bad token (with its line) elsewhere.
    return data.decode("utf-8-sig", errors="surrogateescape")


def parse_vnnlib(
    path_or_text: str | os.PathLike, n_inputs: int | None = None, n_outputs: int | None = None
) -> VnnlibSpec:
    """Parse a ``.vnnlib`` / ``.vnnlib.gz`` file, or VNNLIB source text.

    A :class:`os.PathLike` is always a path. A ``str`` is taken as source text when it contains '(' or a
    newline and is not the name of an existing file, otherwise as a path (a missing file is an error).
    """
    if isinstance(path_or_text, os.PathLike):
        p = Path(path_or_text)
    elif isinstance(path_or_text, str):
        s = path_or_text
        looks_like_text = "(" in s or "\n" in s or not s.strip()
        if looks_like_text:
            try:
                is_file = len(s) < 4096 and "\n" not in s and "\x00" not in s and os.path.isfile(s)
            except (OSError, ValueError):
                is_file = False
            if not is_file:
                return parse_vnnlib_text(s, "<string>", n_inputs, n_outputs)
        p = Path(s)
    else:
        raise VnnlibError(f"expected a path or VNNLIB text, got {type(path_or_text).__name__}")
    return parse_vnnlib_text(_read_file(p), str(p), n_inputs, n_outputs)
