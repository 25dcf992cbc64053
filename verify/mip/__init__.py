"""Exact mixed-integer (MILP) verification of ReLU / MaxPool graphs over an input box (complete verification).

One module per job:

* :mod:`verify.mip.model` -- the MILP as arrays (variables, rows, affine expressions) and its *spread*, the
  scale solver tolerances act on;
* :mod:`verify.mip.encoding` -- the exact big-M encoding over rigorous bounds, with the error of its float64
  maps against the exact network (rounding, frontend weight errors) paid by relaxed rows; LP tightening;
* :mod:`verify.mip.tolerance` -- tolerance profiles and the one margin rule that makes a dual bound sound;
* :mod:`verify.mip.solvers` -- Gurobi / HiGHS back ends (every tolerance set explicitly);
* :mod:`verify.mip.api` -- :func:`mip_bound`, :func:`mip_verify`, :func:`mip_verify_spec`.

This package re-exports the names the rest of Clarke uses (``from verify.mip import encode, mip_verify, ...``).
"""

from verify.mip.api import EVAL_TOL, MipResult, MipVerdict, _crown_lower, mip_bound, mip_verify, mip_verify_spec
from verify.mip.encoding import (
    LINEAR_CACHE_MAX,
    MipEncoding,
    _box,
    _check_supported,
    _float64_copy,
    _intersect,
    _linear,
    _lp_tighten,
    _maxpool,
    _relu,
    _widened,
    encode,
    mip_supported,
)
from verify.mip.model import _Expr, _Model
from verify.mip.solvers import (
    GUROBI_SIZE_LIMIT,
    Backend,
    SolverUnavailable,
    _gurobi_model,
    _gurobi_tolerances,
    _new_highs,
    _Solution,
    _solve,
    installed_backends,
)
from verify.mip.tolerance import FAST, LP, STRICT, Tolerances, fast, lowered

DEFAULT_TOL_MARGIN = FAST.floor
"""Relative floor of the margin on dual bounds of :data:`FAST` solves (``mip_verify``'s ``solver_margin``); the
margin itself follows :mod:`verify.mip.tolerance`."""

__all__ = [
    "DEFAULT_TOL_MARGIN", "EVAL_TOL", "FAST", "GUROBI_SIZE_LIMIT", "LINEAR_CACHE_MAX", "LP", "STRICT", "Backend",
    "MipEncoding", "MipResult", "MipVerdict", "SolverUnavailable", "Tolerances", "_Expr", "_Model", "_Solution",
    "_box", "_check_supported", "_crown_lower", "_float64_copy", "_gurobi_model", "_gurobi_tolerances",
    "_intersect", "_linear", "_lp_tighten", "_maxpool", "_new_highs", "_relu", "_solve", "_widened", "encode",
    "fast", "installed_backends", "lowered", "mip_bound", "mip_supported", "mip_verify", "mip_verify_spec",
]
