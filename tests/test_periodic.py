"""Sine and cosine (``verify.ops.periodic``): intervals and relaxation lines hold at many points of random intervals
(narrow, wide, around extrema, far from 0), checked at 50 digits with mpmath."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

from verify.ops.periodic import Cos, Sin

mpmath.mp.dps = 50


def _intervals(rng: np.random.Generator, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    centre = rng.normal(size=48) * rng.choice([0.5, 3.0, 1e3], size=48)
    half = np.abs(rng.normal(size=48)) * rng.choice([1e-7, 0.05, 1.0, 4.0], size=48)
    centre[:3] = [np.pi / 2, -np.pi / 2, 0.0]  # at a maximum, a minimum, a zero
    return torch.tensor(centre - half, dtype=dtype), torch.tensor(centre + half, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op_cls, f", [(Sin, mpmath.sin), (Cos, mpmath.cos)])
def test_lines_and_intervals_hold_at_fifty_digits(op_cls, f, dtype):
    rng = np.random.default_rng(3 if op_cls is Sin else 4)
    lo, hi = _intervals(rng, dtype)
    op = op_cls()
    a_lo, c_lo, a_up, c_up = op.relax(lo, hi)
    ilo, ihi = op.interval((lo, hi))
    for i in range(lo.shape[0]):
        l_, u_ = mpmath.mpf(float(lo[i])), mpmath.mpf(float(hi[i]))
        al, cl, au, cu = (mpmath.mpf(float(t[i])) for t in (a_lo, c_lo, a_up, c_up))
        grid = [l_ + (u_ - l_) * mpmath.mpf(k) / 40 for k in range(41)]
        for x in grid:
            v = f(x)
            assert al * x + cl <= v <= au * x + cu, (i, float(x))
            assert mpmath.mpf(float(ilo[i])) <= v <= mpmath.mpf(float(ihi[i])), (i, float(x))


def test_narrow_intervals_get_tight_lines_and_wide_ones_the_constant_lines():
    lo = torch.tensor([0.3, -10.0], dtype=torch.float64)
    hi = torch.tensor([0.3 + 1e-4, 10.0], dtype=torch.float64)
    a_lo, c_lo, a_up, c_up = Sin().relax(lo, hi)
    assert abs(float(a_lo[0]) - np.cos(0.3)) < 1e-4 and float(c_up[0] - c_lo[0]) < 1e-8
    assert float(a_lo[1]) == 0.0 and -1.0 - 1e-12 <= float(c_lo[1]) <= -1.0 and 1.0 <= float(c_up[1]) <= 1.0 + 1e-12
