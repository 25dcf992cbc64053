"""Shared test fixtures: the VNN-COMP data location and random network factories."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VNNCOMP = REPO.parent / "shared" / "data" / "vnncomp"


def vnncomp_dir() -> Path:
    if not VNNCOMP.is_dir():
        pytest.skip(f"VNN-COMP data not found at {VNNCOMP} (third-party data is read from ../shared/data)")
    return VNNCOMP


@pytest.fixture
def vnncomp() -> Path:
    return vnncomp_dir()


def pytest_configure(config) -> None:
    # The engine's tensors here are small: one intra-op thread avoids synchronisation costs that make
    # two threads slower on a 2-core machine (tests that need more set it themselves and restore it).
    import torch

    torch.set_num_threads(1)
