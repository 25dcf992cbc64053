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


@dataclass(frozen=True)
class Stencil:
    """A banded linear operator along one axis of b (B, *grid, C): y_i = lo x_{i-1} + mid x_i + hi x_{i+1} for
    0 < i < n - 1, and explicit first and last rows ((column, weight), ...) (negative columns count from the end).
    """

    axis: int
    lo: float
    mid: float
    hi: float
    first: tuple[tuple[int, float], ...] = ()
    last: tuple[tuple[int, float], ...] = ()

    def apply(self, x: Tensor, out: Tensor) -> None:
        """out = A x (same shapes), written in place: no temporaries."""
        a, n = self.axis, x.shape[self.axis]
        inner = out.narrow(a, 1, n - 2)
        torch.mul(x.narrow(a, 0, n - 2), self.lo, out=inner)
        if self.mid:
            inner.add_(x.narrow(a, 1, n - 2), alpha=self.mid)
        inner.add_(x.narrow(a, 2, n - 2), alpha=self.hi)
        for row, entries in ((0, self.first), (n - 1, self.last)):
            o = out.select(a, row).zero_()
            for col, w in entries:
                o.add_(x.select(a, col % n), alpha=w)

    def adjoint(self, g: Tensor, acc: Tensor) -> None:
        """acc += A^T g, in place."""
        a, n = self.axis, g.shape[self.axis]
        inner = g.narrow(a, 1, n - 2)
        acc.narrow(a, 0, n - 2).add_(inner, alpha=self.lo)
        if self.mid:
            acc.narrow(a, 1, n - 2).add_(inner, alpha=self.mid)
        acc.narrow(a, 2, n - 2).add_(inner, alpha=self.hi)
        for row, entries in ((0, self.first), (n - 1, self.last)):
            for col, w in entries:
                acc.select(a, col % n).add_(g.select(a, row), alpha=w)


def central_dt(dt: float, scale: float = 1.0) -> Stencil:
    """scale * d/dt along axis 1: central differences, second-order one-sided at both ends (as d_dt)."""
    c = scale / (2 * dt)
    return Stencil(1, -c, 0.0, c, ((0, -3 * c), (1, 4 * c), (2, -c)), ((-3, c), (-2, -4 * c), (-1, 3 * c)))


class _StencilFeatures(torch.autograd.Function):
    """(B, *grid, C) -> (B, J, *grid, C): feature j = ops[j] applied to b (None: b itself). One output buffer and
    a hand-written adjoint: autograd through slicing would allocate and fill a full-size zero tensor per slice."""

    @staticmethod
    def forward(ctx, b, ops):  # noqa: D401
        out = b.new_empty(b.shape[0], len(ops), *b.shape[1:])
        for j, op in enumerate(ops):
            if op is None:
                out[:, j].copy_(b)
            else:
                op.apply(b, out[:, j])
        ctx.ops, ctx.shape = ops, b.shape
        return out

    @staticmethod
    def backward(ctx, g):
        acc = g.new_zeros(ctx.shape)
        for j, op in enumerate(ctx.ops):
            if op is None:
                acc.add_(g[:, j])
            else:
                op.adjoint(g[:, j], acc)
        return acc, None


def stencil_features(b: Tensor, ops: list[Stencil | None]) -> Tensor:
    """Phi (B, G, J, C) stored feature-major, Phi_j = ops[j] b (linear)."""
    out = _StencilFeatures.apply(b, ops)
    return out.reshape(b.shape[0], len(ops), -1, b.shape[-1]).transpose(1, 2)


@dataclass
class Fields:
    """Per-sample problem data: the initial condition on the spatial grid, shape (B, nx) or (B, nx, ny)."""

    u0: Tensor


class PDESpec:
    """Interface: grid, features(b), pointwise(z), linear_rows(b, data), collocation mask.

    The predicted field is u = u_off + basis(b) . w: ``basis`` (linear, default identity) and ``field_offset``
    (default none) build constraints into the ansatz, e.g. an exact initial condition.
    """

    name: str = ""
    grid: tuple[int, ...] = ()
    extent: tuple[float, ...] = ()  # physical length of each grid axis (time first)

    def basis(self, b: Tensor) -> Tensor:
        """The basis the coefficients multiply, from the backbone's b (B, *grid, N); linear in b."""
        return b

    def field_offset(self, data: Fields) -> Tensor | None:
        """A known part of the field (B, *grid) added to basis(b) . w, or None."""
        return None

    def features(self, b: Tensor) -> tuple[Tensor, Tensor | None]:
        """Phi (B, G, J, N) and offset (B, G, J) or None, from b (B, *grid, N); linear in b. Best stored
        feature-major (a transpose(1, 2) view of (B, J, G, N)), which the layer's gather keeps."""
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
        t = torch.arange(1, nt, device="cpu")
        return torch.cat([torch.arange(nx, device="cpu"), t * nx, t * nx + nx - 1])

    def collocation_mask(self) -> Tensor:
        """(G,) bool: grid points where PDE rows may be sampled."""
        return torch.ones(math.prod(self.grid), dtype=torch.bool, device="cpu")

    def _edge_values(self, b: Tensor) -> tuple[Tensor, ...]:
        """b at the IC line and at the first two and last two cells for t > 0 (1D specs): (B, nx or nt - 1, N).

        One index_select for all of them: its backward is one scatter into the gradient of b, where slicing
        each column would allocate and fill a full-size zero gradient per slice.
        """
        nt, nx = self.grid
        t = torch.arange(1, nt, device=b.device) * nx
        idx = torch.cat([torch.arange(nx, device=b.device), t, t + 1, t + nx - 2, t + nx - 1])
        v = b.reshape(b.shape[0], -1, b.shape[-1]).index_select(1, idx)
        return v.split([nx, nt - 1, nt - 1, nt - 1, nt - 1], dim=1)

    def inputs(self, data: Fields) -> Tensor:
        """Backbone input (B, 3, *grid): normalised t, x and the IC broadcast over time."""
        nt, nx = self.grid
        bsz = data.u0.shape[0]
        # Time is normalised by a fixed reference (the full horizon), so a model trained on t <= 0.8 T sees
        # unseen inputs t / T > 0.8 when it extrapolates, as in the paper's extrapolation test.
        t_ref = getattr(self, "t_ref", None) or self.extent[0]
        dev = data.u0.device
        t = torch.linspace(0.0, self.extent[0] / t_ref, nt, dtype=data.u0.dtype, device=dev)
        t = t.view(1, nt, 1).expand(bsz, nt, nx)
        x = self.x_coords().to(dev, data.u0.dtype).view(1, 1, nx).expand(bsz, nt, nx)
        u0 = data.u0[:, None, :].expand(bsz, nt, nx)
        return torch.stack([t, x, u0], dim=1)

    def x_coords(self) -> Tensor:
        """Spatial coordinates in [0, 1] (host constants, like the masks and row indices: callers move them)."""
        raise NotImplementedError

    def loss_scale(self) -> float:
        """Factor from the unit of the solver's PDE rows to that of the training loss (1: the same)."""
        return 1.0

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

    Time unit of the PDE rows (``residual_unit`` seconds): by default the horizon, so rows are O(1) like the IC
    rows; 1 s gives the paper's rows (u_t - D/R u_xx in seconds, ~1e-3: the solve is dominated by the global
    IC/BC rows). The training loss is always in horizon units (``loss_scale``).
    """

    nt: int = 21
    nx: int = 64
    t_max: float = 500.0
    constants: DiffSorpConstants = field(default_factory=DiffSorpConstants)
    name: str = "diffusion-sorption"
    t_ref: float | None = None  # time normalisation of the backbone input (default t_max)
    smooth_beta: float = 1000.0  # sharpness of the smooth positive part in R(u)
    residual_unit: float | None = None  # seconds per time unit of the PDE rows (default: the horizon)

    def __post_init__(self) -> None:
        if self.nt < 3 or self.nx < 4:
            raise PhysicsError(f"diffusion-sorption grid too small: nt={self.nt}, nx={self.nx}")
        self.grid = (self.nt, self.nx)
        self.extent = (self.t_max, 1.0)

    def x_coords(self) -> Tensor:
        return (torch.arange(self.nx, dtype=torch.float64, device="cpu") + 0.5) / self.nx

    def features(self, b: Tensor) -> tuple[Tensor, Tensor]:
        bsz = b.shape[0]
        dx, dt = 1.0 / self.nx, self.t_max / (self.nt - 1)
        ts = self._row_time_unit()
        # Laplacian on cell centres with ghost cells u_{-1} = 1 (its affine part is the offset) and
        # u_n = D (u_{n-2} - u_{n-1}) / dx, folded into the last row.
        c, r = ts / dx**2, self.constants.D / dx
        lap = Stencil(2, c, -2 * c, c, ((0, -2 * c), (1, c)), ((-2, (1 + r) * c), (-1, -(2 + r) * c)))
        phi = stencil_features(b, [None, central_dt(dt, ts), lap])
        off = torch.zeros(self.nt, self.nx, 3, dtype=b.dtype, device=b.device)
        off[:, 0, 2] = c  # the Dirichlet ghost value 1
        return phi, off.reshape(1, -1, 3).expand(bsz, -1, -1)

    def _row_time_unit(self) -> float:
        """Seconds per time unit of the PDE rows."""
        return self.residual_unit or self.t_ref or self.t_max

    def loss_scale(self) -> float:
        return (self.t_ref or self.t_max) / self._row_time_unit()

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
        b_ic, b_0, b_1, b_m2, b_m1 = self._edge_values(b)
        ic = b_ic / scale[..., None]
        y_ic = data.u0.to(b.dtype) / scale
        left = 2 * b_0 - b_1  # extrapolated ghost value = 1
        ghost_r = 2 * b_m1 - b_m2
        right = ghost_r - self.constants.D * (b_m2 - b_m1) / dx  # = 0
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
        return torch.linspace(0.0, 1.0, self.nx, dtype=torch.float64, device="cpu")

    def features(self, b: Tensor) -> tuple[Tensor, None]:
        c = 1.0 / (1.0 / (self.nx - 1)) ** 2
        uxx = Stencil(2, c, -2 * c, c)  # interior nodes only: the boundary rows are zero
        return stencil_features(b, [central_dt(self.t_max / (self.nt - 1)), uxx]), None

    def pointwise(self, z: Tensor) -> Tensor:
        return z[..., 0] - self.kappa * z[..., 1]

    def collocation_mask(self) -> Tensor:
        m = torch.zeros(self.nt, self.nx, dtype=torch.bool, device="cpu")
        m[:, 1:-1] = True
        return m.reshape(-1)

    def residuals(self, u: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        r, rows = super().residuals(u, data)
        return r * self.collocation_mask().to(r.device), rows

    def linear_rows(self, b: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        b_ic, b_0, _, _, b_m1 = self._edge_values(b)
        L = torch.cat([b_ic, b_0, b_m1], dim=1)
        zeros = torch.zeros(b.shape[0], 2 * (self.nt - 1), dtype=b.dtype, device=b.device)
        return L, torch.cat([data.u0.to(b.dtype), zeros], dim=1)


@dataclass
class NavierStokes(PDESpec):
    """w_t + v . grad w = nu Lap w on the unit torus, v = (psi_y, -psi_x), -Lap psi = w (vorticity form).

    Ansatz w = w0 + sum_n w_n btilde_n with btilde = s (t / T) (b - mean_xy b): the IC holds exactly and the mean
    vorticity stays 0 (Chalapathi et al., ICLR 2024, Sec. 4.2). Features (J = 6), linear in the field: w_t (central
    differences), w_x, w_y, v_x, v_y, Lap w (spectral), so r = w_t + v_x w_x + v_y w_y - nu Lap w is quadratic in w,
    discretised as the reference solver's residual (physics.gen_navier_stokes.NavierStokes2D.residual).
    """

    nt: int = 16
    nx: int = 32
    t_max: float = 5.0
    nu: float = 1e-4
    name: str = "navier-stokes"
    t_ref: float | None = None  # time normalisation of the inputs and of the basis ramp (default t_max)
    basis_scale: float = 0.005

    def __post_init__(self) -> None:
        if self.nt < 3 or self.nx < 4 or self.nx % 2:
            raise PhysicsError(f"navier-stokes grid too small or odd: nt={self.nt}, nx={self.nx}")
        self.grid = (self.nt, self.nx, self.nx)
        self.extent = (self.t_max, 1.0, 1.0)

    def x_coords(self) -> Tensor:
        return torch.arange(self.nx, dtype=torch.float64, device="cpu") / self.nx

    def _times(self, dtype: torch.dtype, device) -> Tensor:
        """t / t_ref at the frames: the same ramp on the training and the (longer) evaluation horizon."""
        return torch.linspace(0.0, self.t_max / (self.t_ref or self.t_max), self.nt, dtype=dtype, device=device)

    def basis(self, b: Tensor) -> Tensor:
        ramp = self._times(b.dtype, b.device).view(1, -1, 1, 1, 1)
        return self.basis_scale * ramp * (b - b.mean(dim=(2, 3), keepdim=True))

    def field_offset(self, data: Fields) -> Tensor:
        return data.u0[:, None].expand(-1, self.nt, -1, -1)

    def features(self, b: Tensor) -> tuple[Tensor, None]:
        bsz, n, nx = b.shape[0], b.shape[-1], self.nx
        k = 2.0 * math.pi * torch.fft.fftfreq(nx, d=1.0 / nx, dtype=torch.float64, device=b.device)
        kr = 2.0 * math.pi * torch.fft.rfftfreq(nx, d=1.0 / nx, dtype=torch.float64, device=b.device)
        kx, ky = k.view(-1, 1, 1), kr.view(1, -1, 1)  # (x, y, N) with the rfft along y, as the solver
        k2 = kx**2 + ky**2
        k2_inv = 1.0 / torch.where(k2 == 0.0, torch.ones_like(k2), k2)
        bh = torch.fft.rfft2(b, dim=(2, 3))

        def spectral(mult: Tensor) -> Tensor:
            return torch.fft.irfft2(bh * mult, s=(nx, nx), dim=(2, 3))

        wt = d_dt(b, self.t_max / (self.nt - 1))
        cols = [wt, spectral(1j * kx), spectral(1j * ky), spectral(1j * ky * k2_inv), spectral(-1j * kx * k2_inv)]
        cols.append(spectral(-k2 + 0j))
        phi = torch.stack(cols, dim=1)  # feature-major storage (see physics.layer.gather_rows)
        return phi.reshape(bsz, 6, -1, n).transpose(1, 2), None

    def pointwise(self, z: Tensor) -> Tensor:
        return z[..., 0] + z[..., 3] * z[..., 1] + z[..., 4] * z[..., 2] - self.nu * z[..., 5]

    def linear_rows(self, b: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        # The ansatz satisfies the IC and the periodic BC exactly: no linear rows.
        return b.new_zeros(b.shape[0], 0, b.shape[-1]), b.new_zeros(b.shape[0], 0)

    def row_points(self) -> Tensor:
        return torch.zeros(0, dtype=torch.long, device="cpu")

    def residuals(self, u: Tensor, data: Fields) -> tuple[Tensor, Tensor]:
        """PDE residual of u and its initial-condition mismatch u(0) - w0 (zero for the hard-constraint ansatz;
        the soft model's IC penalty)."""
        phi, _ = self.features(u[..., None])
        return self.pointwise(phi[..., 0]), (u[:, 0] - data.u0.to(u.dtype)).reshape(u.shape[0], -1)

    def inputs(self, data: Fields) -> Tensor:
        """Backbone input (B, 4, nt, nx, nx): normalised t, x, y and the initial vorticity broadcast over time."""
        bsz, nt, nx = data.u0.shape[0], self.nt, self.nx
        dtype = data.u0.dtype
        t = self._times(dtype, data.u0.device).view(1, nt, 1, 1).expand(bsz, nt, nx, nx)
        xs = self.x_coords().to(data.u0.device, dtype)
        x = xs.view(1, 1, nx, 1).expand(bsz, nt, nx, nx)
        y = xs.view(1, 1, 1, nx).expand(bsz, nt, nx, nx)
        w0 = data.u0[:, None].expand(bsz, nt, nx, nx)
        return torch.stack([t, x, y, w0], dim=1)


PROBLEMS = ("diffusion-sorption", "heat", "navier-stokes")


def problem_dims(name: str) -> tuple[int, int]:
    """(grid dimensions incl. time, backbone input channels) of a problem."""
    return (3, 4) if name == "navier-stokes" else (2, 3)


RESIDUAL_UNITS = ("horizon", "physical")


def make_spec(
    name: str,
    nt: int,
    nx: int,
    t_max: float | None = None,
    t_ref: float | None = None,
    residual_units: str = "horizon",
) -> PDESpec:
    """The spec for a problem name (time horizon ``t_max``, default the problem's), or a PhysicsError.
    Navier-Stokes uses an nx x nx spatial grid. ``residual_units`` "physical" writes diffusion-sorption's PDE
    rows in seconds as the paper does (the other problems' rows are in their physical units already)."""
    if residual_units not in RESIDUAL_UNITS:
        raise PhysicsError(f"unknown residual units {residual_units!r}; choose {' or '.join(RESIDUAL_UNITS)}")
    if name == "diffusion-sorption":
        unit = 1.0 if residual_units == "physical" else None
        return DiffusionSorption(nt=nt, nx=nx, t_max=t_max or 500.0, t_ref=t_ref, residual_unit=unit)
    if name == "heat":
        return Heat(nt=nt, nx=nx, t_max=t_max or 1.0, t_ref=t_ref)
    if name == "navier-stokes":
        return NavierStokes(nt=nt, nx=nx, t_max=t_max or 5.0, t_ref=t_ref)
    raise PhysicsError(f"unknown problem {name!r} for the hard-constraint layer; choose {', '.join(PROBLEMS)}")
