"""Counterexamples: the organizers' validation (VNN-COMP, doc §6.5), the result-file format (§6.4), and
snapping witnesses so that they pass with zero tolerance.

Validation of a witness ``(X, Y)`` for an ONNX model ``f`` and a VNNLIB spec, as the VNN-COMP scripts do it:

1. ``y_ort = onnxruntime(f)(float32(X))``, with ``X`` reshaped (C order) to the model's real input shape
   (the graph input without an initializer; symbolic dims taken as 1);
2. when a claimed ``Y`` is given: ``rel = ||y_ort - Y||_inf / ||Y||_inf`` (0 when ``||Y||_inf < 1e-6``)
   must be ``<= 1e-3`` (:data:`RTOL`);
3. ``X`` (float64, as written) lies in some property's box and the output violates the property, i.e.
   ``A y <= b`` (and ``Ax X + Ay y <= bm`` for mixed rows) for one disjunct: first with zero tolerance
   (``exact``), else with ``atol = 1e-4`` (:data:`ATOL`, "correct up to tolerance").

The spec is checked on the claimed ``Y`` (as the organizers do) *and* on ``y_ort`` (as the newer scoring,
which ignores the file's Y, does), so a witness that passes here passes both ways. ``exact`` additionally
requires ``rel <= 1e-6`` (the organizers' threshold for calling a witness exact).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verify.errors import ClarkeError, ModelError, ShapeError
from verify.vnnlib import VnnlibSpec

__all__ = [
    "ATOL",
    "RTOL",
    "STATUSES",
    "Validation",
    "format_result",
    "onnx_io",
    "parse_result",
    "run_onnxruntime",
    "snap_into_box",
    "validate_counterexample",
]

ATOL = 1e-4
"""Absolute tolerance on box and spec for a witness "correct up to tolerance"."""
RTOL = 1e-3
"""Largest relative l_inf error between onnxruntime's output and the claimed Y."""
EXACT_RTOL = 1e-6
"""Largest relative error for which the organizers still call a witness exact."""
STATUSES = ("sat", "unsat", "timeout", "error", "unknown")
_LEGACY = {"violated": "sat", "holds": "unsat"}  # 2021 result-file words


@dataclass
class Validation:
    """Outcome of :func:`validate_counterexample`.

    ``ok``: accepted (exactly or up to tolerance); ``exact``: accepted with zero tolerance; ``y``: the
    onnxruntime output (float64, flattened) or ``None`` when the model could not be run; ``rel_error``: the
    relative l_inf error against the claimed Y (0 when none was given); ``property_index`` /
    ``disjunct_index``: the first property and disjunct the witness violates (``None`` if none).
    """

    ok: bool
    exact: bool
    y: np.ndarray | None
    message: str
    rel_error: float = 0.0
    property_index: int | None = None
    disjunct_index: int | None = None


# --------------------------------------------------------------------------------------------- onnxruntime


@dataclass(frozen=True)
class _Model:
    session: object  # onnxruntime.InferenceSession
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: type


def _resolve(path: str | os.PathLike) -> tuple[str, int]:
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise ModelError(f"{p}: no such model file") from None
    return str(p.resolve()), st.st_mtime_ns


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int) -> _Model:
    """One InferenceSession per (file, modification time); ``.gz`` files are decompressed."""
    import onnx
    import onnxruntime as ort

    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                model = onnx.load_from_string(f.read())
        else:
            model = onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a valid ONNX file ({type(e).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        raise ModelError(f"{path}: expected one non-constant graph input, found {[i.name for i in real]}")
    inp = real[0]
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1
                  for d in inp.type.tensor_type.shape.dim)
    dtype = np.float64 if inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE else np.float32
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path}: onnxruntime cannot load the model ({str(e).splitlines()[0]})") from None
    return _Model(sess, inp.name, shape, dtype)


def onnx_io(onnx_path: str | os.PathLike) -> tuple[str, tuple[int, ...], type]:
    """``(input name, input shape with symbolic dims = 1, numpy input dtype)`` of the model's real input."""
    m = _load(*_resolve(onnx_path))
    return m.input_name, m.input_shape, m.input_dtype


def run_onnxruntime(onnx_path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """``f(x)`` by onnxruntime: ``x`` (any shape, ``prod(input shape)`` values, C order) is cast to the
    model's input dtype (float32); returns the first output flattened, as float64."""
    m = _load(*_resolve(onnx_path))
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = int(np.prod(m.input_shape))
    if x.size != n:
        raise ShapeError(f"{onnx_path}: {x.size} input values, the model input {m.input_shape} has {n}")
    feed = {m.input_name: x.astype(m.input_dtype).reshape(m.input_shape)}
    out = m.session.run(None, feed)[0]  # type: ignore[attr-defined]
    return np.asarray(out, dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------------------------- validation


def _violation(spec: VnnlibSpec, x: np.ndarray, ys: list[np.ndarray], atol: float) -> tuple[int, int] | None:
    """First ``(property, disjunct)`` with ``x`` in its box and every ``y`` in ``ys`` satisfying the
    disjunct, all within ``atol``; ``None`` if there is none."""
    for pi, prop in enumerate(spec.properties):
        if not prop.box.contains(x, atol):
            continue
        for di, d in enumerate(prop.disjuncts):
            if all(d.holds(x, y, atol) for y in ys):
                return pi, di
    return None


def validate_counterexample(
    onnx_path: str | os.PathLike, spec: VnnlibSpec, x: np.ndarray, y: np.ndarray | None = None
) -> Validation:
    """Check a witness exactly as the VNN-COMP organizers do (module docstring); never raises for a bad
    witness (shape, NaN, wrong Y), only for an unreadable model."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != spec.n_inputs:
        return Validation(False, False, None, f"X has {x.size} values, the spec has {spec.n_inputs} inputs")
    if not np.all(np.isfinite(x)):
        return Validation(False, False, None, "X has non-finite values")
    try:
        y_ort = run_onnxruntime(onnx_path, x)
    except ShapeError as e:
        return Validation(False, False, None, str(e))
    if y_ort.size != spec.n_outputs:
        return Validation(False, False, y_ort,
                          f"the model has {y_ort.size} outputs, the spec {spec.n_outputs}")
    if not np.all(np.isfinite(y_ort)):
        return Validation(False, False, y_ort, "onnxruntime output is not finite")
    ys = [y_ort]
    rel = 0.0
    if y is not None:
        yc = np.asarray(y, dtype=np.float64).reshape(-1)
        if yc.size != y_ort.size:
            return Validation(False, False, y_ort, f"claimed Y has {yc.size} values, the model {y_ort.size}")
        if not np.all(np.isfinite(yc)):
            return Validation(False, False, y_ort, "claimed Y has non-finite values")
        diff = float(np.max(np.abs(y_ort - yc))) if yc.size else 0.0
        norm = float(np.max(np.abs(yc))) if yc.size else 0.0
        rel = 0.0 if norm < 1e-6 else diff / norm
        if rel > RTOL:
            msg = f"claimed Y differs from onnxruntime: l_inf {diff:.3g}, relative {rel:.3g} > {RTOL}"
            return Validation(False, False, y_ort, msg, rel)
        ys.append(yc)
    hit = _violation(spec, x, ys, 0.0)
    if hit is not None and rel <= EXACT_RTOL:
        return Validation(True, True, y_ort, f"valid counterexample (property {hit[0]}, disjunct {hit[1]}, "
                          "zero tolerance)", rel, *hit)
    tol_hit = _violation(spec, x, ys, ATOL)
    if tol_hit is not None:
        msg = (f"valid up to tolerance {ATOL} (property {tol_hit[0]}, disjunct {tol_hit[1]}; "
               f"relative Y error {rel:.3g})")
        return Validation(True, False, y_ort, msg, rel, *tol_hit)
    inside = [i for i, p in enumerate(spec.properties) if p.box.contains(x, ATOL)]
    if not inside:
        return Validation(False, False, y_ort, "X lies outside every input box", rel)
    return Validation(False, False, y_ort, f"X is in box(es) {inside} but the output meets no disjunct", rel)


# --------------------------------------------------------------------------------------------- snapping


def snap_into_box(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Clip ``x`` to ``[lo, hi]`` in float64, then move each value to a float32 number inside the box:
    ``float32(x)`` rounds to nearest, and where that leaves the box it is nudged one float32 ulp toward
    the interior (``np.nextafter``). Returns float64 values that are exactly float32-representable, except
    where no float32 number lies in ``[lo_i, hi_i]`` (then the clipped float64 value is kept)."""
    lo = np.asarray(lo, dtype=np.float64).reshape(-1)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1)
    x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), lo, hi)
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
        up = x32.astype(np.float64) < lo
        x32[up] = np.nextafter(x32[up], np.float32(np.inf))
        down = x32.astype(np.float64) > hi
        x32[down] = np.nextafter(x32[down], np.float32(-np.inf))
    out = x32.astype(np.float64)
    bad = ~((out >= lo) & (out <= hi))
    out[bad] = x[bad]
    return out


# --------------------------------------------------------------------------------------------- result file


def format_result(status: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> str:
    """The VNN-COMP result-file text: the status line and, for ``sat``, ``((X_0 v)\\n (X_1 v)\\n ...
    (Y_0 v)\\n ...)``, each value written as ``repr(float(v))`` (the shortest text reading back to the same
    double)."""
    status = _LEGACY.get(status, status)
    if status not in STATUSES:
        raise ValueError(f"unknown result status {status!r} (expected one of {', '.join(STATUSES)})")
    if status != "sat":
        return status + "\n"
    if x is None or y is None:
        raise ValueError("a sat result needs the counterexample X and its output Y")
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("counterexample values must be finite")
    rows = [f"(X_{i} {float(v)!r})" for i, v in enumerate(xs)]
    rows += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(ys)]
    return "sat\n(" + "\n ".join(rows) + ")\n"


_ENTRY = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def parse_result(text: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """Inverse of :func:`format_result`: ``(status, x, y)``; ``x``/``y`` are float64 arrays for ``sat``
    (``None`` when the file has no assignment) and ``None`` otherwise. Accepts the 2021 words
    ``violated``/``holds``. Raises :class:`~verify.errors.ClarkeError` on a malformed file."""
    lines = text.strip().splitlines()
    if not lines:
        raise ClarkeError("empty result file")
    status = _LEGACY.get(lines[0].strip().lower(), lines[0].strip().lower())
    if status not in STATUSES:
        raise ClarkeError(f"unknown result status {lines[0].strip()!r}")
    body = "\n".join(lines[1:]).strip()
    if status != "sat" or not body:
        return status, None, None
    if not (body.startswith("(") and body.endswith(")")):
        raise ClarkeError("the assignment must be enclosed in one pair of parentheses")
    inner = body[1:-1]
    vals: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for m in _ENTRY.finditer(inner):
        letter, idx = m.group(1), int(m.group(2))
        try:
            v = float(m.group(3))
        except ValueError:
            raise ClarkeError(f"bad number {m.group(3)!r} for {letter}_{idx}") from None
        if idx in vals[letter]:
            raise ClarkeError(f"{letter}_{idx} assigned twice")
        vals[letter][idx] = v
    if _ENTRY.sub("", inner).strip():
        raise ClarkeError(f"unexpected text in the assignment: {_ENTRY.sub('', inner).strip()[:40]!r}")
    out = []
    for letter in "XY":
        d = vals[letter]
        if sorted(d) != list(range(len(d))):
            raise ClarkeError(f"{letter} indices are not 0..{len(d) - 1}")
        out.append(np.array([d[i] for i in range(len(d))], dtype=np.float64))
    return status, out[0], out[1]
