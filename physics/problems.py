"""PDE specifications for the hard-constraint layer: linear feature maps + pointwise residual + IC/BC rows.

A spec maps the basis b (B, *grid, N) to global features Phi (B, G, J, N) (+ affine offsets), a pointwise
residual f(z) and linear rows (L, y). Derivative features are taken on the global grid before any partition,
so stencils at expert edges see their neighbours (Chalapathi et al., ICLR 2024, Sec. 3-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from physics.errors import PhysicsError
from physics.gen_diffsorp import DiffSorpConstants


def d_dt(u: Tensor, dt: float) -> Tensor:
    """Central differences along dim 1 (time), second-order one-sided at both ends."""
    mid = (u[:, 2:] - u[:, :-2]) / (2 * dt)
    first = (-3 * u[:, :1] + 4 * u[:, 1:2] - u[:, 2:3]) / (2 * dt)
    last = (3 * u[:, -1:] - 4 * u[:, -2:-1] + u[:, -3:-2]) / (2 * dt)
    return torch.cat([first, mid, last], dim=1)


@dataclass
class Fields:
    """Per-sample problem data: the initial condition on the spatial grid, shape (B, nx)."""

    u0: Tensor


class PDESpec:
    """Interface: grid, features(b), pointwise(z), linear_rows(b, data), collocation mask."""

    name: str = ""
    grid: tuple[int, ...] = ()
    extent: tuple[float, ...] = ()  # physical length of each grid axis (time first)

    def features(self, b: Tensor) -> tuple[Tensor, Tensor | None]:
        """Phi (B, G, J, N) and offset (B, G, J) or None, from b (B, *grid, N)."""
        raise NotImplementedError

    def pointwise(self, z: Tensor) -> Tensor:
        """Pointwise PDE residual f(z), z (..., J) -> (...)."""
        raise NotImplementedError

    def linear_rows(self, b: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        """IC/BC rows (L (B, q, N), y (B, q)) evaluated with the same w as the PDE rows."""
        raise NotImplementedError

    def row_points(self) -> Tensor:
        """(q,) flat grid index each IC/BC row refers to, in linear_rows order: IC line, left and right
        boundary traces for t > 0 (the layout shared by the 1D specs)."""
        nt, nx = self.grid
        t = torch.arange(1, nt)
        return torch.cat([torch.arange(nx), t * nx, t * nx + nx - 1])

    def collocation_mask(self) -> Tensor:
        """(G,) bool: grid points where PDE rows may be sampled."""
        return torch.ones(math.prod(self.grid), dtype=torch.bool)

    def inputs(self, data: Fields) -> Tensor:
        """Backbone input (B, 3, *grid): normalised t, x and the IC broadcast over time."""
        nt, nx = self.grid
        bsz = data.u0.shape[0]
        # Time is normalised by a fixed reference (the full horizon), so a model trained on t <= 0.8 T sees
        # unseen inputs t / T > 0.8 when it extrapolates, as in the paper's extrapolation test.
        t_ref = getattr(self, "t_ref", None) or self.extent[0]
        t = torch.linspace(0.0, self.extent[0] / t_ref, nt, dtype=data.u0.dtype)
        t = t.view(1, nt, 1).expand(bsz, nt, nx)
        x = self.x_coords().to(data.u0.dtype).view(1, 1, nx).expand(bsz, nt, nx)
        u0 = data.u0[:, None, :].expand(bsz, nt, nx)
        return torch.stack([t, x, u0], dim=1)

    def x_coords(self) -> Tensor:
        """Spatial coordinates in [0, 1]."""
        raise NotImplementedError

    def residuals(self, u: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        """PDE residual on the full grid (B, G) and the IC/BC row residuals (B, q) of a field u (B, *grid)."""
        phi, off = self.features(u[..., None])
        z = phi[..., 0] if off is None else phi[..., 0] + off
        L, y = self.linear_rows(u[..., None], data)
        return self.pointwise(z), L[..., 0] - y


@dataclass
class DiffusionSorption(PDESpec):
    """u_t = D/R(u) u_xx on cell centres, time scaled by t_max (residual t_max (u_t - D/R u_xx)).

    The x-Laplacian is the finite-volume stencil of the reference solver with ghost cells u_{-1} = 1 and
    u_n = D (u_{n-2} - u_{n-1}) / dx (PDEBench), so the affine ghost value 1 enters as an offset. IC rows are
    relative, (u(0, x) - u0) / max(u0, 0.05); BC rows state the same ghost relations by linear extrapolation.
    """

    nt: int = 21
    nx: int = 64
    t_max: float = 500.0
    constants: DiffSorpConstants = field(default_factory=DiffSorpConstants)
    name: str = "diffusion-sorption"
    t_ref: float | None = None  # time normalisation of the backbone input (default t_max)
    smooth_beta: float = 1000.0  # sharpness of the smooth positive part in R(u)

    def __post_init__(self) -> None:
        if self.nt < 3 or self.nx < 4:
            raise PhysicsError(f"diffusion-sorption grid too small: nt={self.nt}, nx={self.nx}")
        self.grid = (self.nt, self.nx)
        self.extent = (self.t_max, 1.0)

    def x_coords(self) -> Tensor:
        return (torch.arange(self.nx, dtype=torch.float64) + 0.5) / self.nx

    def _lap(self, b: Tensor) -> tuple[Tensor, Tensor]:
        dx = 1.0 / self.nx
        right = self.constants.D * (b[:, :, -2] - b[:, :, -1]) / dx
        ext = torch.cat([torch.zeros_like(b[:, :, :1]), b, right[:, :, None]], dim=2)
        lap = (ext[:, :, 2:] - 2 * ext[:, :, 1:-1] + ext[:, :, :-2]) / dx**2
        off = torch.zeros(self.nt, self.nx, dtype=b.dtype, device=b.device)
        off[:, 0] = 1.0 / dx**2  # the Dirichlet ghost value 1
        return lap, off

    def features(self, b: Tensor) -> tuple[Tensor, Tensor]:
        bsz, n = b.shape[0], b.shape[-1]
        dt = self.t_max / (self.nt - 1)
        lap, off_lap = self._lap(b)
        # Time in units of the horizon: the residual rows are O(1), comparable with the relative IC rows.
        ts = self.t_ref or self.t_max
        phi = torch.stack([b, ts * d_dt(b, dt), ts * lap], dim=3)
        off = torch.zeros(self.nt, self.nx, 3, dtype=b.dtype, device=b.device)
        off[..., 2] = ts * off_lap
        return phi.reshape(bsz, -1, 3, n), off.reshape(1, -1, 3).expand(bsz, -1, -1)

    def pointwise(self, z: Tensor) -> Tensor:
        c = self.constants
        # The power is real only for u > -1e-6. A clamp at 0 (as the reference solver) puts kinks in 1/2||r||^2
        # where LM stalls and the IFT gradient is undefined; a smooth positive part equals u to 0.2% for
        # u >= 0.005 (below the solutions' range except the outflow corner) and keeps r twice differentiable.
        pos = torch.nn.functional.softplus(z[..., 0], beta=self.smooth_beta)
        r = 1.0 + c.sorption * (pos + 1e-6) ** (c.n_f - 1.0)
        return z[..., 1] - c.D / r * z[..., 2]

    def linear_rows(self, b: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        dx = 1.0 / self.nx
        scale = torch.clamp(data.u0.abs(), min=0.05).to(b.dtype)  # guard small u0 in the relative IC rows
        ic = b[:, 0] / scale[..., None]
        y_ic = data.u0.to(b.dtype) / scale
        bt = b[:, 1:]
        left = 2 * bt[:, :, 0] - bt[:, :, 1]  # extrapolated ghost value = 1
        ghost_r = 2 * bt[:, :, -1] - bt[:, :, -2]
        right = ghost_r - self.constants.D * (bt[:, :, -2] - bt[:, :, -1]) / dx  # = 0
        L = torch.cat([ic, left, right], dim=1)
        ones = torch.ones(b.shape[0], self.nt - 1, dtype=b.dtype, device=b.device)
        y = torch.cat([y_ic, ones, torch.zeros_like(ones)], dim=1)
        return L, y


@dataclass
class Heat(PDESpec):
    """u_t = kappa u_xx on nodes x in [0, 1], t in [0, 1]; linear, with the exact sine-series solution.

    PDE rows only at interior nodes; IC rows u(0, x) = u0(x); BC rows u(t, 0) = u(t, 1) = 0.
    """

    nt: int = 21
    nx: int = 32
    kappa: float = 0.05
    name: str = "heat"
    t_max: float = 1.0
    t_ref: float | None = None

    def __post_init__(self) -> None:
        if self.nt < 3 or self.nx < 4:
            raise PhysicsError(f"heat grid too small: nt={self.nt}, nx={self.nx}")
        self.grid = (self.nt, self.nx)
        self.extent = (self.t_max, 1.0)

    def x_coords(self) -> Tensor:
        return torch.linspace(0.0, 1.0, self.nx, dtype=torch.float64)

    def features(self, b: Tensor) -> tuple[Tensor, None]:
        bsz, n = b.shape[0], b.shape[-1]
        dx = 1.0 / (self.nx - 1)
        uxx = torch.zeros_like(b)
        uxx[:, :, 1:-1] = (b[:, :, 2:] - 2 * b[:, :, 1:-1] + b[:, :, :-2]) / dx**2
        phi = torch.stack([d_dt(b, self.t_max / (self.nt - 1)), uxx], dim=3)
        return phi.reshape(bsz, -1, 2, n), None

    def pointwise(self, z: Tensor) -> Tensor:
        return z[..., 0] - self.kappa * z[..., 1]

    def collocation_mask(self) -> Tensor:
        m = torch.zeros(self.nt, self.nx, dtype=torch.bool)
        m[:, 1:-1] = True
        return m.reshape(-1)

    def residuals(self, u: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        r, rows = super().residuals(u, data)
        return r * self.collocation_mask().to(r.device), rows

    def linear_rows(self, b: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        L = torch.cat([b[:, 0], b[:, 1:, 0], b[:, 1:, -1]], dim=1)
        zeros = torch.zeros(b.shape[0], 2 * (self.nt - 1), dtype=b.dtype, device=b.device)
        return L, torch.cat([data.u0.to(b.dtype), zeros], dim=1)


def make_spec(name: str, nt: int, nx: int, t_max: float | None = None, t_ref: float | None = None) -> PDESpec:
    """The spec for a problem name (time horizon ``t_max``, default the problem's), or a PhysicsError."""
    if name == "diffusion-sorption":
        return DiffusionSorption(nt=nt, nx=nx, t_max=t_max or 500.0, t_ref=t_ref)
    if name == "heat":
        return Heat(nt=nt, nx=nx, t_max=t_max or 1.0, t_ref=t_ref)
    raise PhysicsError(f"unknown problem {name!r} for the hard-constraint layer; choose diffusion-sorption or heat")
