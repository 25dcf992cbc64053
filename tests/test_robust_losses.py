"""Oracles for robust_train's losses: DONE's weights and normaliser, TRADES / MART / GAIRAT / MAIL against hand
computations, PGD's threat set, certified (IBP / CROWN-IBP) loss gradients, the barrier hypergradient."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robust_train import losses as L
from robust_train.apgd import threat_box
from robust_train.attacks import pgd
from robust_train.barrier import implicit_losses
from robust_train.certified import CertifiedLoss, margin_spec, worst_case_logits
from robust_train.config import TrainConfig
from robust_train.distributed import Collective
from robust_train.done import DoneNormaliser, done_loss, done_weights, dro_value, update_direct
from robust_train.methods import Batch, build_method

D = torch.float64


def _losses(seed: int = 0, n: int = 16, scale: float = 2.0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


# ---------------------------------------------------------------------------------------------------- DONE


@pytest.mark.parametrize("r", [0.1, 0.5, 1.0, 5.0])
def test_done_weights_are_softmax_and_maximise_the_kl_dro_objective(r):
    l = _losses()
    w = done_weights(l, r)
    torch.testing.assert_close(w, torch.softmax(l / r, 0), rtol=0, atol=1e-15)
    assert abs(float(w.sum()) - 1) < 1e-14
    # The normaliser at tau = 1 is the batch mean: its weights are n softmax(l / r).
    norm = DoneNormaliser(r, 1.0)
    norm.update(l)
    torch.testing.assert_close(norm.weights(l) / l.numel(), w, rtol=1e-13, atol=0)
    # softmax(l / r) maximises w^T l - r KL(w || U), and the maximum is r logmeanexp(l / r).
    n = l.numel()

    def objective(v):
        return float(v @ l - r * (v * torch.log(n * v)).sum())

    best = objective(w)
    assert abs(best - float(dro_value(l, r))) < 1e-12
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        v = torch.distributions.Dirichlet(torch.ones(n, dtype=D)).sample()
        v = 0.5 * v + 0.5 * torch.softmax(l / r + 0.3 * torch.randn(n, generator=gen, dtype=D), 0)
        assert objective(v) <= best + 1e-12


def test_done_weights_invariant_to_a_constant_and_their_limits():
    l = _losses(3)
    for r in (0.2, 1.0, 3.0):
        torch.testing.assert_close(done_weights(l + 7.5, r), done_weights(l, r), rtol=1e-12, atol=0)
        a, b = DoneNormaliser(r, 1.0), DoneNormaliser(r, 1.0)
        a.update(l)
        b.update(l + 7.5)
        torch.testing.assert_close(b.weights(l + 7.5), a.weights(l), rtol=1e-12, atol=0)
    uniform = torch.full_like(l, 1 / l.numel())
    torch.testing.assert_close(done_weights(l, 1e6), uniform, rtol=1e-5, atol=0)
    torch.testing.assert_close(done_weights(l, math.inf), uniform, rtol=0, atol=0)
    one_hot = F.one_hot(l.argmax(), l.numel()).to(D)
    for r in (1e-3, 1e-4, 1e-6):
        torch.testing.assert_close(done_weights(l, r), one_hot, rtol=0, atol=1e-12)


def test_done_no_overflow_for_small_r_and_large_losses():
    gen = torch.Generator().manual_seed(2)
    norm = DoneNormaliser(1e-3, 0.5)
    for k in range(5):
        l = 50 + torch.randn(32, generator=gen, dtype=D) + k  # l / r ~ 5e4: exp overflows in any precision
        norm.update(l)
        w = norm.weights(l)
        assert torch.isfinite(w).all() and (w >= 0).all()
        assert float(w.max()) <= 32 / 0.5 * (1 + 1e-12)  # after updating with the batch, w_i <= n / tau
        assert math.isfinite(norm.log_u)
    for dtype in (torch.float32, torch.float64):  # the float32 path computes its weights in float64 too
        norm = DoneNormaliser(1e-3, 1.0)
        l = (50 + torch.randn(8, generator=gen, dtype=D)).to(dtype)
        norm.update(l)
        w = norm.weights(l)
        assert w.dtype == dtype and torch.isfinite(w).all()
        torch.testing.assert_close(w.double() / 8, torch.softmax(l.double() / 1e-3, 0), rtol=1e-6, atol=1e-30)
    assert math.isinf(update_direct(None, 50 + torch.zeros(4, dtype=D), 1e-3, 1.0))  # why log space


def test_done_tau_one_gives_the_batch_mean_and_log_space_agrees_with_direct():
    r = 0.7
    norm = DoneNormaliser(r, 1.0)
    for seed in range(3):
        l = _losses(seed)
        norm.update(l)
        assert abs(math.exp(norm.log_u) - float(torch.exp(l / r).mean())) <= 1e-14 * math.exp(norm.log_u)
    for tau in (0.1, 0.5, 0.9):
        log_space, u = DoneNormaliser(r, tau), None
        for seed in range(6):
            l = _losses(seed, n=8 + seed)
            log_space.update(l)
            u = update_direct(u, l, r, tau)
            assert abs(math.exp(log_space.log_u) - u) <= 1e-13 * u
        # the first batch sets tau = 1
        first = DoneNormaliser(r, tau)
        first.update(_losses(0))
        assert abs(math.exp(first.log_u) - float(torch.exp(_losses(0) / r).mean())) < 1e-13


def _tiny(dtype=D, seed=0, inputs=6, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 12), nn.ReLU(), nn.Linear(12, classes)).to(dtype)


def _batch(x, y, eps, noise_seed=0, kappa=1.0, beta=1.0, progress=1.0):
    def noise(kind):
        g = torch.Generator().manual_seed(noise_seed)
        if kind == "normal":
            return 0.001 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        return (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * eps
    return Batch(x, y, x.shape[0], eps, kappa, beta, progress, noise)


@pytest.mark.parametrize("inner", ["pgd", "ibp"])
def test_done_with_r_inf_is_exactly_the_base_loss(inner):
    """r = inf: weights exactly 1, so DONE's loss and gradient equal PGD-AT's (IBP's for the certified inner)
    bit for bit."""
    x = torch.rand(20, 1, 2, 3, dtype=D)
    y = torch.randint(0, 4, (20,))
    results = []
    for method in ("done", "pgd-at" if inner == "pgd" else "ibp"):
        model = _tiny()
        cfg = TrainConfig(method=method, inner=inner, r=math.inf, model="mlp-small", pgd_steps=3)
        m = build_method(cfg, model, (1, 2, 3), Collective())
        res = m(_batch(x, y, 0.1, kappa=0.5))
        res.loss.backward()
        results.append((res.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for ga, gb in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(ga, gb)


def test_done_burn_in_is_pgd_at_until_reweighting_starts_and_keeps_the_normaliser_warm():
    """``reweight_start``: before it DONE's step equals PGD-AT's bit for bit while its normaliser tracks the losses;
    from it on the weights are the usual ones."""
    x = torch.rand(20, 1, 2, 3, dtype=D)
    y = torch.randint(0, 4, (20,))
    losses = {}
    for method, start in (("done", 0.5), ("pgd-at", None), ("done", 0.0)):
        model = _tiny()
        cfg = TrainConfig(method=method, r=0.5, model="mlp-small", pgd_steps=3, reweight_start=start)
        m = build_method(cfg, model, (1, 2, 3), Collective())
        before = m(_batch(x, y, 0.1, progress=0.25)).loss.detach()
        losses[(method, start)] = (before, m)
    assert torch.equal(losses[("done", 0.5)][0], losses[("pgd-at", None)][0])
    assert not torch.equal(losses[("done", 0.0)][0], losses[("pgd-at", None)][0])
    burned, fresh = losses[("done", 0.5)][1], losses[("done", 0.0)][1]
    assert burned.normaliser.state_dict() == fresh.normaliser.state_dict()  # both saw the same losses
    after = burned(_batch(x, y, 0.1, progress=0.75)).loss.detach()
    again = fresh(_batch(x, y, 0.1, progress=0.75)).loss.detach()
    assert torch.equal(after, again)


def test_done_loss_is_the_weighted_mean():
    l = _losses(5).requires_grad_(True)
    norm = DoneNormaliser(0.5, 1.0)
    loss = done_loss(l, norm, l.numel())
    torch.testing.assert_close(loss, (torch.softmax(l.detach() / 0.5, 0) * l).sum(), rtol=1e-13, atol=0)
    loss.backward()  # stop-gradient weights: d loss / d l_i = w_i / n
    torch.testing.assert_close(l.grad, torch.softmax(l.detach() / 0.5, 0), rtol=1e-13, atol=0)


# -------------------------------------------------------------------------------- TRADES, MART, GAIRAT, MAIL


def _softmax_np(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_trades_and_mart_against_hand_computed_values():
    zc = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    za = np.array([[1.0, 1.5, -0.5], [-0.2, 0.9, 0.4]])
    y = np.array([0, 2])
    beta = 6.0
    want_trades, want_mart = [], []
    for i in range(2):
        p, q = _softmax_np(zc[i]), _softmax_np(za[i])
        ce_clean = -math.log(p[y[i]])
        kl = sum(p[k] * (math.log(p[k]) - math.log(q[k])) for k in range(3))
        want_trades.append(ce_clean + beta * kl)
        other = max(q[k] for k in range(3) if k != y[i])
        bce = -math.log(q[y[i]]) - math.log(1.0001 - other + 1e-12)
        kl_m = sum(p[k] * (math.log(p[k]) - math.log(q[k] + 1e-12)) for k in range(3))
        want_mart.append(bce + beta * kl_m * (1.0000001 - p[y[i]]))
    tc, ta, ty = torch.tensor(zc), torch.tensor(za), torch.tensor(y)
    torch.testing.assert_close(L.trades(tc, ta, ty, beta), torch.tensor(want_trades, dtype=D), rtol=1e-12, atol=0)
    torch.testing.assert_close(L.mart(tc, ta, ty, beta), torch.tensor(want_mart, dtype=D), rtol=1e-10, atol=0)
    # both terms carry gradient (TRADES and MART differentiate through the clean branch too)
    tc.requires_grad_(True)
    ta.requires_grad_(True)
    (L.trades(tc, ta, ty, beta).sum() + L.mart(tc, ta, ty, beta).sum()).backward()
    assert tc.grad.abs().sum() > 0 and ta.grad.abs().sum() > 0


def test_gairat_and_mail_weights_against_hand_computed_values():
    kappa = torch.tensor([0, 3, 5, 10])
    w = L.gairat_weights(kappa, 10, -1.0)
    want = [(math.tanh(-1.0 + (5 - k) * 5 / 5) + 1) / 2 for k in (0, 3, 5, 10)]
    torch.testing.assert_close(w, torch.tensor(want, dtype=D), rtol=1e-14, atol=0)
    assert (w[:-1] > w[1:]).all()  # fewer steps to flip (smaller kappa): closer to the boundary, more weight
    z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=D)
    y = torch.tensor([0, 0])
    got = L.mail_weights(z, y, -1.5, 1.0)
    want = []
    for i in range(2):
        p = _softmax_np(z[i].numpy())
        pm = p[0] - max(p[1:])
        want.append(3.0 / (1 + math.exp(-(1.0 * (-pm - 1.5)))))
    torch.testing.assert_close(got, torch.tensor(want, dtype=D), rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", ["ce", "kl", "callable"])
def test_pgd_never_leaves_the_ball_or_the_box(dtype, loss):
    model = _tiny(dtype, inputs=16, classes=5)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=gen, dtype=dtype)
    x[:8] = 0.0
    x[8:16] = 1.0  # pixels on the box's faces
    y = torch.randint(0, 5, (64,), generator=gen)
    fn = (lambda z, t: -z.gather(1, t[:, None]).squeeze(1)) if loss == "callable" else loss
    model.eval()
    for eps in (1 / 255, 0.1, 0.3, 0.7):
        for step in (None, 0.05, 1.0):  # a huge step overshoots: the projection must catch it
            xa = pgd(model, x, y, eps, steps=5, step_size=step, loss=fn, generator=gen)
            assert xa.dtype == dtype and not xa.requires_grad
            assert float((xa.double() - x.double()).abs().max()) <= eps  # exactly, in real arithmetic
            assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert not model.training  # mode left as it was
    assert all(p.grad is None for p in model.parameters())
    model.train()
    pgd(model, x, y, 0.1, steps=2)
    assert model.training


def test_pgd_increases_the_loss_and_is_seeded():
    torch.manual_seed(0)
    model = _tiny(torch.float32, inputs=16, classes=5)
    x = torch.rand(128, 1, 4, 4)
    y = torch.randint(0, 5, (128,))
    xa = pgd(model, x, y, 0.2, steps=10, generator=torch.Generator().manual_seed(3))
    assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y) + 0.05
    xb = pgd(model, x, y, 0.2, steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(xa, xb)
    lo, hi = threat_box(x, 0.2)
    assert torch.equal(pgd(model, x, y, 0.0), x) and (lo <= x).all() and (x <= hi).all()


# ------------------------------------------------------------------------------------------- certified losses


def test_margin_spec_and_worst_case_logits():
    y = torch.tensor([0, 2, 1])
    C = margin_spec(y, 3, D)
    z = torch.tensor([[3.0, 1.0, 0.5], [0.0, 1.0, 2.0], [1.0, 4.0, -1.0]], dtype=D)
    m = torch.einsum("bsk,bk->bs", C, z)
    torch.testing.assert_close(m, torch.tensor([[2.0, 2.5], [2.0, 1.0], [3.0, 5.0]], dtype=D))
    wc = worst_case_logits(m, y)
    # exact margins give logits shifted by -z_y: the same CE
    torch.testing.assert_close(wc, z - z.gather(1, y[:, None]))
    torch.testing.assert_close(F.cross_entropy(wc, y), F.cross_entropy(z, y))


def _cnn(dtype=D):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)


@pytest.mark.parametrize("method,beta", [("ibp", 1.0), ("crown-ibp", 1.0), ("crown-ibp", 0.4)])
def test_certified_loss_gradients_reach_every_parameter_and_match_finite_differences(method, beta):
    model = _cnn()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 5, 5, generator=gen, dtype=D)
    y = torch.randint(0, 4, (6,), generator=gen)
    loss_fn = CertifiedLoss(model, (1, 5, 5), method)

    def total():
        return loss_fn(x, y, 0.05, 0.3, beta)[0].mean()

    loss = total()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    for g in grads:
        assert g.abs().sum() > 0, "a parameter gets no gradient"
    # directional central differences along random directions (all parameters at once), and per tensor
    h = 1e-6
    for k in range(3):
        dirs = [torch.randn(p.shape, generator=gen, dtype=D) for p in params]
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(h * d)
            up = float(total())
            for p, d in zip(params, dirs, strict=True):
                p.sub_(2 * h * d)
            down = float(total())
            for p, d in zip(params, dirs, strict=True):
                p.add_(h * d)
        fd = (up - down) / (2 * h)
        an = float(sum((g * d).sum() for g, d in zip(grads, dirs, strict=True)))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (k, fd, an)


def test_certified_loss_at_kappa_one_is_cross_entropy_and_bounds_are_sound():
    model = _cnn()
    x = torch.rand(5, 1, 5, 5, dtype=D)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss_fn = CertifiedLoss(model, (1, 5, 5), "crown-ibp")
    per, logits, robust = loss_fn(x, y, 0.1, 1.0)
    torch.testing.assert_close(per, F.cross_entropy(model(x), y, reduction="none"))
    assert robust is None
    m = loss_fn.margins(x, y, 0.1, beta=1.0)
    true = torch.einsum("bsk,bk->bs", margin_spec(y, 4, D), model(x))
    assert (m <= true).all()  # lower bounds on the margins at the centre
    assert (loss_fn.margins(x, y, 0.1, beta=0.0) <= true).all()


# ------------------------------------------------------------------------------------------- barrier (opt-in)


def test_barrier_implicit_hypergradient_matches_finite_differences():
    """On a smooth 3-input softmax model the inner problem is solved to machine precision by Newton's method;
    grad (l + s) from implicit_losses equals d/dtheta l(theta, d*(theta)) by central differences."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(D)
    x = torch.tensor([[0.3, 0.6, 0.5], [0.45, 0.2, 0.7]], dtype=D)
    y = torch.tensor([1, 2])
    eps, c = 0.2, 0.05

    def solve(m):
        low, high = threat_box(x, eps)
        lo, hi = low - x, high - x
        d = torch.zeros_like(x)
        for _ in range(60):
            def phi(dd, i):
                return (-F.cross_entropy(m(x[i:i + 1] + dd), y[i:i + 1])
                        - c * (torch.log(hi[i] - dd) + torch.log(dd - lo[i])).sum())
            for i in range(2):
                di = d[i].clone()
                f = functools.partial(phi, i=i)
                g = torch.autograd.functional.jacobian(f, di)
                H = torch.autograd.functional.hessian(f, di)
                step = torch.linalg.solve(H, g)
                t = 1.0
                while True:  # stay strictly inside the box
                    cand = di - t * step
                    if ((cand > lo[i]) & (cand < hi[i])).all():
                        break
                    t /= 2
                d[i] = cand
        return d.detach()

    d = solve(model)
    per, extra = implicit_losses(model, x, y, d, eps, c=c, cg_iters=20)
    assert float(extra.detach().abs().max()) == 0.0
    params = list(model.parameters())
    grads = torch.autograd.grad((per + extra).sum(), params, retain_graph=True)
    naive = torch.autograd.grad(per.sum(), params)
    gen = torch.Generator().manual_seed(1)
    h = 1e-5
    for _ in range(2):
        dirs = [torch.randn(p.shape, generator=gen, dtype=D) for p in params]

        def value(sign, dirs=dirs):
            with torch.no_grad():
                for p, dd in zip(params, dirs, strict=True):
                    p.add_(sign * h * dd)
            v = float(F.cross_entropy(model(x + solve(model)), y, reduction="sum").detach())
            with torch.no_grad():
                for p, dd in zip(params, dirs, strict=True):
                    p.sub_(sign * h * dd)
            return v

        fd = (value(1) - value(-1)) / (2 * h)
        an = float(sum((g * dd).sum() for g, dd in zip(grads, dirs, strict=True)))
        # the implicit term matters: without it the directional derivative is off
        an_naive = float(sum((g * dd).sum() for g, dd in zip(naive, dirs, strict=True)))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (fd, an)
        assert abs(fd - an_naive) > 1e-4
