"""The MILP as arrays: box-bounded variables, linear rows, and affine expressions over the variables.

Besides the rows themselves, the model keeps its **spread**: for the exact minimiser ``v*`` of any objective
(an exact execution of the network: integral binaries, rows as the encoding states them), a bound on
``sum_j |v*_j - bound_j| + sum_i slack_i(v*)`` -- every column's distance to the bound a nonbasic column may
sit at, every one-sided row's slack. Each term is what one wrong-signed reduced cost or row dual of size
``delta`` costs a solver's dual bound, so the spread is the scale the solver tolerances act on
(:mod:`verify.mip.tolerance`). Column ranges are added automatically; row slacks by the encoder that knows
them (e.g. ``-l`` for ``z <= h`` of a ReLU), else from the interval activity of the row over the column box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


@dataclass
class _Expr:
    """Affine values of a node: ``value_flat = M @ v[cols] + c`` (``M [numel, len(cols)]``).

    ``err`` (per value, or None for zero): a bound on ``|M v* + c - t|`` at an exact execution ``v*`` of the
    network whose exact value is ``t`` -- the rounding of forming ``M`` and ``c`` in float64, and the frontend's
    representation errors of the weights (``weight_err``)."""

    cols: np.ndarray
    M: np.ndarray
    c: np.ndarray
    err: np.ndarray | None = None

    def pruned(self) -> _Expr:
        keep = np.any(self.M != 0.0, axis=0)
        if bool(keep.all()):
            return self
        return _Expr(self.cols[keep], self.M[:, keep], self.c, self.err)

    def widen(self, cols: np.ndarray) -> np.ndarray:
        """``M`` scattered onto the (sorted, superset) column list ``cols``."""
        if self.cols.shape == cols.shape and bool(np.all(self.cols == cols)):
            return self.M
        out = np.zeros((self.M.shape[0], cols.size))
        out[:, np.searchsorted(cols, self.cols)] = self.M
        return out

    def error(self) -> np.ndarray:
        return np.zeros(self.c.shape) if self.err is None else self.err


@dataclass
class _Model:
    """Variables ``lb <= v <= ub`` (``integer`` marks binaries), rows ``lo <= A v <= hi``, min ``obj . v``;
    ``spread``: the tolerance scale of the module docstring."""

    lb: list[np.ndarray] = field(default_factory=list)
    ub: list[np.ndarray] = field(default_factory=list)
    integer: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    rows_i: list[np.ndarray] = field(default_factory=list)
    rows_j: list[np.ndarray] = field(default_factory=list)
    rows_v: list[np.ndarray] = field(default_factory=list)
    row_lo: list[np.ndarray] = field(default_factory=list)
    row_hi: list[np.ndarray] = field(default_factory=list)
    m: int = 0
    spread: float = 0.0

    def add_vars(self, lb: np.ndarray, ub: np.ndarray, integer: bool = False) -> np.ndarray:
        lb, ub = np.asarray(lb, dtype=np.float64).reshape(-1), np.asarray(ub, dtype=np.float64).reshape(-1)
        idx = np.arange(self.n, self.n + lb.size)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(np.full(lb.size, integer))
        self.n += lb.size
        width = ub - lb
        self.spread += float(width[np.isfinite(width)].sum())  # free columns: the caller adds their range
        return idx

    def add_rows(self, parts: Sequence[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray,
                 slack: np.ndarray | None = None) -> None:
        """Rows ``lo <= sum_parts coef . v[cols] <= hi``. A part ``(cols, dense [R, len(cols)])`` or a
        diagonal part ``(cols [R], vals [R])`` (row ``r`` gets ``vals[r] * v[cols[r]]``). ``slack`` ``[R]``: bounds
        on the rows' slacks at the exact minimiser (module docstring); by default the interval activity's."""
        lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(hi, dtype=np.float64).reshape(-1)
        r = lo.size
        if r == 0:
            return
        first = len(self.rows_i)
        for cols, vals in parts:
            if vals.ndim == 1:
                ii, jj, vv = np.arange(r), cols, vals
            else:
                ii, kk = np.nonzero(vals)
                jj, vv = cols[kk], vals[ii, kk]
            nz = vv != 0.0
            self.rows_i.append(ii[nz] + self.m)
            self.rows_j.append(np.asarray(jj)[nz])
            self.rows_v.append(vv[nz])
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        if slack is None:
            slack = self._interval_slack(first, lo, hi)
        self.spread += float(np.sum(slack))
        self.m += r

    def _interval_slack(self, first: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Largest slack of the rows just added over the column box (equality rows: 0, their duals are free)."""
        ii = np.concatenate(self.rows_i[first:]) - self.m
        jj = np.concatenate(self.rows_j[first:])
        vv = np.concatenate(self.rows_v[first:])
        lb, ub = np.concatenate(self.lb), np.concatenate(self.ub)
        with np.errstate(invalid="ignore"):
            low = np.where(vv > 0, vv * lb[jj], vv * ub[jj])
            high = np.where(vv > 0, vv * ub[jj], vv * lb[jj])
        act_lo = np.bincount(ii, low, minlength=lo.size)
        act_hi = np.bincount(ii, high, minlength=lo.size)
        with np.errstate(invalid="ignore"):
            s = np.maximum(np.where(np.isfinite(hi), hi - act_lo, 0.0), np.where(np.isfinite(lo), act_hi - lo, 0.0))
        return np.where(lo == hi, 0.0, np.maximum(s, 0.0))

    def copy(self) -> _Model:
        out = _Model()
        for name in ("lb", "ub", "integer", "rows_i", "rows_j", "rows_v", "row_lo", "row_hi"):
            setattr(out, name, list(getattr(self, name)))
        out.n, out.m, out.spread = self.n, self.m, self.spread
        return out

    def magnitudes(self) -> np.ndarray:
        """``max(|lb|, |ub|)`` of every column (inf for free ones)."""
        if not self.lb:
            return np.zeros(0)
        return np.maximum(np.abs(np.concatenate(self.lb)), np.abs(np.concatenate(self.ub)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]:
        def cat(xs: list[np.ndarray], dt: type = np.float64) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dtype=dt)

        a = sp.coo_matrix((cat(self.rows_v), (cat(self.rows_i, np.int64), cat(self.rows_j, np.int64))),
                          shape=(self.m, self.n)).tocsr()
        a.sum_duplicates()
        return cat(self.lb), cat(self.ub), cat(self.integer, bool), a, cat(self.row_lo), cat(self.row_hi)

    @property
    def n_binaries(self) -> int:
        return int(sum(int(i.sum()) for i in self.integer))
