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

Every error is a :class:`~verify.errors.VnnlibError` carrying the line of the offending token; the parser
uses no recursion (explicit stack) and caps the DNF size (:data:`MAX_DNF_TERMS`, :data:`MAX_DNF_ATOMS`), so
no input text raises anything else. Parsing pauses the cyclic garbage collector (it only allocates acyclic
tuples); a 784-input MNIST spec parses in about 5 ms.
"""

from __future__ import annotations

import gc
import gzip
import os
import re
import zlib
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from verify.errors import ShapeError, VnnlibError

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

MAX_DNF_TERMS = 100_000
"""Most DNF terms any sub-formula (and the whole spec) may expand to."""
MAX_DNF_ATOMS = 5_000_000
"""Most atom references a materialized DNF may hold (sum of term lengths)."""

_COMMENT_RE = re.compile(r";[^\n]*")
_TOKEN_RE = re.compile(r"[()]|[^\s()]+")
_VAR_RE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EOF = ""  # sentinel token: the tokenizer never produces an empty token
_PAD = 8  # sentinels appended so that look-ahead never indexes past the list
_MAX_TOKEN_SHOWN = 40

_UNSUPPORTED_OPS = {
    "<": "strict '<' is not supported (use '<=')",
    ">": "strict '>' is not supported (use '>=')",
    "=": "'=' is not supported (use '<=' and '>=')",
    "not": "'not' is not supported",
    "=>": "'=>' is not supported",
    "distinct": "'distinct' is not supported",
    "xor": "'xor' is not supported",
    "ite": "'ite' is not supported",
    "+": "arithmetic terms are not supported",
    "-": "arithmetic terms are not supported",
    "*": "arithmetic terms are not supported",
    "/": "arithmetic terms are not supported",
}


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


# --------------------------------------------------------------------------------------------- parser

# An atom is a tuple (kind, token_index, payload):
#   _XB: payload (i, is_upper, value)         x_i <= value  /  x_i >= value
#   _YR: payload (((j, c), ...), b)           sum c y_j <= b
#   _MX: payload (((i, c), ...), ((j, c), ...), b)
_XB, _YR, _MX = 0, 1, 2
_TRUE: list[tuple] = [()]  # DNF with one empty term
_FALSE: list[tuple] = []  # DNF with no term


class _Parser:
    def __init__(self, text: str, path: str):
        self.path = path
        text = text.lstrip("\ufeff")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        # Comments are removed but their newline kept, so token offsets still give the right line.
        self.text = _COMMENT_RE.sub("", text)
        self.toks: list[str] = _TOKEN_RE.findall(self.text)
        self.n = len(self.toks)
        self.toks.extend([_EOF] * _PAD)
        self.xdecl: dict[int, int] = {}  # index -> token index of its name in the declaration
        self.ydecl: dict[int, int] = {}
        self.terms: dict[str, tuple[bool, int] | float] = {}  # token -> parsed atom argument (cache)

    # ----------------------------------------------------------------------------------------- errors

    def line_of(self, tok: int) -> int:
        if self.n == 0:
            return 1
        tok = min(max(tok, 0), self.n - 1)
        m = next(islice(_TOKEN_RE.finditer(self.text), tok, None))
        return self.text.count("\n", 0, m.start()) + 1

    def error(self, message: str, tok: int) -> VnnlibError:
        token = self.toks[tok] if 0 <= tok < self.n else None
        if token is not None and len(token) > _MAX_TOKEN_SHOWN:
            token = token[:_MAX_TOKEN_SHOWN] + "..."
        return VnnlibError(message, path=self.path, line=self.line_of(tok), token=token)

    def eof_error(self, open_tok: int, what: str) -> VnnlibError:
        return self.error(
            f"unexpected end of file: unbalanced parentheses, '(' of {what} opened at line "
            f"{self.line_of(open_tok)} is never closed",
            open_tok,
        )

    # ----------------------------------------------------------------------------------------- top level

    def parse(self) -> tuple[list[tuple], list[tuple]]:
        """Parse the whole file; return (common atoms, DNF terms) with DNF = [common + t for t in terms]."""
        toks = self.toks
        if self.n == 0:
            raise VnnlibError("empty file (no declarations or asserts)", path=self.path, line=1)
        asserts: list[list[tuple]] = []
        assert_toks: list[int] = []
        i = 0
        while i < self.n:
            t = toks[i]
            if t != "(":
                if t == ")":
                    raise self.error("unbalanced parentheses: unexpected ')' at top level", i)
                raise self.error("expected '(' to start a command", i)
            head = toks[i + 1]
            if head == "declare-const":
                i = self.parse_declare(i)
            elif head == "assert":
                start = i
                dnf, i = self.parse_bool(i + 2, start)
                if toks[i] != ")":
                    if toks[i] == _EOF:
                        raise self.eof_error(start, "the assert")
                    raise self.error(
                        f"expected ')' to close the assert opened at line {self.line_of(start)} "
                        "(an assert takes exactly one formula)",
                        i,
                    )
                i += 1
                asserts.append(dnf)
                assert_toks.append(start)
            elif head == _EOF:
                raise self.eof_error(i, "a command")
            elif head in ("(", ")"):
                raise self.error("expected a command name after '('", i + 1)
            else:
                raise self.error(
                    f"unknown command {head!r} (only declare-const and assert are supported)", i + 1
                )
        if not asserts:
            raise self.error("no assert in file", self.n - 1)
        if not self.xdecl:
            raise self.error("no input variable X_0 declared", self.n - 1)
        if not self.ydecl:
            raise self.error("no output variable Y_0 declared", self.n - 1)
        self.check_contiguous(self.xdecl, "X", "input")
        self.check_contiguous(self.ydecl, "Y", "output")
        return self.conjoin(asserts, self.n - 1, materialize=False, child_toks=assert_toks)

    def parse_declare(self, i: int) -> int:
        toks = self.toks
        name, sort, close = toks[i + 2], toks[i + 3], toks[i + 4]
        for k, t in enumerate((name, sort, close)):
            if t == _EOF:
                raise self.eof_error(i, "declare-const")
            if t in ("(", ")") and k < 2:
                raise self.error("declare-const expects a variable name and the sort Real", i + 2 + k)
        m = _VAR_RE.fullmatch(name)
        if m is None:
            raise self.error("variable names must be X_<i> (inputs) or Y_<j> (outputs)", i + 2)
        if sort != "Real":
            raise self.error(f"unsupported sort {sort!r} (only Real)", i + 3)
        if close != ")":
            raise self.error("expected ')' to close declare-const", i + 4)
        decl = self.xdecl if m.group(1) == "X" else self.ydecl
        idx = int(m.group(2))
        if idx in decl:
            raise self.error(f"{name} declared twice (first at line {self.line_of(decl[idx])})", i + 2)
        decl[idx] = i + 2
        return i + 5

    def check_contiguous(self, decl: dict[int, int], letter: str, what: str) -> None:
        n = len(decl)
        if max(decl) == n - 1:
            return
        missing = next(k for k in range(n) if k not in decl)
        beyond = min((k for k in decl if k >= n), key=lambda k: decl[k])
        raise self.error(
            f"{what} variables must be numbered {letter}_0..{letter}_{n - 1} without gaps: "
            f"{letter}_{beyond} declared but {letter}_{missing} is not",
            decl[beyond],
        )

    # ----------------------------------------------------------------------------------------- formulas

    def parse_bool(self, i: int, open_tok: int) -> tuple[list[tuple], int]:
        """Parse one boolean formula starting at token ``i`` (explicit stack, no recursion); return its
        DNF and the index of the token after it."""
        toks = self.toks
        stack: list[tuple[str, int, list[list[tuple]]]] = []  # (op, token index of '(', children DNFs)
        while True:
            t = toks[i]
            if t != "(":
                if t == _EOF:
                    raise self.eof_error(open_tok, "the assert")
                if t == ")":
                    if stack:
                        raise self.error(f"'{stack[-1][0]}' needs at least one argument", i)
                    raise self.error("assert needs a formula", i)
                raise self.error("expected '(' to start a formula (and / or / <= / >=)", i)
            op = toks[i + 1]
            if op == "<=" or op == ">=":
                value = self.parse_atom(i)
                i += 5
            elif op == "and" or op == "or":
                stack.append((op, i, []))
                i += 2
                continue
            elif op == _EOF:
                raise self.eof_error(open_tok, "the assert")
            elif op in _UNSUPPORTED_OPS:
                raise self.error(f"unsupported operator {op!r}: {_UNSUPPORTED_OPS[op]}", i + 1)
            elif op == ")":
                raise self.error("empty formula '()'", i + 1)
            elif op == "(":
                raise self.error("expected an operator after '('", i + 1)
            else:
                raise self.error(f"unknown operator {op!r} (only <=, >=, and, or are supported)", i + 1)
            # A formula is complete: hand it to the enclosing and/or, closing those that end here.
            while True:
                if not stack:
                    return value, i
                stack[-1][2].append(value)
                if toks[i] != ")":
                    break
                op, open_i, children = stack.pop()
                i += 1
                if op == "or":
                    value = self.disjoin(children, open_i)
                else:
                    common, terms = self.conjoin(children, open_i, materialize=True)
                    value = terms

    def term(self, i: int, op: str, atom_tok: int) -> tuple[bool, int] | float:
        """Token ``i`` as an atom argument: ``(is_input, index)`` for a declared variable, or a float."""
        t = self.toks[i]
        v = self.terms.get(t)
        if v is None:
            c0 = t[:1]
            if c0 == "X" or c0 == "Y":
                m = _VAR_RE.fullmatch(t)
                if m is None:
                    raise self.error(f"unknown symbol {t!r} (variables are X_<i> / Y_<j>)", i)
                v = (c0 == "X", int(m.group(2)))
            elif _NUM_RE.fullmatch(t):
                v = float(t)
                if not np.isfinite(v):
                    raise self.error(f"number {t} overflows a double", i)
            elif t == "(":
                raise self.error(f"'{op}' takes only variables and numbers (no nested terms)", i)
            elif t == ")":
                raise self.error(f"'{op}' needs exactly two arguments", i)
            elif t == _EOF:
                raise self.eof_error(atom_tok, f"'{op}'")
            else:
                raise self.error(f"unknown symbol {t!r} (expected X_<i>, Y_<j> or a number)", i)
            self.terms[t] = v
        if type(v) is tuple and v[1] not in (self.xdecl if v[0] else self.ydecl):
            raise self.error(f"undeclared variable {t}", i)
        return v

    def parse_atom(self, i: int) -> list[tuple]:
        """``( op t1 t2 )`` at tokens i..i+4 -> DNF of the atom (a one-atom term, _TRUE or _FALSE)."""
        toks = self.toks
        op = toks[i + 1]
        a = self.term(i + 2, op, i)
        b = self.term(i + 3, op, i)
        close = toks[i + 4]
        if close != ")":
            if close == _EOF:
                raise self.eof_error(i, f"'{op}'")
            raise self.error(f"expected ')': '{op}' takes exactly two arguments", i + 4)
        # (<= a b) is s*a - s*b <= 0 with s = +1; (>= a b) the same with s = -1.
        s = 1.0 if op == "<=" else -1.0
        at = i + 1
        if type(a) is float:
            if type(b) is float:
                return _TRUE if (a <= b if s > 0 else a >= b) else _FALSE
            # -s*b <= -s*a
            is_x, k = b
            if is_x:
                return [((_XB, at, (k, s < 0, a + 0.0)),)]
            return [((_YR, at, (((k, -s),), -s * a + 0.0)),)]
        if type(b) is float:
            # s*a <= s*b
            is_x, k = a
            if is_x:
                return [((_XB, at, (k, s > 0, b + 0.0)),)]
            return [((_YR, at, (((k, s),), s * b + 0.0)),)]
        if a == b:
            return _TRUE  # (<= v v) / (>= v v)
        (ax, ka), (bx, kb) = a, b
        if ax and bx:
            raise self.error(
                f"constraint between input variables X_{ka} and X_{kb} is not a box bound (unsupported)", at
            )
        if not ax and not bx:
            return [((_YR, at, (((ka, s), (kb, -s)), 0.0)),)]
        if ax:
            return [((_MX, at, (((ka, s),), ((kb, -s),), 0.0)),)]
        return [((_MX, at, (((kb, -s),), ((ka, s),), 0.0)),)]

    # ----------------------------------------------------------------------------------------- DNF algebra

    def too_large(self, n_terms: int, n_atoms: int, tok: int) -> VnnlibError:
        return self.error(
            f"DNF expansion too large: {n_terms} terms / {n_atoms} atoms "
            f"(limits {MAX_DNF_TERMS} terms, {MAX_DNF_ATOMS} atoms)",
            tok,
        )

    def disjoin(self, children: list[list[tuple]], tok: int) -> list[tuple]:
        out = [t for child in children for t in child]
        if len(out) > MAX_DNF_TERMS:
            raise self.too_large(len(out), sum(len(t) for t in out), tok)
        return out

    def conjoin(
        self, children: list[list[tuple]], tok: int, materialize: bool, child_toks: list[int] | None = None
    ) -> tuple[list[tuple], list[tuple]]:
        """AND of DNFs. Returns (common, terms): the DNF is [common + t for t in terms]; with ``materialize``
        common is folded into the terms (and returned empty). Errors point at ``child_toks[k]`` (the child
        that makes the expansion too large) when given, else at ``tok``."""
        common: list[tuple] = []
        multi: list[tuple[list[tuple], int]] = []
        for k, child in enumerate(children):
            if len(child) == 1:
                common.extend(child[0])
            elif not child:
                return [], []
            else:
                multi.append((child, tok if child_toks is None else child_toks[k]))
        terms: list[tuple] = [()]
        n_atoms = 0
        for child, ctok in multi:
            count = len(terms) * len(child)
            n_atoms = n_atoms * len(child) + len(terms) * sum(len(t) for t in child)
            if count > MAX_DNF_TERMS or n_atoms > MAX_DNF_ATOMS:
                raise self.too_large(count, n_atoms, ctok)
            terms = [a + b for a in terms for b in child]
        if materialize:
            if common:
                total = len(terms) * len(common) + n_atoms
                if total > MAX_DNF_ATOMS:
                    raise self.too_large(len(terms), total, tok)
                head = tuple(common)
                terms = [head + t for t in terms]
            return [], terms
        return common, terms

    # ----------------------------------------------------------------------------------------- assembly

    def build(self, n_inputs: int | None, n_outputs: int | None) -> VnnlibSpec:
        common, terms = self.parse()
        nx, ny = len(self.xdecl), len(self.ydecl)
        self.check_count(self.xdecl, "X", "inputs", n_inputs)
        self.check_count(self.ydecl, "Y", "outputs", n_outputs)

        # Bounds are tightened in Python lists (numpy scalar indexing is slow), converted once per box.
        lo0 = [-np.inf] * nx
        hi0 = [np.inf] * nx
        rows0: list[tuple] = []
        mixed0: list[tuple] = []
        self.apply(common, lo0, hi0, rows0, mixed0)
        base: tuple[np.ndarray, np.ndarray, tuple[bytes, bytes]] | None = None

        groups: dict[tuple[bytes, bytes], Property] = {}
        for term in terms:
            rows, mixed = rows0, mixed0
            if any(atom[0] == _XB for atom in term):
                lo, hi, rows, mixed = lo0.copy(), hi0.copy(), rows0.copy(), mixed0.copy()
                self.apply(term, lo, hi, rows, mixed)
                lo_a, hi_a = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
                self.check_finite(lo_a, hi_a)
                key = (lo_a.tobytes(), hi_a.tobytes())
            else:
                if term:
                    rows, mixed = rows0.copy(), mixed0.copy()
                    self.apply(term, lo0, hi0, rows, mixed)  # no bound atoms: lo0 / hi0 untouched
                if base is None:
                    lo_a, hi_a = np.array(lo0, dtype=np.float64), np.array(hi0, dtype=np.float64)
                    self.check_finite(lo_a, hi_a)
                    base = (lo_a, hi_a, (lo_a.tobytes(), hi_a.tobytes()))
                lo_a, hi_a, key = base
            prop = groups.get(key)
            if prop is None:
                prop = groups[key] = Property(InputBox(lo_a, hi_a), [])
            prop.disjuncts.append(self.disjunct(rows, mixed, nx, ny))
        return VnnlibSpec(path=self.path, n_inputs=nx, n_outputs=ny, properties=list(groups.values()))

    def apply(
        self, atoms: list[tuple] | tuple, lo: list[float], hi: list[float], rows: list, mixed: list
    ) -> None:
        for kind, tok, payload in atoms:
            if kind == _XB:
                i, upper, v = payload
                if upper:
                    if v < hi[i]:
                        hi[i] = v
                elif v > lo[i]:
                    lo[i] = v
                if lo[i] > hi[i]:
                    raise self.error(
                        f"empty input box for X_{i}: lower bound {lo[i]!r} > upper bound {hi[i]!r}", tok
                    )
            elif kind == _YR:
                rows.append(payload)
            else:
                mixed.append(payload)

    def check_finite(self, lo: np.ndarray, hi: np.ndarray) -> None:
        for arr, what in ((lo, "lower"), (hi, "upper")):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                i = int(bad[0])
                raise self.error(
                    f"no {what} bound for input X_{i} (every input needs finite lower and upper bounds)",
                    self.xdecl[i],
                )

    def check_count(self, decl: dict[int, int], letter: str, what: str, expected: int | None) -> None:
        n = len(decl)
        if expected is None or n == expected:
            return
        tok = decl[expected] if n > expected >= 0 else decl[n - 1]
        raise self.error(
            f"spec declares {n} {what} {letter}_0..{letter}_{n - 1} but the model has {expected} {what}", tok
        )

    @staticmethod
    def disjunct(rows: list[tuple], mixed: list[tuple], nx: int, ny: int) -> Disjunct:
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
        return _Parser(text, path).build(n_inputs, n_outputs)
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
