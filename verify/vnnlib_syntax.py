"""VNNLIB syntax (VNN-COMP subset): `(declare-const X_i|Y_j Real)`, `(assert B)`; B := (<=|>= t t) | (and|or B+).

:class:`Parser` turns the text into the conjoined asserts' disjunctive normal form over atoms (see the atom kinds
below): input bounds, output rows and mixed rows, each with the token it came from so that
``verify.vnnlib``'s assembly can name the line of an empty box. Variables are declared (sort ``Real``) before
use, once each, numbered without gaps; numbers are decimal literals; comments run from ``;`` to the end of the
line. Every error is a :class:`~verify.errors.VnnlibError` carrying the line of the offending token; the parser
uses no recursion (explicit stack) and caps the DNF size (:data:`MAX_DNF_TERMS`, :data:`MAX_DNF_ATOMS`), so no
input text raises anything else.
"""

from __future__ import annotations

import re
from itertools import islice

import numpy as np

from verify.errors import VnnlibError

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


# An atom is a tuple (kind, token_index, payload):
#   XB: payload (i, is_upper, value)         x_i <= value  /  x_i >= value
#   YR: payload (((j, c), ...), b)           sum c y_j <= b
#   MX: payload (((i, c), ...), ((j, c), ...), b)
XB, YR, MX = 0, 1, 2
_TRUE: list[tuple] = [()]  # DNF with one empty term
_FALSE: list[tuple] = []  # DNF with no term


class Parser:
    """One VNNLIB text: :meth:`parse` returns ``(common atoms, DNF terms)``; ``xdecl`` / ``ydecl`` map each declared
    index to the token of its name, :meth:`error` makes an error naming a token's line."""

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
                return [((XB, at, (k, s < 0, a + 0.0)),)]
            return [((YR, at, (((k, -s),), -s * a + 0.0)),)]
        if type(b) is float:
            # s*a <= s*b
            is_x, k = a
            if is_x:
                return [((XB, at, (k, s > 0, b + 0.0)),)]
            return [((YR, at, (((k, s),), s * b + 0.0)),)]
        if a == b:
            return _TRUE  # (<= v v) / (>= v v)
        (ax, ka), (bx, kb) = a, b
        if ax and bx:
            raise self.error(
                f"constraint between input variables X_{ka} and X_{kb} is not a box bound (unsupported)", at
            )
        if not ax and not bx:
            return [((YR, at, (((ka, s), (kb, -s)), 0.0)),)]
        if ax:
            return [((MX, at, (((ka, s),), ((kb, -s),), 0.0)),)]
        return [((MX, at, (((kb, -s),), ((ka, s),), 0.0)),)]

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
