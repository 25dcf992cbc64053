"""Hard-constraint layer (PI-HC), the fixed-partition router and the mixture of experts (PI-HC-MoE)."""

import math

import numpy as np
import pytest
import torch

from models.mlp_basis import MLPBasis
from physics.errors import PhysicsError
from physics.gen_heat import heat_exact
from physics.implicit import SolverConfig
from physics.layer import HardConstraint, HardConstraintMoE
from physics.lm import LMConfig
from physics.problems import DiffusionSorption, Fields, Heat, d_dt, make_spec
from physics.router import Router
from tests.helpers import directional_derivatives

TIGHT = SolverConfig(lm=LMConfig(max_iter=100, gtol=1e-12, on_fail="raise"), ridge=1e-6)


def test_heat_hard_constraint_recovers_exact_solution_from_exact_modes():
    spec = Heat(nt=41, nx=33, kappa=0.05)
    x = np.linspace(0, 1, 33)
    t = np.linspace(0, 1, 41)
    a = np.array([[1.0, -0.4, 0.2], [0.3, 0.5, -0.1]])
    # Basis = the exact separable modes; the layer must find the coefficients from the PDE and IC rows alone.
    modes = np.stack([heat_exact(np.eye(3)[n], x, t, 0.05) for n in range(3)], axis=0)  # (N, nt, nx)
    b = torch.tensor(np.broadcast_to(modes, (2, 3, 41, 33)).copy())
    exact = torch.tensor(np.stack([heat_exact(ai, x, t, 0.05) for ai in a]))
    layer = HardConstraint(spec, points=200, solver=TIGHT)
    u, info = layer(b, Fields(exact[:, 0]), step=0, sample_ids=[0, 1])
    assert info.converged.all()
    rel = (u - exact).norm(dim=(1, 2)) / exact.norm(dim=(1, 2))
    assert rel.max() < 1e-3


def test_router_partition_and_seeded_sampling():
    mask = torch.ones(6 * 10, dtype=torch.bool)
    r = Router((6, 10), (2, 3), mask)
    assert r.K == 6
    counts = torch.bincount(r.block_of, minlength=6)
    assert counts.sum() == 60 and counts.min() >= 6
    # Blocks are contiguous rectangles: within a block, t and x ranges do not overlap other blocks.
    ids = r.block_of.reshape(6, 10)
    assert (ids[:3, :4] == 0).all() and (ids[3:, 7:] == 5).all()
    a = r.sample(5, step=3, sample_ids=[7, 8])
    b = r.sample(5, step=3, sample_ids=[8])
    assert torch.equal(a[1], b[0])  # independent of the batch composition
    assert not torch.equal(r.sample(5, step=4, sample_ids=[8])[0], b[0])  # redrawn every step
    assert (r.block_of[a] == torch.arange(6)[None, :, None]).all()  # every point lies in its expert's block


def test_too_many_experts_is_a_clear_error():
    with pytest.raises(PhysicsError, match="too large for grid"):
        Router((5, 8), (1, 9), torch.ones(40, dtype=torch.bool))
    with pytest.raises(PhysicsError, match="fewer than the 16 basis"):
        HardConstraintMoE(DiffusionSorption(nt=5, nx=16), experts=8, points=100, min_points=16)
    with pytest.raises(PhysicsError, match="unknown problem 'burgers'"):
        make_spec("burgers", 10, 10)


def _ds_setup(seed=0):
    torch.manual_seed(seed)
    spec = DiffusionSorption(nt=11, nx=32)
    net = MLPBasis(3, 6, width=16, depth=2, final_activation=True).double()
    data = Fields(torch.tensor([0.05, 0.15], dtype=torch.float64)[:, None].expand(2, 32).clone())
    return spec, net, data


def test_moe_with_one_expert_equals_single_hard_constraint():
    spec, net, data = _ds_setup()
    cfg = SolverConfig(lm=LMConfig(max_iter=100, gtol=1e-12, on_fail="raise"))
    outs, grads = [], []
    for layer in (
        HardConstraint(spec, 150, cfg, omega0=1.0),
        HardConstraintMoE(spec, 1, 150, cfg, omega0=1.0),
    ):
        net.zero_grad()
        u, info = layer(net(spec.inputs(data)), data, step=2, sample_ids=[4, 9])
        r_pde, r_rows = spec.residuals(u, data)
        loss = (r_pde**2).mean() + (r_rows**2).mean()
        loss.backward()
        outs.append(u.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        assert info.converged.all()
    # The acceptance bound is 1e-10; the two paths share their arithmetic, so they agree bit for bit.
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1]) and grads[0].norm() > 0


@pytest.mark.parametrize("problem,experts,seed", [("diffusion-sorption", 2, 3), ("heat", 4, 0)])
def test_moe_gradient_matches_finite_differences(problem, experts, seed):
    spec, net, data = _ds_setup(seed)
    if problem == "heat":
        spec = Heat(nt=11, nx=32)
        data = Fields(torch.sin(torch.pi * spec.x_coords())[None].repeat(2, 1) * torch.tensor([[1.0], [-0.5]]))
    cfg = SolverConfig(lm=LMConfig(max_iter=300, gtol=1e-13, xtol=1e-15, on_fail="raise"))
    layer = HardConstraintMoE(spec, experts, 40, cfg, omega0=1.0)
    params = list(net.parameters())

    def loss_fn():
        u, _ = layer(net(spec.inputs(data)), data, step=0, sample_ids=[0, 1])
        r_pde, r_rows = spec.residuals(u, data)
        return (r_pde**2).mean() + (r_rows**2).mean()

    analytic, fd = directional_derivatives(loss_fn(), loss_fn, params)
    assert math.isclose(analytic, fd, rel_tol=1e-5)


def test_moe_outputs_use_each_experts_coefficients():
    spec, net, data = _ds_setup()
    # A random basis leaves the front expert's solve slow (convergence is tested elsewhere); only the
    # assembly of the experts' predictions matters here.
    cfg = SolverConfig(lm=LMConfig(max_iter=20, on_fail="ignore"))
    layer = HardConstraintMoE(spec, (1, 4), 60, cfg, omega0=1.0)
    b = net(spec.inputs(data))
    u, info = layer(b, data, step=0, sample_ids=[0, 1])
    assert u.shape == (2, 11, 32) and info.converged.shape == (8,) and info.omega.shape == (2, 4, 6)
    for k in range(4):  # expert k owns the x-band [8k, 8k+8)
        ref = torch.einsum("bntx,bn->btx", b[..., 8 * k : 8 * k + 8], info.omega[:, k])
        assert torch.allclose(u[..., 8 * k : 8 * k + 8], ref, rtol=0, atol=1e-12)
    # Experts really differ: the coefficients are not all equal.
    assert (info.omega[:, 0] - info.omega[:, 3]).abs().max() > 1e-3


def test_interface_rows_make_neighbouring_experts_agree():
    spec, net, data = _ds_setup()
    cfg = SolverConfig(lm=LMConfig(max_iter=100, on_fail="ignore"))
    b = net(spec.inputs(data)).detach()
    jumps = {}
    for beta in (0.0, 10.0):
        layer = HardConstraintMoE(spec, 4, 60, cfg, omega0=1.0, interface_weight=beta)
        u, info = layer(b, data, step=0, sample_ids=[0, 1])
        assert info.omega.shape == (2, 4, 6)
        pts, k1, k2 = layer.pairs.unbind(1)
        # Prediction of the point's own expert vs the neighbouring expert at the same point.
        bp = b.movedim(1, -1).reshape(2, -1, 6)[:, pts]
        own = (bp * info.omega[:, k1]).sum(-1)
        other = (bp * info.omega[:, k2]).sum(-1)
        jumps[beta] = (own - other).abs().mean().item()
    assert layer.pairs.shape == (2 * 3 * 11, 3)  # 3 interfaces x 11 time rows x both sides
    assert jumps[10.0] < 0.25 * jumps[0.0]


def test_local_rows_keep_only_each_experts_own_ic_bc_rows():
    spec, net, data = _ds_setup()
    layer = HardConstraintMoE(spec, 4, 60, SolverConfig(), omega0=1.0, local_rows=True)
    mask = layer.row_mask  # (K, q): IC line split into 4 bands; left BC -> expert 0, right BC -> expert 3
    assert mask.shape == (4, 32 + 2 * 10)
    assert mask.sum(0).eq(1).all()  # every row belongs to exactly one expert
    assert mask[0, 32:42].all() and mask[3, 42:].all() and mask[1, 8:16].all()


def test_stencil_features_match_the_finite_difference_formulas_and_their_adjoint():
    """Diffusion-sorption features (hand-written adjoint) equal the slicing formulas of the reference stencils:
    d_dt and the cell-centred Laplacian with ghost values u_{-1} = 1 (offset) and u_n = D (u_{n-2} - u_{n-1}) / dx."""
    spec = DiffusionSorption(nt=7, nx=12, t_max=2.0)
    b = torch.randn(2, 7, 12, 3, dtype=torch.float64, requires_grad=True)
    phi, off = spec.features(b)
    dx, ts = 1.0 / 12, 2.0
    right = spec.constants.D * (b[:, :, -2] - b[:, :, -1]) / dx
    ext = torch.cat([torch.ones_like(b[:, :, :1]), b, right[:, :, None]], dim=2)  # ghost value 1 on the left
    lap = (ext[:, :, 2:] - 2 * ext[:, :, 1:-1] + ext[:, :, :-2]) / dx**2
    want = torch.stack([b, ts * d_dt(b, 2.0 / 6), ts * lap], dim=3).reshape(2, -1, 3, 3)
    assert torch.allclose(phi + off[..., None], want, rtol=1e-12, atol=1e-12)  # the offset is the ghost value
    # Adjoint: <Phi b, G> is differentiated exactly (gradcheck on the custom backward).
    g = torch.randn(phi.shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: (spec.features(x)[0] * g).sum(), (b,))
