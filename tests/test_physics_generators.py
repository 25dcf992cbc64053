"""Reference solvers: diffusion-sorption FV+BDF, Navier-Stokes pseudo-spectral, exact heat, caching."""

import numpy as np
import pytest

from physics.datasets import check_problem, diffsorp_dataset, heat_dataset, navier_stokes_dataset
from physics.errors import PhysicsError
from physics.gen_diffsorp import cell_average, solve_diffsorp
from physics.gen_heat import heat_crank_nicolson, heat_exact
from physics.gen_navier_stokes import NavierStokes2D, enstrophy, grf_2d


def test_diffsorp_bdf_matches_rk45_and_stays_physical():
    u0 = np.full(64, 0.1)
    u_bdf, x, t = solve_diffsorp(u0, nt=21, rtol=1e-8, atol=1e-11)
    u_rk, _, _ = solve_diffsorp(u0, nt=21, method="RK45", rtol=1e-8, atol=1e-11)
    assert np.linalg.norm(u_bdf - u_rk) / np.linalg.norm(u_rk) < 1e-3
    # Maximum principle: values stay in [0, 1] (the outflow u = D u_x drains the right end to 0).
    assert u_bdf.min() >= -1e-8 and u_bdf.max() <= 1.0 + 1e-8
    assert u_bdf[-1, -1] < 0.1
    # Concentration enters from the left boundary: the first cell approaches 1 and exceeds the far end.
    assert u_bdf[-1, 0] > 0.8 and u_bdf[-1, 0] > u_bdf[-1, -1]
    # Monotone in time at the inflow cell (the front only advances).
    assert np.all(np.diff(u_bdf[:, 0]) >= -1e-9)


def test_diffsorp_converges_under_refinement():
    fine, _, _ = solve_diffsorp(np.full(512, 0.05), nt=11)
    errs = []
    for nx in (32, 64, 128):
        u, _, _ = solve_diffsorp(np.full(nx, 0.05), nt=11)
        ref = cell_average(fine, 512 // nx)
        errs.append(np.linalg.norm(u - ref) / np.linalg.norm(ref))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 2e-2


def test_navier_stokes_invariants_and_resolution():
    rng = np.random.default_rng(0)
    w0 = grf_2d(32, rng)
    solver = NavierStokes2D(32, nu=1e-3, t_max=1.0, nt=11, dt=1e-2)
    w = solver.solve(w0)
    assert np.abs(w.mean(axis=(1, 2))).max() < 1e-12  # mean vorticity is conserved (zero)
    ens = enstrophy(w)
    assert np.all(np.diff(ens) <= 1e-12)  # viscosity dissipates enstrophy
    assert ens[-1] < ens[0]
    # The same seed at 64^2 (spectrally interpolated IC) gives the same trajectory.
    w64 = NavierStokes2D(64, nu=1e-3, t_max=1.0, nt=11, dt=1e-2).solve(grf_2d(64, np.random.default_rng(0), base=32))
    assert np.linalg.norm(w64[:, ::2, ::2] - w) / np.linalg.norm(w) < 1e-3
    # The discrete trajectory satisfies the PDE up to the time-differencing error.
    res = solver.residual(w)
    scale = np.abs(np.gradient(w, 0.1, axis=0)).mean()
    assert np.abs(res[2:-2]).mean() / scale < 1e-2


def test_grf_is_seeded_and_zero_mean():
    a = grf_2d(32, np.random.default_rng(3))
    b = grf_2d(32, np.random.default_rng(3))
    assert np.array_equal(a, b) and abs(a.mean()) < 1e-12 and a.std() > 0.1


def test_heat_exact_solution_and_crank_nicolson_convergence():
    a = np.array([1.0, -0.5, 0.25])
    t = np.linspace(0.0, 0.5, 6)
    errs = []
    for nx in (17, 33, 65):
        x = np.linspace(0.0, 1.0, nx)
        exact = heat_exact(a, x, t, 0.1)
        num = heat_crank_nicolson(exact[0], t, 0.1, substeps=4 * (nx - 1))
        errs.append(np.abs(num - exact).max())
    # Second-order: halving dx (and dt) divides the error by about 4.
    assert errs[0] / errs[1] > 3.0 and errs[1] / errs[2] > 3.0
    # The exact solution satisfies u_t = kappa u_xx.
    x = np.linspace(0.0, 1.0, 9)
    eps = 1e-5
    ut = (heat_exact(a, x, np.array([0.2 + eps]), 0.1) - heat_exact(a, x, np.array([0.2 - eps]), 0.1)) / (2 * eps)
    n = np.arange(1, 4)
    uxx = -(a * np.exp(-0.1 * (n * np.pi) ** 2 * 0.2) * (n * np.pi) ** 2) @ np.sin(np.pi * n[:, None] * x)
    assert np.allclose(ut[0], 0.1 * uxx, rtol=1e-6, atol=1e-8)


def test_datasets_are_cached_and_seeded(tmp_path):
    d1 = diffsorp_dataset(2, nx=32, nt=6, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and d1["u"].shape == (2, 6, 32)
    d2 = diffsorp_dataset(2, nx=32, nt=6, seed=1, cache_dir=tmp_path)
    assert np.array_equal(d1["u"], d2["u"])
    ns = navier_stokes_dataset(1, res=16, nt=3, t_max=0.2, seed=0, cache_dir=tmp_path)
    assert ns["u"].shape == (1, 3, 16, 16)
    h = heat_dataset(3, nx=16, nt=5)
    assert h["u"].shape == (3, 5, 16) and np.allclose(h["u"][:, :, [0, -1]], 0.0, atol=1e-12)


def test_bad_problem_name_is_a_clear_error():
    with pytest.raises(PhysicsError, match="unknown problem 'burgers'"):
        check_problem("burgers")


def test_diffsorp_conserves_total_mass_up_to_boundary_fluxes():
    """Finite volumes: d/dt sum_i (u_i + s(u_i)) dx = D [(g_L - u_0) + (g_R - u_{n-1})] / dx,
    with s'(u) = R(u) - 1 the sorbed mass, s(u) = (1-phi)/phi rho_s k_f (u + 1e-6)^n_f."""
    from physics.gen_diffsorp import DiffSorpConstants

    c = DiffSorpConstants()
    nx = 64
    u, _, t = solve_diffsorp(np.full(nx, 0.1), nt=401, rtol=1e-10, atol=1e-13)
    dx = 1.0 / nx
    sorbed = (1 - c.por) / c.por * c.rho_s * c.k_f * (u + 1e-6) ** c.n_f
    mass = (u + sorbed).sum(1) * dx
    g_right = c.D * (u[:, -2] - u[:, -1]) / dx
    flux = c.D * ((1.0 - u[:, 0]) + (g_right - u[:, -1])) / dx
    # Trapezoidal time integral of the boundary fluxes vs the change of total mass, after the initial layer
    # (u jumps from 0.1 to the boundary value 1 at t = 0, a flux spike no frame spacing resolves).
    k = 10
    inflow = np.concatenate([[0.0], np.cumsum(0.5 * (flux[k + 1 :] + flux[k:-1]) * np.diff(t[k:]))])
    change = mass[k:] - mass[k]
    assert change[-1] > 0.5  # mass really enters through the left boundary
    assert np.abs(change - inflow).max() < 1e-4 * change[-1]
