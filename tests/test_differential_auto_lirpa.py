"""Differential tests against auto_LiRPA 0.7.1, the reference implementation of CROWN (slow; skipped without it).

auto_LiRPA is a peer tool, vendored read-only at ``../shared/peers/auto_LiRPA`` (BSD-3); it is imported from
there (or from wherever a ``.pth`` file in the venv puts it, see ``benchmarks/bounds_speed.py``), never copied.
Its run-time needs come with ``pip install -e ".[bench]"``. Without it every test here is skipped with the reason.

Same relaxation, same numbers. On random float64 ReLU MLPs and a small CNN, over batches of boxes that leave
few to most ReLUs unstable, Clarke's IBP and CROWN bounds must equal auto_LiRPA's to float tolerance
(``|clarke - lirpa| <= 1e-7 (1 + |lirpa|)``), and Clarke is never the tighter one by more than round-off
(Clarke may add rigorous rounding margins, so it may be wider, never narrower). What makes the relaxations equal:

* ReLU lower slope: Clarke's CROWN default is 1 if ``u >= -l`` else 0; auto_LiRPA's "adaptive" default is 1 if
  ``u / (u - l) > 0.5``, i.e. ``u > -l``. They differ only on exact ties ``u == -l`` (both slopes are sound),
  which random boxes never hit.
* Clarke intersects CROWN bounds (intermediate and final) with interval bounds; auto_LiRPA does so with
  ``compare_crown_with_ibp=True``. Both then run CROWN only for neurons that interval bounds leave unstable.

Where the two differ, the tests say which is wrong: both tools' bounds must contain the network's value at
sampled points (centre, uniform, vertices, and points found by projected gradient steps on each output), and on
tiny MLPs the exact output range, computed independently of both tools by enumerating the feasible ReLU
activation regions with one LP each (scipy/HiGHS) and re-evaluating the network at each LP optimiser.

Found so far (details in the tests):

* With a spec matrix ``C``, auto_LiRPA is tighter, by up to 40 % of the width on these nets: both tools
  intersect CROWN with an interval bound of ``C f(x)``, but auto_LiRPA folds ``C`` into the last linear layer
  before interval propagation (``C W h + C b``) where Clarke applies ``C`` to the interval of ``f(x)``. Both are
  sound (samples and exact ranges agree); on the net with ``C`` folded in, Clarke equals auto_LiRPA again.
* auto_LiRPA's plain-CROWN bound of ``x ** 2`` / ``torch.pow(x, 2)`` is unsound on same-sign intervals
  (``[1, 4]``: upper bound 13.75 < 16 = 4 ** 2): its upper line is the tangent at the midpoint, which lies
  below a convex function. ``x * x`` and ``torch.square`` are sound. Clarke has no ``pow`` yet.
* auto_LiRPA crashes on float64 nets in two places (its default ``C`` and its alpha-CROWN bookkeeping are made
  with the default dtype, float32); the helpers below pass a float64 ``C`` and run alpha-CROWN under a float64
  default dtype.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.zoo import mlp
from verify import bound, from_torch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

PEER_DIR = Path(__file__).resolve().parents[2] / "shared" / "peers" / "auto_LiRPA"
RTOL = 1e-7  # |clarke - lirpa| <= RTOL (1 + |lirpa|): same relaxation, float64 round-off and rounding margins
TINY = 1e-12  # Clarke may be tighter than auto_LiRPA by at most TINY (1 + |lirpa|) (round-off only)
SOUND_TOL = 1e-12  # a bound may miss a sampled float64 value by at most SOUND_TOL (1 + |value|)
DT = torch.float64


# ------------------------------------------------------------------------------------------------ the peer


def _load_peer():
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation warnings from its import
            import auto_LiRPA
        return auto_LiRPA, ""
    except ImportError as e:
        first = f"{type(e).__name__}: {e}"
    if not PEER_DIR.is_dir():
        return None, f"{first}; and {PEER_DIR} does not exist"
    sys.path.append(str(PEER_DIR))
    for name in [m for m in sys.modules if m == "auto_LiRPA" or m.startswith("auto_LiRPA.")]:
        del sys.modules[name]
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation warnings from its import
            import auto_LiRPA
    except Exception as e:  # noqa: BLE001 - any import failure means: skip, with the reason
        return None, f"importing it from {PEER_DIR} failed: {type(e).__name__}: {e} (pip install -e \".[bench]\")"
    return auto_LiRPA, ""


@pytest.fixture(scope="module")
def lirpa():
    mod, reason = _load_peer()
    if mod is None:
        pytest.skip(f"auto_LiRPA not available: {reason}")
    import logging
    logging.getLogger("auto_LiRPA").setLevel(logging.WARNING)
    return mod


class Peer:
    """auto_LiRPA on one float64 net, configured for Clarke's relaxation (see the module docstring)."""

    def __init__(self, lirpa, net: nn.Module, shape: tuple[int, ...], compare_crown_with_ibp: bool = True,
                 optimize: dict | None = None):
        self.lirpa = lirpa
        opts = {"compare_crown_with_ibp": compare_crown_with_ibp, "verbosity": 0}
        if optimize is not None:
            opts["optimize_bound_args"] = optimize
        with contextlib.redirect_stdout(io.StringIO()):
            self.module = lirpa.BoundedModule(net, torch.zeros(1, *shape, dtype=DT), bound_opts=opts)

    def bound(self, lo, hi, method: str, C=None):
        b = lo.shape[0]
        if C is None:  # auto_LiRPA's default C is float32 and fails against float64 weights
            k = self.module.final_node().output_shape[1:].numel()
            C = torch.eye(k, dtype=DT)
        C = C.expand(b, *C.shape) if C.dim() == 2 else C
        x = self.lirpa.BoundedTensor((lo + hi) / 2, self.lirpa.PerturbationLpNorm(x_L=lo, x_U=hi))
        name = {"ibp": "IBP", "crown": "backward", "alpha-crown": "CROWN-Optimized"}[method]
        old = torch.get_default_dtype()
        try:  # its alpha-CROWN keeps best bounds in default-dtype tensors
            torch.set_default_dtype(DT)
            with contextlib.redirect_stdout(io.StringIO()):
                lower, upper = self.module.compute_bounds(x=(x,), C=C, method=name)
        finally:
            torch.set_default_dtype(old)
        return lower.detach(), upper.detach()


# ------------------------------------------------------------------------------------------------ nets


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(96, 16), nn.ReLU(), nn.Linear(16, 3))


ARCHS = {
    "mlp-4-16-16-3": (lambda: mlp([4, 16, 16, 3]), (4,)),
    "mlp-6-32-32-32-5": (lambda: mlp([6, 32, 32, 32, 5]), (6,)),
    "cnn-1x8x8": (cnn, (1, 8, 8)),
}
SEEDS = range(4)
EPS = (0.05, 0.3, 1.0)  # few, many, most ReLUs unstable
CASES = [(a, s) for a in ARCHS for s in SEEDS]


def make(arch: str, seed: int):
    factory, shape = ARCHS[arch]
    torch.manual_seed(seed)
    net = factory().to(DT).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(2, *shape, dtype=DT) * 2 - 1
    return net, shape, x


def samples(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """Network values ``[B, P, K]`` at the box centre, ``n`` uniform points and vertices (all of them when the
    input has at most 10 entries, else 256 random ones), per box."""
    g = torch.Generator().manual_seed(seed)
    b, shape = lo.shape[0], lo.shape[1:]
    d = int(torch.Size(shape).numel())
    t = torch.rand(b, n, d, generator=g, dtype=DT)
    if d <= 10:
        v = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=DT).expand(b, -1, -1)
    else:
        v = torch.randint(0, 2, (b, 256, d), generator=g).to(DT)
    t = torch.cat([torch.full((b, 1, d), 0.5, dtype=DT), t, v], dim=1)
    lo_f, hi_f = lo.reshape(b, 1, d), hi.reshape(b, 1, d)
    x = lo_f + t * (hi_f - lo_f)
    with torch.no_grad():
        return net(x.reshape(-1, *shape)).reshape(b, x.shape[1], -1)


def attacked(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, steps: int = 40, starts: int = 4,
             seed: int = 0) -> torch.Tensor:
    """Network values ``[B, P, K]`` at points found by projected sign-gradient ascent / descent on every output
    (``starts`` random starts each): true values near the extremes, which uniform samples rarely reach in many
    dimensions."""
    g = torch.Generator().manual_seed(seed)
    b, shape = lo.shape[0], lo.shape[1:]
    k = int(net(lo[:1]).numel())
    lo_r, hi_r = lo.unsqueeze(1), hi.unsqueeze(1)
    out = []
    for j in range(k):
        for sgn in (1.0, -1.0):
            x = lo_r + torch.rand(b, starts, *shape, generator=g, dtype=DT) * (hi_r - lo_r)
            step = (hi_r - lo_r) / 4
            for _ in range(steps):
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    obj = sgn * net(x.reshape(-1, *shape))[:, j].sum()
                    (grad,) = torch.autograd.grad(obj, x)
                x = torch.minimum(torch.maximum(x + step * grad.sign(), lo_r), hi_r)
                step = step * 0.85
            with torch.no_grad():
                out.append(net(x.reshape(-1, *shape)).reshape(b, starts, k))
    return torch.cat(out, dim=1)


def violations(lower, upper, values) -> str:
    """'' when ``lower <= values <= upper`` (within SOUND_TOL), else how far the worst value lies outside."""
    tol = SOUND_TOL * (1 + values.abs())
    below = (lower.unsqueeze(1) - values - tol).amax().item()
    above = (values - upper.unsqueeze(1) - tol).amax().item()
    if below <= 0 and above <= 0:
        return ""
    return f"a true value lies {max(below, 0):.3g} below the lower / {max(above, 0):.3g} above the upper bound"


def assert_same(name, c_lo, c_hi, l_lo, l_hi, net=None, lo=None, hi=None):
    """Clarke's bounds equal auto_LiRPA's to RTOL, and Clarke is never tighter than round-off. On failure,
    say which tool's bound excludes sampled true values."""
    scale_lo, scale_hi = 1 + l_lo.abs(), 1 + l_hi.abs()
    diff = max(((c_lo - l_lo).abs() / scale_lo).max().item(), ((c_hi - l_hi).abs() / scale_hi).max().item())
    tighter = max(((c_lo - l_lo) / scale_lo).max().item(), ((l_hi - c_hi) / scale_hi).max().item())
    if diff <= RTOL and tighter <= TINY:
        return
    msg = f"{name}: max relative difference {diff:.3g}, Clarke tighter by up to {tighter:.3g}"
    if net is not None:
        vals = torch.cat([samples(net, lo, hi), attacked(net, lo, hi)], dim=1)
        msg += (f"; sampled check: Clarke {violations(c_lo, c_hi, vals) or 'contains all samples'}, "
                f"auto_LiRPA {violations(l_lo, l_hi, vals) or 'contains all samples'}")
    pytest.fail(msg)


# ------------------------------------------------------------------------------------------------ equality


@pytest.mark.parametrize(("arch", "seed"), CASES)
def test_ibp_and_crown_equal_auto_lirpa(lirpa, arch, seed):
    net, shape, x = make(arch, seed)
    graph, peer = from_torch(net, shape), Peer(lirpa, net, shape)
    assert graph.dtype == DT
    for eps in EPS:
        lo, hi = x - eps, x + eps
        for method in ("ibp", "crown"):
            c_lo, c_hi = bound(graph, lo, hi, method=method)
            l_lo, l_hi = peer.bound(lo, hi, method)
            assert c_lo.dtype == DT
            assert_same(f"{arch} seed {seed} eps {eps} {method}", c_lo, c_hi, l_lo, l_hi, net, lo, hi)


def test_crown_relaxation_is_exercised():
    """The equality cases are not vacuous: the boxes leave ReLUs unstable and CROWN beats IBP."""
    for arch in ARCHS:
        net, shape, x = make(arch, 0)
        graph = from_torch(net, shape)
        for eps in EPS:
            lo, hi = x - eps, x + eps
            i_lo, i_hi = bound(graph, lo, hi, method="ibp")
            c_lo, c_hi = bound(graph, lo, hi, method="crown")
            assert (c_hi - c_lo).sum() < (i_hi - i_lo).sum()
        # the widest box leaves some first-layer ReLU unstable for every net
        z_lo, z_hi = _first_layer_interval(net, x - EPS[-1], x + EPS[-1])
        assert ((z_lo < 0) & (z_hi > 0)).any()


def _first_layer_interval(net, lo, hi):
    layer = net[0]
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            c, r = layer(mid), rad @ layer.weight.abs().T
        else:
            c = layer(mid)
            r = nn.functional.conv2d(rad, layer.weight.abs(), stride=layer.stride, padding=layer.padding)
    return c - r, c + r


# ------------------------------------------------------------------------------------------------ spec matrix


def _fold(net: nn.Sequential, C: torch.Tensor) -> nn.Sequential:
    """The same net with ``C`` multiplied into its last linear layer: outputs ``C f(x)``."""
    out = copy.deepcopy(net)
    last = out[-1]
    new = nn.Linear(last.in_features, C.shape[0]).to(DT)
    with torch.no_grad():
        new.weight.copy_(C @ last.weight)
        new.bias.copy_(C @ last.bias)
    out[-1] = new
    return out


@pytest.mark.parametrize(("arch", "seed"), [c for c in CASES if c[0] != "mlp-6-32-32-32-5"])
def test_spec_matrix_difference_is_the_interval_of_C_f(lirpa, arch, seed):
    """With a spec matrix, auto_LiRPA's interval bound folds C into the last layer and may beat Clarke's
    (C applied to the interval of f). Clarke must be sound and never tighter; on the folded net it is equal."""
    net, shape, x = make(arch, seed)
    C = torch.randn(4, net[-1].out_features, generator=torch.Generator().manual_seed(seed), dtype=DT)
    graph, folded = from_torch(net, shape), from_torch(_fold(net, C), shape)
    peer = Peer(lirpa, net, shape)
    for eps in EPS:
        lo, hi = x - eps, x + eps
        c_lo, c_hi = bound(graph, lo, hi, C=C, method="crown")
        f_lo, f_hi = bound(folded, lo, hi, method="crown")
        l_lo, l_hi = peer.bound(lo, hi, "crown", C=C)
        assert_same(f"{arch} seed {seed} eps {eps} crown, C folded into the net", f_lo, f_hi, l_lo, l_hi)
        tol_lo, tol_hi = TINY * (1 + l_lo.abs()), TINY * (1 + l_hi.abs())
        assert (c_lo <= l_lo + tol_lo).all() and (c_hi >= l_hi - tol_hi).all(), "Clarke tighter than auto_LiRPA"
        vals = torch.cat([samples(net, lo, hi), attacked(net, lo, hi)], dim=1) @ C.T
        assert not violations(c_lo, c_hi, vals), violations(c_lo, c_hi, vals)
        assert not violations(l_lo, l_hi, vals), violations(l_lo, l_hi, vals)


# ------------------------------------------------------------------------------------------------ alpha-CROWN


@pytest.mark.parametrize(("arch", "seed"), [(a, s) for a in ("mlp-6-32-32-32-5", "cnn-1x8x8") for s in SEEDS])
def test_alpha_crown_with_intermediate_slopes_is_at_least_as_tight(lirpa, arch, seed):
    """auto_LiRPA's CROWN-Optimized (no ``interm_bounds`` given) also optimises the slopes of the intermediate
    passes; Clarke's ``optimize_intermediate=True`` does that too, and must be at least as tight on average (the
    issue-15 target; same iterations and learning rate), and sound."""
    net, shape, x = make(arch, seed)
    graph = from_torch(net, shape)
    peer = Peer(lirpa, net, shape, optimize={"iteration": 20, "lr_alpha": 0.5})
    for eps in (0.05, 0.3):
        lo, hi = x - eps, x + eps
        c_lo, c_hi = bound(graph, lo, hi, method="alpha-crown", iterations=20, lr=0.5, optimize_intermediate=True)
        l_lo, l_hi = peer.bound(lo, hi, "alpha-crown")
        c_w, l_w = float((c_hi - c_lo).mean()), float((l_hi - l_lo).mean())
        assert c_w <= l_w * (1 + 1e-9), f"{arch} seed {seed} eps {eps}: mean width Clarke {c_w:.9g} > {l_w:.9g}"
        vals = torch.cat([samples(net, lo, hi), attacked(net, lo, hi)], dim=1)
        assert not violations(c_lo, c_hi, vals), violations(c_lo, c_hi, vals)


# ------------------------------------------------------------------------------------------------ soundness


@pytest.mark.parametrize(("arch", "seed"), CASES)
def test_both_tools_contain_sampled_values(lirpa, arch, seed):
    net, shape, x = make(arch, seed)
    graph, peer = from_torch(net, shape), Peer(lirpa, net, shape)
    for eps in EPS:
        lo, hi = x - eps, x + eps
        vals = torch.cat([samples(net, lo, hi, seed=seed), attacked(net, lo, hi, seed=seed)], dim=1)
        crown = bound(graph, lo, hi, method="crown")
        for method in ("ibp", "crown", "alpha-crown"):
            c_lo, c_hi = bound(graph, lo, hi, method=method)
            l_lo, l_hi = peer.bound(lo, hi, method)
            assert not violations(c_lo, c_hi, vals), f"Clarke {method} eps {eps}: {violations(c_lo, c_hi, vals)}"
            assert not violations(l_lo, l_hi, vals), f"auto_LiRPA {method} eps {eps}: {violations(l_lo, l_hi, vals)}"
        # alpha-CROWN never loses to CROWN (Clarke keeps the best bound from the CROWN start)
        assert (c_lo >= crown[0] - TINY * (1 + crown[0].abs())).all()
        assert (c_hi <= crown[1] + TINY * (1 + crown[1].abs())).all()


def exact_range(net: nn.Sequential, lo: np.ndarray, hi: np.ndarray):
    """Exact ``min`` and ``max`` of every output of a ReLU MLP over the box ``[lo, hi]``, with minimisers and
    maximisers: on each feasible activation region the net is affine, so each extreme is one LP (scipy/HiGHS).
    Regions are enumerated neuron by neuron, a branch kept only when its LP is feasible."""
    from scipy.optimize import linprog

    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net if isinstance(m, nn.Linear)]
    box = list(zip(lo, hi, strict=True))
    k = layers[-1][0].shape[0]
    best = {"min": [(np.inf, None)] * k, "max": [(-np.inf, None)] * k}

    def lp(obj, G, g):
        kw = {"A_ub": np.array(G), "b_ub": np.array(g)} if G else {}
        return linprog(obj, bounds=box, method="highs", **kw)

    def layer(i: int, A: np.ndarray, c: np.ndarray, G: list, g: list) -> None:
        W, b = layers[i]
        Az, cz = W @ A, W @ c + b
        if i == len(layers) - 1:
            for j in range(k):
                for side, sgn in (("min", 1.0), ("max", -1.0)):
                    r = lp(sgn * Az[j], G, g)
                    assert r.status == 0, r.message
                    val = sgn * r.fun + cz[j]
                    if (val < best[side][j][0]) if side == "min" else (val > best[side][j][0]):
                        best[side][j] = (val, r.x)
            return
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        z_lo, z_hi = Az @ mid + cz - np.abs(Az) @ rad, Az @ mid + cz + np.abs(Az) @ rad
        active = np.zeros(len(cz))

        def neuron(n: int, G: list, g: list) -> None:
            if n == len(cz):
                layer(i + 1, active[:, None] * Az, active * cz, G, g)
                return
            for on in (True, False):
                if (on and z_hi[n] < 0) or (not on and z_lo[n] > 0):
                    continue
                # on: z_n >= 0, i.e. -Az x <= cz; off: z_n <= 0, i.e. Az x <= -cz
                row, rhs = (-Az[n], cz[n]) if on else (Az[n], -cz[n])
                stable = z_lo[n] >= 0 if on else z_hi[n] <= 0
                G2, g2 = (G, g) if stable else (G + [row], g + [rhs])
                if not stable and lp(np.zeros(len(lo)), G2, g2).status != 0:
                    continue
                active[n] = float(on)
                neuron(n + 1, G2, g2)

        neuron(0, G, g)

    layer(0, np.eye(len(lo)), np.zeros(len(lo)), [], [])
    return best


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sizes", [(2, 6, 6, 2), (3, 4, 4, 4, 1)])
def test_both_tools_contain_the_exact_range_on_tiny_nets(lirpa, sizes, seed):
    torch.manual_seed(seed)
    net = mlp(list(sizes)).to(DT).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    shape = (sizes[0],)
    x = torch.rand(1, *shape, dtype=DT) * 2 - 1
    lo, hi = x - 0.5, x + 0.5
    graph, peer = from_torch(net, shape), Peer(lirpa, net, shape)
    best = exact_range(net, lo[0].numpy(), hi[0].numpy())
    # The LP optimisers, evaluated by the network itself, are true values at the extremes.
    points = [xs for side in ("min", "max") for _, xs in best[side]]
    xs = torch.tensor(np.clip(np.array(points), lo[0].numpy(), hi[0].numpy()), dtype=DT)
    with torch.no_grad():
        vals = net(xs).unsqueeze(0)  # [1, P, K]
    for j in range(sizes[-1]):
        assert vals[0, :, j].min().item() == pytest.approx(best["min"][j][0], abs=1e-7)
        assert vals[0, :, j].max().item() == pytest.approx(best["max"][j][0], abs=1e-7)
    for method in ("ibp", "crown", "alpha-crown"):
        c_lo, c_hi = bound(graph, lo, hi, method=method)
        l_lo, l_hi = peer.bound(lo, hi, method)
        assert not violations(c_lo, c_hi, vals), f"Clarke {method}: {violations(c_lo, c_hi, vals)}"
        assert not violations(l_lo, l_hi, vals), f"auto_LiRPA {method}: {violations(l_lo, l_hi, vals)}"
        if method != "alpha-crown":
            assert_same(f"tiny {sizes} seed {seed} {method}", c_lo, c_hi, l_lo, l_hi)


# ------------------------------------------------------------------------------------------------ the peer's pow


class _Pow(nn.Module):
    def forward(self, x):
        return x ** 2


class _TorchPow(nn.Module):
    def forward(self, x):
        return torch.pow(x, 2)


class _Mul(nn.Module):
    def forward(self, x):
        return x * x


class _Square(nn.Module):
    def forward(self, x):
        return torch.square(x)


@pytest.mark.parametrize(("box", "documented"), [((1.0, 4.0), (-1.25, 13.75)), ((-3.0, -1.0), (0.0, 8.0)),
                                                 ((0.5, 0.6), None)])
@pytest.mark.parametrize("module", [_Pow, _TorchPow])
def test_auto_lirpa_pow_crown_bound_excludes_true_values_on_same_sign_boxes(lirpa, module, box, documented):
    """Regression test of the peer's defect (../shared/docs/verification.md section 5.3): plain CROWN on
    ``x ** 2`` over a same-sign interval gives an upper bound below the true maximum. Checked against the
    exact values ``x ** 2`` on a fine grid including both end points. If this fails because the bound now
    contains the true range, auto_LiRPA fixed the defect: update the docs and turn this into a soundness test."""
    lo, hi = torch.tensor([[box[0]]], dtype=DT), torch.tensor([[box[1]]], dtype=DT)
    xs = torch.linspace(box[0], box[1], 1001, dtype=DT)
    true_max = float((xs ** 2).max())  # = max(lo ** 2, hi ** 2), attained at an end point
    # auto_LiRPA as users run it (its defaults: no intersection with interval bounds)
    l_lo, l_hi = Peer(lirpa, module(), (1,), compare_crown_with_ibp=False).bound(lo, hi, "crown")
    assert float(l_hi) < true_max, f"auto_LiRPA's CROWN upper bound {float(l_hi)} now covers {true_max}"
    assert float(l_lo) <= float((xs ** 2).min())  # the lower line (the same tangent) is sound
    if documented is not None:
        assert (float(l_lo), float(l_hi)) == pytest.approx(documented, abs=1e-12)
    # Its interval bound of the same op is sound, so the defect is in the CROWN relaxation alone.
    i_lo, i_hi = Peer(lirpa, module(), (1,)).bound(lo, hi, "ibp")
    assert float(i_lo) <= float((xs ** 2).min()) and float(i_hi) >= true_max
    # Intersecting with that interval bound (as Clarke does) does not repair the upper bound.
    m_lo, m_hi = Peer(lirpa, module(), (1,)).bound(lo, hi, "crown")
    assert float(m_hi) == pytest.approx(float(l_hi)) and float(m_hi) < true_max


@pytest.mark.parametrize("box", [(1.0, 4.0), (-3.0, -1.0), (0.5, 0.6), (-1.0, 2.0)])
@pytest.mark.parametrize("module", [_Mul, _Square])
def test_auto_lirpa_square_as_product_is_sound(lirpa, module, box):
    """The control: the same function written ``x * x`` or ``torch.square(x)`` is bounded soundly."""
    lo, hi = torch.tensor([[box[0]]], dtype=DT), torch.tensor([[box[1]]], dtype=DT)
    ys = torch.linspace(box[0], box[1], 1001, dtype=DT) ** 2
    l_lo, l_hi = Peer(lirpa, module(), (1,)).bound(lo, hi, "crown")
    assert float(l_lo) <= float(ys.min()) + 1e-12 and float(l_hi) >= float(ys.max()) - 1e-12


def test_auto_lirpa_pow_is_sound_on_straddling_boxes(lirpa):
    """The defect is specific to same-sign intervals: on [-1, 2] the CROWN bound of x ** 2 is [0, 4]."""
    lo, hi = torch.tensor([[-1.0]], dtype=DT), torch.tensor([[2.0]], dtype=DT)
    l_lo, l_hi = Peer(lirpa, _Pow(), (1,)).bound(lo, hi, "crown")
    assert float(l_lo) <= 0.0 and float(l_hi) >= 4.0
