"""Seeded, disk-cached reference datasets (``.npz``) for validation/test metrics (training is data-free)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from physics.errors import PhysicsError
from physics.gen_diffsorp import DiffSorpConstants, solve_diffsorp
from physics.gen_heat import heat_exact
from physics.gen_navier_stokes import NavierStokes2D, grf_2d

PROBLEMS = ("diffusion-sorption", "navier-stokes", "heat")


def default_cache_dir() -> Path:
    """~/.cache/clarke/pde unless CLARKE_PDE_CACHE is set; never inside the repository."""
    return Path(os.environ.get("CLARKE_PDE_CACHE", Path.home() / ".cache" / "clarke" / "pde"))


def _progress(total: int, label: str, show: bool):
    """A rich progress bar when requested, else a no-op callable."""
    if not show:
        return None
    from rich.console import Console
    from rich.progress import Progress

    prog = Progress(transient=True, console=Console(stderr=True))  # keep stdout clean for --json output
    task = prog.add_task(label, total=total)
    return prog, task


def _generate(n: int, one: Callable[[int], dict[str, np.ndarray]], label: str, progress: bool) -> dict:
    bar = _progress(n, label, progress)
    rows: list[dict[str, np.ndarray]] = []
    if bar is not None:
        bar[0].start()
    try:
        for i in range(n):
            rows.append(one(i))
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _cached(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file
    return data


def diffsorp_dataset(
    n: int,
    nx: int = 1024,
    nt: int = 101,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``n`` solutions from PDEBench's family u0(x) = const ~ U(0, 0.2): keys u[n,nt,nx], u0, x, t."""
    c = DiffSorpConstants()
    path = Path(cache_dir or default_cache_dir()) / f"diffsorp_n{n}_nx{nx}_nt{nt}_s{seed}.npz"

    def build() -> dict[str, np.ndarray]:
        levels = np.random.default_rng(seed).uniform(0.0, 0.2, size=n)

        def one(i: int) -> dict[str, np.ndarray]:
            u, x, t = solve_diffsorp(np.full(nx, levels[i]), nt=nt, constants=c)
            return {"u": u, "u0": u[0], "x": x, "t": t}

        data = _generate(n, one, "diffusion-sorption", progress)
        data["x"], data["t"] = data["x"][0], data["t"][0]
        return data

    return _cached(path, build)


def navier_stokes_dataset(
    n: int,
    res: int = 64,
    nt: int = 64,
    nu: float = 1e-4,
    t_max: float = 5.0,
    seed: int = 0,
    dt: float = 5e-3,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """``n`` vorticity trajectories w[n, nt, res, res] from GRF initial conditions (l = 0.8)."""
    path = Path(cache_dir or default_cache_dir()) / f"ns_n{n}_r{res}_nt{nt}_nu{nu:g}_T{t_max:g}_s{seed}.npz"

    def build() -> dict[str, np.ndarray]:
        solver = NavierStokes2D(res, nu=nu, t_max=t_max, nt=nt, dt=dt)
        rngs = [np.random.default_rng([seed, i]) for i in range(n)]
        data = _generate(n, lambda i: {"u": solver.solve(grf_2d(res, rngs[i]))}, "navier-stokes", progress)
        data["t"] = np.linspace(0.0, t_max, nt)
        data["x"] = np.arange(res) / res
        return data

    return _cached(path, build)


def heat_dataset(
    n: int, nx: int = 64, nt: int = 21, kappa: float = 0.05, modes: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Exact heat solutions with random sine coefficients a_n ~ N(0, 1/n^2); cheap, so not cached."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, modes)) / np.arange(1, modes + 1)
    x = np.linspace(0.0, 1.0, nx)
    t = np.linspace(0.0, 1.0, nt)
    u = np.stack([heat_exact(ai, x, t, kappa) for ai in a])
    return {"u": u, "u0": u[:, 0], "x": x, "t": t, "a": a}


def check_problem(name: str) -> str:
    """Return ``name`` if it is a known problem, else raise PhysicsError listing the valid ones."""
    if name not in PROBLEMS:
        raise PhysicsError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")
    return name
