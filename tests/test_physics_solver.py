"""Levenberg-Marquardt convergence and the exact implicit (IFT) gradients of the hard-constraint solve."""

import pytest
import torch

from physics.errors import PhysicsError
from physics.implicit import SolverConfig, solve_nlls, solve_nlls_factored
from physics.lm import LMConfig, lm_solve
from physics.nlls import NLLSProblem, feature_major, hessian, residual


@pytest.fixture(autouse=True)
def float64_default():
    """Everything here is float64; restore the global default so other test modules are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


TIGHT = LMConfig(max_iter=200, gtol=1e-14, xtol=1e-15, on_fail="raise")


def quad(z):
    """r = b w + 0.1 (b w)^2 - t, with z[..., 0] = b w and z[..., 1] = t (carried by the offset)."""
    return z[..., 0] + 0.1 * z[..., 0] ** 2 - z[..., 1]


def toy(p=3, m=40, n=5, q=3, seed=0, noise=0.3):
    """A nonzero-residual problem: targets are f(b w_true) plus noise, so r(w*) != 0."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(p, m, n, generator=g) / n**0.5
    phi = torch.stack([b, torch.zeros_like(b)], dim=2)  # (p, m, 2, n)
    w_true = torch.randn(p, n, generator=g)
    bw = torch.einsum("pmn,pn->pm", b, w_true)
    t = bw + 0.1 * bw**2 + noise * torch.randn(p, m, generator=g)
    offset = torch.stack([torch.zeros_like(t), t], dim=-1)
    L = torch.randn(p, q, n, generator=g)
    y = torch.einsum("pqn,pn->pq", L, w_true)
    return phi, offset, L, y


def test_lm_reaches_zero_residual_and_true_solution():
    phi, offset, L, y = toy(noise=0.0)
    p, n = phi.shape[0], phi.shape[-1]
    w_true = torch.linalg.lstsq(L, y[..., None]).solution[..., 0]  # only used as a scale
    prob = NLLSProblem(phi, offset, L, y, quad, ridge=0.0)
    res = lm_solve(prob, torch.zeros(p, n), TIGHT)
    assert res.converged.all()
    assert res.residual_norm.max() < 1e-10
    assert torch.isfinite(w_true).all() and residual(prob, res.omega).abs().max() < 1e-10


def rosenbrock(z):
    return 10.0 * (z[..., 1] - z[..., 0] ** 2)


def test_lm_solves_rosenbrock_from_several_starts():
    starts = torch.tensor([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0], [-3.0, 5.0]])
    p = starts.shape[0]
    phi = torch.eye(2).expand(p, 1, 2, 2).clone()  # one point with features (w1, w2)
    L = torch.tensor([[[-1.0, 0.0]]]).expand(p, 1, 2).clone()  # second row: 1 - w1
    y = -torch.ones(p, 1)
    res = lm_solve(NLLSProblem(phi, None, L, y, rosenbrock, ridge=0.0), starts, TIGHT)
    assert res.converged.all()
    assert torch.allclose(res.omega, torch.ones(p, 2), atol=1e-10)
    assert len(set(res.iterations.tolist())) > 1  # per-problem masks: problems stop at different iterations


def test_batched_solve_equals_individual_solves():
    phi, offset, L, y = toy(p=4)
    prob = NLLSProblem(phi, offset, L, y, quad)
    batch = lm_solve(prob, torch.zeros(4, 5), TIGHT)
    for i in range(4):
        one = lm_solve(
            NLLSProblem(phi[i : i + 1], offset[i : i + 1], L[i : i + 1], y[i : i + 1], quad),
            torch.zeros(1, 5),
            TIGHT,
        )
        assert torch.allclose(one.omega[0], batch.omega[i], rtol=0, atol=1e-12)
        assert one.iterations[0] == batch.iterations[i]


def test_structured_hessian_equals_autograd_hessian():
    phi, offset, L, y = toy(p=2)
    prob = NLLSProblem(phi, offset, L, y, quad, ridge=1e-2)
    w = torch.randn(2, 5)
    h = hessian(prob, w)
    for i in range(2):
        sub = NLLSProblem(phi[i : i + 1], offset[i : i + 1], L[i : i + 1], y[i : i + 1], quad, ridge=1e-2)
        ref = torch.autograd.functional.hessian(lambda v, s=sub: 0.5 * (residual(s, v[None]) ** 2).sum(), w[i])
        assert torch.allclose(h[i], ref, rtol=1e-12, atol=1e-12)


def _loss(phi, offset, L, y, cfg, c):
    w, _ = solve_nlls(phi, L, y, quad, cfg, offset=offset)
    return (c * w).sum() + 0.5 * (w**2).sum()


@pytest.mark.parametrize("name", ["phi", "offset", "L", "y"])
def test_implicit_gradient_matches_central_finite_differences(name):
    phi, offset, L, y = toy()
    tensors = {"phi": phi, "offset": offset, "L": L, "y": y}
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    c = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    x = tensors[name].clone().requires_grad_(True)
    args = {**tensors, name: x}
    (grad,) = torch.autograd.grad(_loss(args["phi"], args["offset"], args["L"], args["y"], cfg, c), x)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    with torch.no_grad():
        plus = _loss(**{**tensors, name: x + eps * direction}, cfg=cfg, c=c)
        minus = _loss(**{**tensors, name: x - eps * direction}, cfg=cfg, c=c)
    fd = (plus - minus) / (2 * eps)
    analytic = (grad * direction).sum()
    assert torch.allclose(analytic, fd, rtol=1e-5, atol=0.0), (analytic.item(), fd.item())


def test_gradcheck_on_tiny_problem():
    phi, offset, L, y = toy(p=2, m=5, n=2, q=1)
    cfg = SolverConfig(lm=TIGHT, ridge=1e-2)

    def fn(phi, offset, L, y):
        return solve_nlls(phi, L, y, quad, cfg, offset=offset)[0]

    inputs = tuple(t.clone().requires_grad_(True) for t in (phi, offset, L, y))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gauss_newton_backward_is_wrong_at_nonzero_residual():
    phi, offset, L, y = toy(noise=1.0)
    c = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    grads = {}
    for mode in ("exact", "gauss_newton"):
        x = phi.clone().requires_grad_(True)
        cfg = SolverConfig(lm=TIGHT, ridge=1e-3, hessian=mode)
        (grads[mode],) = torch.autograd.grad(_loss(x, offset, L, y, cfg, c), x)
    # Ground truth: central finite differences of the converged solve.
    d = torch.randn(phi.shape, generator=torch.Generator().manual_seed(3))
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    with torch.no_grad():
        fd = (_loss(phi + 1e-6 * d, offset, L, y, cfg, c) - _loss(phi - 1e-6 * d, offset, L, y, cfg, c)) / 2e-6
    exact, gn = (grads["exact"] * d).sum(), (grads["gauss_newton"] * d).sum()
    assert torch.allclose(exact, fd, rtol=1e-5)
    assert abs(gn - fd) / abs(fd) > 1e-2  # the second-order term matters when r(w*) != 0


def test_nonfinite_residual_is_a_clear_error():
    phi, offset, L, y = toy(p=1)
    with pytest.raises(PhysicsError, match="not finite"):
        lm_solve(NLLSProblem(phi, offset, L, y, lambda z: torch.log(z[..., 0])), torch.zeros(1, 5))


def test_nonconvergence_is_reported_with_residual_norm():
    phi, offset, L, y = toy(p=2)
    prob = NLLSProblem(phi, offset, L, y, quad)
    with pytest.warns(RuntimeWarning, match=r"2/2 Levenberg-Marquardt solves did not converge \(max residual norm"):
        lm_solve(prob, torch.zeros(2, 5), LMConfig(max_iter=1))
    with pytest.raises(PhysicsError, match="residual norm"):
        lm_solve(prob, torch.zeros(2, 5), LMConfig(max_iter=1, on_fail="raise"))


def coupled(z):
    """A pointwise residual with mixed second derivatives (as diffusion-sorption's u, u_xx coupling)."""
    return z[..., 1] - torch.exp(-0.5 * z[..., 0] ** 2) * z[..., 2] + 0.1 * z[..., 0] * z[..., 1] - z[..., 3]


def test_closed_form_vjp_equals_autograd_of_the_optimality_condition():
    """The structured backward (closed-form -(dg/dxi)^T lam, H from the solver's J^T J) equals autograd through
    g = J^T r at w* with the exact Hessian, for every input."""
    g = torch.Generator().manual_seed(5)
    p, m, n, q = 2, 30, 4, 3
    phi = torch.randn(p, m, 4, n, generator=g) / n**0.5
    phi[:, :, 3] = 0.0  # the target feature lives in the offset
    offset = torch.zeros(p, m, 4)
    offset[..., 3] = 0.3 * torch.randn(p, m, generator=g)
    L, y = torch.randn(p, q, n, generator=g), torch.randn(p, q, generator=g)
    c = torch.randn(p, n, generator=g)
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    xs = [t.clone().requires_grad_(True) for t in (phi, offset, L, y)]
    w, _ = solve_nlls(xs[0], xs[2], xs[3], coupled, cfg, offset=xs[1])
    got = torch.autograd.grad((c * w).sum(), xs)
    ws = w.detach()
    lam = torch.linalg.solve(hessian(NLLSProblem(phi, offset, L, y, coupled, 1e-3), ws), c)
    ww = ws.clone().requires_grad_(True)
    r = residual(NLLSProblem(*xs[:2], *xs[2:], coupled, 1e-3), ww)
    (gw,) = torch.autograd.grad(0.5 * (r * r).sum(), ww, create_graph=True)
    want = torch.autograd.grad(gw, xs, grad_outputs=-lam)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_block_structured_solve_equals_the_zero_padded_joint_solve():
    """blocks=K (row group k acts on w_k only) gives the same w* and gradients as the dense problem whose
    features are padded with zeros to K N columns, also through coupling rows L."""
    g = torch.Generator().manual_seed(7)
    p, k, mk, n, q = 2, 3, 12, 4, 5
    phi = torch.randn(p, k * mk, 4, n, generator=g) / n**0.5
    phi[:, :, 3] = 0.0
    offset = torch.zeros(p, k * mk, 4)
    offset[..., 3] = 0.3 * torch.randn(p, k * mk, generator=g)
    L, y = torch.randn(p, q, k * n, generator=g), torch.randn(p, q, generator=g)
    c = torch.randn(p, k * n, generator=g)
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    grads, ws = [], []
    for blocked in (True, False):
        xs = [t.clone().requires_grad_(True) for t in (phi, offset, L, y)]
        if blocked:
            w, _ = solve_nlls(xs[0], xs[2], xs[3], coupled, cfg, offset=xs[1], blocks=k)
        else:
            dense = torch.einsum("pkmjn,kl->pkmjln", xs[0].reshape(p, k, mk, 4, n), torch.eye(k))
            w, _ = solve_nlls(dense.reshape(p, k * mk, 4, k * n), xs[2], xs[3], coupled, cfg, offset=xs[1])
        ws.append(w.detach())
        grads.append(torch.autograd.grad((c * w).sum(), xs))
    assert torch.allclose(ws[0], ws[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("blocks", [1, 3])
def test_feature_major_storage_gives_the_same_solve_and_gradients(blocks):
    """phi stored feature-major (a transposed view of (P, J, m, N), as the layer gathers it) solves and
    differentiates like the row-major tensor, also block-structured, and its gradient keeps the storage."""
    g = torch.Generator().manual_seed(11)
    p, m, n, q = 3, 36, 4, 3
    phi = torch.randn(p, m, 4, n, generator=g) / n**0.5
    phi[:, :, 3] = 0.0
    offset = torch.zeros(p, m, 4)
    offset[..., 3] = 0.3 * torch.randn(p, m, generator=g)
    L, y = torch.randn(p, q, blocks * n, generator=g), torch.randn(p, q, generator=g)
    c = torch.randn(p, blocks * n, generator=g)
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    outs = []
    for fm in (False, True):
        x = phi.transpose(1, 2).contiguous().transpose(1, 2) if fm else phi.clone()
        assert (feature_major(x) is not None) == fm
        xs = [t.clone().requires_grad_(True) for t in (offset, L, y)]
        x.requires_grad_(True)
        w, res = solve_nlls(x, xs[1], xs[2], coupled, cfg, offset=xs[0], blocks=blocks)
        grads = torch.autograd.grad((c * w).sum(), [x, *xs])
        if fm:
            assert feature_major(grads[0]) is not None
        outs.append((w.detach(), res.iterations, grads))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-14)
    assert torch.equal(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_factored_backward_equals_autograd_through_the_features():
    """solve_nlls_factored (the phi gradient handed to an adjoint as two row fields) gives the gradients of
    solve_nlls applied to phi = make_phi(src) with autograd through make_phi, for src, offset, L and y."""
    g = torch.Generator().manual_seed(13)
    p, m, n, q, s = 2, 30, 4, 3, 5
    A = torch.randn(p, m, 4, n, s, generator=g) / (n * s) ** 0.5
    A[:, :, 3] = 0.0

    def make_phi(src):
        return torch.einsum("pmjns,ps->pmjn", A, src)

    def adjoint(qf, pf, w, lam):
        return torch.einsum("pmjns,pmj,pn->ps", A, qf, w) + torch.einsum("pmjns,pmj,pn->ps", A, pf, lam)

    src = torch.randn(p, s, generator=g)
    offset = torch.zeros(p, m, 4)
    offset[..., 3] = 0.3 * torch.randn(p, m, generator=g)
    L, y = torch.randn(p, q, n, generator=g), torch.randn(p, q, generator=g)
    c = torch.randn(p, n, generator=g)
    cfg = SolverConfig(lm=TIGHT, ridge=1e-3)
    w0 = torch.zeros(p, n)
    outs = []
    for factored in (True, False):
        xs = [t.clone().requires_grad_(True) for t in (src, offset, L, y)]
        if factored:
            w, _ = solve_nlls_factored(xs[0], make_phi, adjoint, xs[2], xs[3], coupled, w0, cfg, offset=xs[1])
        else:
            w, _ = solve_nlls(make_phi(xs[0]), xs[2], xs[3], coupled, cfg, offset=xs[1], omega0=w0)
        outs.append((w.detach(), torch.autograd.grad((c * w).sum(), xs)))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
