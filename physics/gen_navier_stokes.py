"""2D incompressible Navier-Stokes in vorticity form on the unit torus, pseudo-spectral reference solver.

    w_t + v . grad w = nu Lap w,   v = (psi_y, -psi_x),   -Lap psi = w,   (x, y) in [0, 1)^2

Crank-Nicolson for the viscous term, Heun predictor-corrector for advection, 2/3-rule dealiasing
(the scheme of Li et al.'s FNO data and Neural-Spectral-Methods; Chalapathi et al., ICLR 2024, Sec. 4.2).
"""

from __future__ import annotations

import numpy as np

from physics.errors import PhysicsError


def wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Angular wavenumbers 2*pi*k on an n x n grid, as (kx, ky) arrays broadcast to (n, n//2+1) for rfft2."""
    k = 2.0 * np.pi * np.fft.fftfreq(n, d=1.0 / n)
    kr = 2.0 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)
    kx, ky = np.meshgrid(k, kr, indexing="ij")
    return kx, ky


def grf_2d(n: int, rng: np.random.Generator, length: float = 0.8, base: int | None = None) -> np.ndarray:
    """Zero-mean periodic Gaussian random field with kernel exp(-sum_i sin^2(pi d_i) / (2 l^2)).

    The kernel is stationary and separable on the torus, so its covariance is diagonalised by the FFT:
    w0 = IFFT(sqrt(lambda) FFT(xi)), lambda = FFT of the kernel row (outer product in 2D). It is sampled at
    ``base`` points per side and spectrally interpolated, so the same seed gives the same field at every n.
    """
    m = base or min(n, 64)
    d = np.arange(m) / m
    row = np.exp(-(np.sin(np.pi * d) ** 2) / (2.0 * length**2))
    lam1 = np.clip(np.fft.fft(row).real, 0.0, None)
    lam = np.outer(lam1, lam1)
    xi = rng.standard_normal((m, m))
    w = np.fft.ifft2(np.sqrt(lam) * np.fft.fft2(xi)).real
    w -= w.mean()
    return spectral_resample(w, n) if n != m else w


def spectral_resample(w: np.ndarray, n: int) -> np.ndarray:
    """Resample a periodic field to n x n by zero-padding or truncating its Fourier coefficients."""
    m = w.shape[-1]
    if n == m:
        return w.copy()
    what = np.fft.fftshift(np.fft.fft2(w), axes=(-2, -1))
    out = np.zeros(w.shape[:-2] + (n, n), dtype=complex)
    if n > m:
        s = (n - m) // 2
        out[..., s : s + m, s : s + m] = what
    else:
        s = (m - n) // 2
        out = what[..., s : s + n, s : s + n]
    return np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1))).real * (n * n) / (m * m)


class NavierStokes2D:
    """Pseudo-spectral integrator; ``solve(w0)`` returns vorticity at ``nt`` equispaced times in [0, T]."""

    def __init__(self, n: int, nu: float = 1e-4, t_max: float = 5.0, nt: int = 64, dt: float = 5e-3):
        if n < 8 or n % 2:
            raise PhysicsError(f"Navier-Stokes grid must be even and >= 8, got n={n}")
        self.n, self.nu, self.t_max, self.nt = n, nu, t_max, nt
        frame_dt = t_max / (nt - 1)
        # An integer number of inner steps per stored frame, with dt no larger than requested.
        self.substeps = max(1, int(np.ceil(frame_dt / dt - 1e-9)))
        self.dt = frame_dt / self.substeps
        self.kx, self.ky = wavenumbers(n)
        self.k2 = self.kx**2 + self.ky**2
        self.k2_inv = 1.0 / np.where(self.k2 == 0.0, 1.0, self.k2)
        # 2/3 rule: keep |k_i| < n/3 (integer wavenumbers).
        kmax = (2.0 / 3.0) * (n / 2) * 2.0 * np.pi
        self.dealias = (np.abs(self.kx) < kmax) & (np.abs(self.ky) < kmax)

    def velocity_hat(self, w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """v = (psi_y, -psi_x) with psi_hat = w_hat / |k|^2."""
        psi = w_hat * self.k2_inv
        return 1j * self.ky * psi, -1j * self.kx * psi

    def nonlinear(self, w_hat: np.ndarray) -> np.ndarray:
        """-FFT(v . grad w), dealiased, zero mean."""
        n = self.n
        vx_h, vy_h = self.velocity_hat(w_hat)
        vx = np.fft.irfft2(vx_h, s=(n, n))
        vy = np.fft.irfft2(vy_h, s=(n, n))
        wx = np.fft.irfft2(1j * self.kx * w_hat, s=(n, n))
        wy = np.fft.irfft2(1j * self.ky * w_hat, s=(n, n))
        f = -np.fft.rfft2(vx * wx + vy * wy)
        f = f * self.dealias
        f[..., 0, 0] = 0.0
        return f

    def solve(self, w0: np.ndarray) -> np.ndarray:
        """Integrate w0 (n, n) and return frames w[nt, n, n] (frame 0 is w0 itself)."""
        if w0.shape[-2:] != (self.n, self.n):
            raise PhysicsError(f"initial vorticity has shape {w0.shape}, expected ({self.n}, {self.n})")
        dt, nu = self.dt, self.nu
        a = 1.0 - 0.5 * dt * nu * self.k2
        b = 1.0 / (1.0 + 0.5 * dt * nu * self.k2)
        w_hat = np.fft.rfft2(w0)
        frames = np.empty((self.nt, self.n, self.n))
        frames[0] = w0
        for i in range(1, self.nt):
            for _ in range(self.substeps):
                f1 = self.nonlinear(w_hat)
                pred = (a * w_hat + dt * f1) * b
                f2 = self.nonlinear(pred)
                w_hat = (a * w_hat + 0.5 * dt * (f1 + f2)) * b
            frames[i] = np.fft.irfft2(w_hat, s=(self.n, self.n))
            if not np.all(np.isfinite(frames[i])):
                raise PhysicsError(f"Navier-Stokes integration blew up at frame {i}; reduce dt={dt:g}")
        return frames

    def residual(self, w: np.ndarray) -> np.ndarray:
        """Pointwise residual w_t + v.grad w - nu Lap w (central FD in time, spectral in space)."""
        n = self.n
        w_hat = np.fft.rfft2(w)
        vx_h, vy_h = self.velocity_hat(w_hat)
        vx, vy = np.fft.irfft2(vx_h, s=(n, n)), np.fft.irfft2(vy_h, s=(n, n))
        wx = np.fft.irfft2(1j * self.kx * w_hat, s=(n, n))
        wy = np.fft.irfft2(1j * self.ky * w_hat, s=(n, n))
        lap = np.fft.irfft2(-self.k2 * w_hat, s=(n, n))
        wt = np.gradient(w, self.t_max / (self.nt - 1), axis=0, edge_order=2)
        return wt + vx * wx + vy * wy - self.nu * lap


def enstrophy(w: np.ndarray) -> np.ndarray:
    """Mean of w^2/2 over the torus, per frame."""
    return 0.5 * (w**2).mean(axis=(-2, -1))
