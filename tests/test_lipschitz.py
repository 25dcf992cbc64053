"""Local Lipschitz constants: soundness against sampled gradients, ordering of methods, exactness of LipMIP
and of BaB, monotonicity certificates, API and CLI."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.zoo import mlp
from tests.helpers import random_network, random_relu_mlp
from verify.errors import ModelError, UnsupportedOperator
from verify.lipschitz import lipschitz, monotonicity
from verify.lipschitz.api import _prepare, upper_bounds
from verify.lipschitz.gates import abs_chord, gate_lines

TOL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    """Small-op workloads: one intra-op thread is much faster on a shared CPU (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def sampled_max(net: nn.Module, shape, lo: torch.Tensor, hi: torch.Tensor, n: int = 2000, pgd: int = 20,
                seed: int = 0) -> torch.Tensor:
    """max ||grad f_j||_1 over uniform samples plus PGD on the gradient norm (double backprop), per output."""
    g = torch.Generator().manual_seed(seed)
    net = net.double()
    lo, hi = lo.reshape(1, *shape).double(), hi.reshape(1, *shape).double()
    x = lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    y = net(x).reshape(n, -1)
    best = []
    for j in range(y.shape[1]):
        (gr,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)
        norms = gr.reshape(n, -1).abs().sum(-1)
        val = norms.max()
        z = x[norms.argsort(descending=True)[:8]].detach().clone()
        step = (hi - lo) * 0.2
        for _ in range(pgd):
            z.requires_grad_(True)
            out = net(z).reshape(z.shape[0], -1)[:, j].sum()
            (gz,) = torch.autograd.grad(out, z, create_graph=True)
            obj = gz.reshape(z.shape[0], -1).abs().sum(-1)
            val = torch.maximum(val, obj.max().detach())
            (d,) = torch.autograd.grad(obj.sum(), z, allow_unused=True)
            if d is None:
                break
            z = torch.minimum(torch.maximum(z.detach() + step * d.sign(), lo), hi)
            step = step * 0.8
        best.append(float(val))
    return torch.tensor(best, dtype=torch.float64)


def _random_box(shape, seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    x0 = torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = float(torch.empty(1).uniform_(0.02, 0.6, generator=g))
    return x0 - eps, x0 + eps


# ---------------------------------------------------------------------------------------- relaxations


def test_gate_and_abs_lines_are_sound():
    g = torch.Generator().manual_seed(0)
    n = 4000
    a, b = torch.randn(n, generator=g, dtype=torch.float64) * 3, torch.randn(n, generator=g, dtype=torch.float64) * 3
    lg, ug = torch.minimum(a, b), torch.maximum(a, b)
    c, d = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    dl, du = torch.minimum(c, d), torch.maximum(c, d)
    dl[: n // 4], du[: n // 4] = 0.0, 1.0  # the Clarke ReLU gate
    a_lo, c_lo, a_up, c_up = gate_lines(dl, du, lg, ug)
    a_abs, c_abs = abs_chord(lg, ug)
    for t, s in itertools.product(torch.linspace(0, 1, 11, dtype=torch.float64), repeat=2):
        gv = lg + t * (ug - lg)
        dv = dl + s * (du - dl)
        y = dv * gv
        assert bool((a_lo * gv + c_lo <= y + 1e-12).all())
        assert bool((a_up * gv + c_up >= y - 1e-12).all())
        assert bool((a_abs * gv + c_abs >= gv.abs() - 1e-12).all())


# ---------------------------------------------------------------------------------------- soundness


def _soundness_case(seed: int, methods, samples: int, pgd: int, checked: list | None = None) -> list[str]:
    net, shape, desc = random_network(seed)
    net = net.double()
    lo, hi = _random_box(shape, seed)
    graph, glo, ghi = _prepare(net, lo, hi, shape)
    outs = list(range(graph.output_numel))
    if "mip" in methods and not all(type(n.op).__name__ != "Sigmoid" and type(n.op).__name__ != "Tanh"
                                    for n in graph.nodes):
        methods = tuple(m for m in methods if m != "mip")  # LipMIP encodes ReLU nets only
    try:
        res = {m: upper_bounds(graph, glo, ghi, outs, m, timeout=5.0 if m == "mip" else 0.5) for m in methods}
    except UnsupportedOperator:  # LipMIP on MaxPool nets
        res = {m: upper_bounds(graph, glo, ghi, outs, m, timeout=0.5) for m in methods if m != "mip"}
    bounds = {m: r[0] for m, r in res.items()}
    exact = None
    if "mip" in res:  # only outputs the MILP solved to optimality are exact
        optimal = torch.tensor([st == "optimal" for st in res["mip"][1]["mip_status"]])
        exact = torch.where(optimal, bounds["mip"], torch.full_like(bounds["mip"], -torch.inf))
    if checked is not None:
        checked.append(desc)
    truth = sampled_max(net, shape, lo, hi, samples, pgd, seed)
    bad = []
    for m, up in bounds.items():
        viol = up < truth * (1 - 1e-9) - 1e-12
        if bool(viol.any()):
            bad.append(f"seed {seed} {desc} {m}: upper {up.tolist()} < sampled {truth.tolist()}")
        if exact is not None and m != "mip" and bool((up < exact * (1 - 1e-6) - 1e-9).any()):
            bad.append(f"seed {seed} {desc} {m}: upper {up.tolist()} < exact MIP {exact.tolist()}")
    return bad


def test_soundness_random_networks():
    bad, checked = [], []
    for seed in range(60):
        bad += _soundness_case(seed, ("naive", "ibp", "crown"), samples=3000, pgd=10, checked=checked)
    assert not bad, "\n".join(bad)
    assert len(checked) == 60 and {d.split("/")[1] for d in checked} == {"ReLU", "Sigmoid", "Tanh"}


def test_soundness_alpha_and_bab_small():
    bad = []
    for seed in (0, 4, 8, 12, 16):  # MLP family, all three activations among them
        bad += _soundness_case(seed, ("alpha-crown", "bab"), samples=1500, pgd=10)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_soundness_100_networks_20k_samples():
    """Acceptance: 100 random ReLU/tanh/sigmoid networks (MLP, CNN with BatchNorm / Avg- / MaxPool, residual),
    20k samples + PGD per network; every method >= sampled, and >= exact MIP on ReLU nets without MaxPool."""
    bad, checked, seed = [], [], 0
    while len(checked) < 100:
        bad += _soundness_case(seed, ("naive", "ibp", "crown", "alpha-crown", "bab", "mip"), samples=20000,
                               pgd=30, checked=checked)
        seed += 1
    assert not bad, "\n".join(bad)


def _tiny_relu(seed: int, sizes=(3, 6, 5, 2)) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = mlp(list(sizes)).double()
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(sizes[0], generator=g, dtype=torch.float64)
    eps = 0.15 + 0.25 * float(torch.rand(1, generator=g))
    return net, x0 - eps, x0 + eps


def test_ordering_relu_mlps():
    """exact MIP <= BaB <= alpha-CROWN <= CROWN <= IBP <= naive, and sampled <= exact."""
    for seed in range(6):
        net, lo, hi = _tiny_relu(seed)
        res = {m: lipschitz(net, lo, hi, method=m, timeout=5.0, attack=(m == "crown")).per_output
               for m in ("mip", "bab", "alpha-crown", "crown", "ibp", "naive")}
        sampled = sampled_max(net, (3,), lo, hi, 3000, 10)
        for j in range(2):
            ups = [res[m][j]["upper"] for m in ("mip", "bab", "alpha-crown", "crown", "ibp", "naive")]
            for a, b in zip(ups, ups[1:], strict=False):
                assert a <= b * (1 + TOL) + TOL, (seed, j, ups)
            assert sampled[j] <= ups[0] * (1 + TOL) + TOL, (seed, j, float(sampled[j]), ups)


# ---------------------------------------------------------------------------------------- exactness


def _brute_force(net: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor) -> list[float]:
    """Max ``||J_j||_1`` over every ReLU pattern that some ``x`` in the box realises (closed signs), by LP."""
    from scipy.optimize import linprog

    lins = [m for m in net if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().double().numpy() for m in lins]
    bs = [m.bias.detach().double().numpy() for m in lins]
    sizes = [w.shape[0] for w in ws[:-1]]
    n = ws[0].shape[1]
    best = [-np.inf] * ws[-1].shape[0]
    for pattern in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        masks, off = [], 0
        for s in sizes:
            masks.append(np.array(pattern[off:off + s]))
            off += s
        a_mat, c_vec = np.eye(n), np.zeros(n)
        rows_a, rows_b = [], []
        for w, b, m in zip(ws[:-1], bs[:-1], masks, strict=True):
            za, zc = w @ a_mat, w @ c_vec + b
            sgn = 2 * m - 1  # s z >= 0
            rows_a.append(-(sgn[:, None] * za))
            rows_b.append(sgn * zc)
            a_mat, c_vec = m[:, None] * za, m * zc
        res = linprog(np.zeros(n), A_ub=np.vstack(rows_a), b_ub=np.concatenate(rows_b) + 1e-10,
                      bounds=list(zip(lo.tolist(), hi.tolist(), strict=True)), method="highs")
        if res.status != 0:
            continue
        jac = ws[-1] @ a_mat
        for j in range(jac.shape[0]):
            best[j] = max(best[j], float(np.abs(jac[j]).sum()))
    return best


def test_lipmip_matches_enumeration_and_bab_converges():
    for seed in range(4):
        net, lo, hi = _tiny_relu(seed, (3, 5, 4, 2))
        truth = _brute_force(net, lo, hi)
        mip = lipschitz(net, lo, hi, method="mip", attack=False)
        bab = lipschitz(net, lo, hi, method="bab", timeout=10.0)
        crown = lipschitz(net, lo, hi, method="crown", attack=False)
        assert mip.extra["mip_status"] == ["optimal", "optimal"] and mip.status == "exact"
        assert crown.status == "bounded" or crown.upper - crown.lower <= 1e-6 * max(1.0, crown.upper)
        for j in range(2):
            assert abs(mip.per_output[j]["upper"] - truth[j]) <= 1e-6 * (1 + truth[j]), (seed, j, truth, mip)
            assert mip.per_output[j]["upper"] <= crown.per_output[j]["upper"] * (1 + TOL)
        assert abs(bab.upper - max(truth)) <= 1e-6 * (1 + max(truth)), (seed, bab.upper, truth)
        assert bab.lower <= bab.upper


def test_bab_below_pattern_only_value():
    """A net where an infeasible pattern dominates: BaB must reach the exact (feasible) value."""
    # z1 = x, z2 = -x: the pattern (both active) is infeasible except at x = 0 with x in [0.5, 1]
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.2]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net[2].bias.zero_()
    lo, hi = torch.tensor([-0.5]), torch.tensor([1.0])
    # true |f'| <= 1 away from the overlap [-0.5, 0.2] where it is 2
    bab = lipschitz(net, lo, hi, method="bab", timeout=5)
    assert bab.upper == pytest.approx(2.0, abs=1e-9)
    lo, hi = torch.tensor([0.3]), torch.tensor([1.0])  # z2 < 0 on the box: exactly 1
    assert lipschitz(net, lo, hi, method="bab", timeout=5).upper == pytest.approx(1.0, abs=1e-9)
    # a deeper case where forward CROWN alone cannot see the infeasibility: z2 = 0.25 - z1 after a ReLU
    net2 = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net2[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net2[0].bias.zero_()
        net2[2].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
        net2[2].bias.copy_(torch.tensor([-0.5, 0.25]))
        net2[4].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net2[4].bias.zero_()
    lo, hi = torch.tensor([-1.0]), torch.tensor([1.0])
    mip = lipschitz(net2, lo, hi, method="mip", attack=False).upper
    bab = lipschitz(net2, lo, hi, method="bab", timeout=5).upper
    assert bab == pytest.approx(mip, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------- monotonicity


def test_monotonicity_certified_and_counterexample():
    torch.manual_seed(0)
    net = mlp([3, 8, 8, 1]).double()
    with torch.no_grad():  # non-negative weights on every path from x_0: f is non-decreasing in x_0
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.abs_()
        net[0].weight[:, 1] *= -1  # x_1 enters with mixed signs downstream
    lo, hi = torch.zeros(3), torch.ones(3)
    r = monotonicity(net, lo, hi, feature=0, output=0)
    assert r.status == "increasing" and r.lower >= 0
    r = monotonicity(net, lo, hi, feature=1, output=0)
    assert r.status == "decreasing" and r.upper <= 0

    bumpy = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():  # f(x) = relu(x) - 2 relu(x - 0.5): increasing, then decreasing
        bumpy[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        bumpy[0].bias.copy_(torch.tensor([0.0, -0.5]))
        bumpy[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        bumpy[2].bias.zero_()
    r = monotonicity(bumpy, torch.tensor([0.1]), torch.tensor([1.0]), feature=0, direction="increasing")
    assert r.status == "not_monotone"
    x = torch.tensor(r.counterexample, dtype=torch.float64).reshape(1, 1).requires_grad_(True)
    (gx,) = torch.autograd.grad(bumpy(x).sum(), x)
    assert float(gx) < 0 and r.gradient < 0


# ---------------------------------------------------------------------------------------- API, CLI, speed


def test_lower_bound_ignores_autograd_at_kinks():
    """f(x) = x - relu(x) + relu(-x) = 0, but autograd gives slope 1 at the kink x = 0 (the box centre)."""
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([10.0, 0.0, 0.0]))  # relu(x + 10) = x + 10 on the box
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([-10.0]))
    r = lipschitz(net, torch.tensor([-1.0]), torch.tensor([1.0]), method="bab")
    assert r.lower == 0.0 and r.upper >= 0.0


def test_api_result_fields_and_errors():
    net, lo, hi = _tiny_relu(0)
    r = lipschitz(net, lo, hi, outputs=[1])
    assert [p["output"] for p in r.per_output] == [1]
    assert r.lower <= r.upper and r.status in ("exact", "bounded")
    d = r.to_json()
    assert set(d) == {"upper", "lower", "per_output", "method", "seconds", "status"}
    import verify
    import verify.lipschitz

    assert verify.lipschitz(net, lo, hi, method="naive", attack=False).upper == pytest.approx(
        lipschitz(net, lo, hi, method="naive", attack=False).upper)  # the spelling
    with pytest.raises(ValueError):
        lipschitz(net, lo, hi, method="nope")
    from verify.errors import ShapeError
    with pytest.raises(ShapeError):
        lipschitz(net, hi, lo)
    with pytest.raises(ShapeError):
        lipschitz(net, lo, hi, outputs=[5])


def test_cnn_and_residual_bounds_are_sound():
    torch.manual_seed(3)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1),
                        nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    lo = torch.rand(1, 8, 8, dtype=torch.float64)
    hi = lo + 0.2
    truth = sampled_max(cnn, (1, 8, 8), lo, hi, 2000, 10)
    cnn32 = copy.deepcopy(cnn).float()  # float32 arithmetic only for a float32 model (narrowing is refused)
    truth32 = sampled_max(copy.deepcopy(cnn32), (1, 8, 8), lo, hi, 2000, 10)  # its float64 evaluation
    for model, precision, t in ((cnn32, "float32", truth32), (cnn32, "float64", truth32), (cnn, "float64", truth)):
        r = lipschitz(model, lo, hi, method="crown", input_shape=(1, 8, 8), attack=False, precision=precision)
        assert r.upper >= float(t.max())
    with pytest.raises(ModelError):
        lipschitz(cnn, lo, hi, method="crown", input_shape=(1, 8, 8), attack=False, precision="float32")
    r = lipschitz(cnn, lo, hi, method="ibp", input_shape=(1, 8, 8), samples=200)
    assert float(truth.max()) * 0.5 <= r.lower <= r.upper


def test_maxpool_jacobian_sound_and_tighter_than_ibp():
    torch.manual_seed(5)
    for pool in (nn.MaxPool2d(2, stride=1), nn.MaxPool2d(3, stride=2, padding=1)):
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten()).double()
        with torch.no_grad():
            n_flat = net(torch.zeros(1, 2, 6, 6, dtype=torch.float64)).numel()
        net = nn.Sequential(*net, nn.Linear(n_flat, 3)).double()
        lo = torch.rand(2, 6, 6, dtype=torch.float64)
        hi = lo + 0.3
        truth = sampled_max(net, (2, 6, 6), lo, hi, 3000, 10)
        crown = lipschitz(net, lo, hi, method="crown", attack=False, precision="float64")
        ibp = lipschitz(net, lo, hi, method="ibp", attack=False, precision="float64")
        for j in range(3):
            assert float(truth[j]) <= crown.per_output[j]["upper"] <= ibp.per_output[j]["upper"] * (1 + TOL)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    import argparse

    from verify.cli import lipschitz_cmd
    from verify.cli.common import fail
    from verify.errors import ClarkeError

    parser = argparse.ArgumentParser(prog="clarke")
    sub = parser.add_subparsers(dest="command")
    lipschitz_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except ClarkeError as e:
        rc = fail(str(e))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_lipschitz_and_monotonicity(tmp_path, capsys):
    from models.onnx_export import save_sequential

    torch.manual_seed(0)
    net = mlp([3, 6, 6, 2])
    model = tmp_path / "m.onnx"
    save_sequential(net, (3,), model)
    np.save(tmp_path / "x.npy", np.full(3, 0.5))
    np.save(tmp_path / "lo.npy", np.zeros(3))
    np.save(tmp_path / "hi.npy", np.ones(3))
    rc, out, _ = _cli(["lipschitz", str(model), "--center", str(tmp_path / "x.npy"), "--eps", "0.1",
                       "--method", "bab", "--timeout", "3", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert {"upper", "lower", "per_output", "method", "seconds", "status"} <= set(d)
    assert d["status"] in ("exact", "bounded") and d["lower"] <= d["upper"] + 1e-9
    assert [p["output"] for p in d["per_output"]] == [0, 1]
    rc, out, _ = _cli(["lipschitz", str(model), "--box", str(tmp_path / "lo.npy"), str(tmp_path / "hi.npy"),
                       "--output", "1", "--json"], capsys)
    assert rc == 0 and [p["output"] for p in json.loads(out)["per_output"]] == [1]
    rc, out, _ = _cli(["monotonicity", str(model), "--box", str(tmp_path / "lo.npy"), str(tmp_path / "hi.npy"),
                       "--feature", "0", "--json"], capsys)
    assert rc == 0 and json.loads(out)["status"] in ("increasing", "decreasing", "not_monotone", "unknown")
    rc, _, err = _cli(["lipschitz", str(model), "--box", str(tmp_path / "lo.npy"), str(tmp_path / "x.npy"),
                       "--eps", "0.1"], capsys)
    assert rc == 2 and err.count("\n") == 1
    rc, _, err = _cli(["lipschitz", str(tmp_path / "missing.onnx"), "--center", str(tmp_path / "x.npy"),
                       "--eps", "0.1"], capsys)
    assert rc == 2 and err.count("\n") == 1


def test_lipsdp_global_l2_bound():
    from verify.lipschitz.sdp import lipsdp_l2

    net, lo, hi = _tiny_relu(1)
    graph, glo, ghi = _prepare(net, lo, hi, (3,))
    l2 = lipsdp_l2(graph, [0, 1])
    # global bound: above the l2 gradient norm anywhere (sampled over a wide box), below the naive product
    x = (torch.rand(4000, 3, dtype=torch.float64) - 0.5) * 20
    x.requires_grad_(True)
    y = net(x)
    ws = [m.weight.detach() for m in net if isinstance(m, nn.Linear)]
    for j in range(2):
        (g,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)
        naive = float(torch.linalg.matrix_norm(ws[0], 2) * torch.linalg.matrix_norm(ws[1], 2) * ws[2][j].norm())
        assert float(g.norm(dim=1).max()) <= l2[j] * (1 + 1e-6) <= naive * (1 + 1e-6)
    r = lipschitz(net, lo, hi, method="lipsdp", attack=False)
    assert r.per_output[0]["upper"] <= l2[0] * 3 ** 0.5 * (1 + 1e-9)


def test_monotonicity_verdicts_agree_with_samples():
    """Random small ReLU / tanh nets: a certified sign holds at every sample; counterexamples are genuine."""
    for seed in range(8):
        torch.manual_seed(seed)
        net = mlp([3, 6, 6, 2], nn.Tanh if seed % 2 else nn.ReLU).double()
        lo, hi = torch.rand(3, dtype=torch.float64) - 0.5, None
        hi = lo + 0.4
        for feature in range(3):
            r = monotonicity(net, lo, hi, feature=feature, output=seed % 2, timeout=2.0)
            x = lo + (hi - lo) * torch.rand(3000, 3, dtype=torch.float64)
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(net(x)[:, seed % 2].sum(), x)
            d = g[:, feature]
            assert r.lower <= float(d.min()) + 1e-9 and float(d.max()) <= r.upper + 1e-9
            if r.status == "increasing":
                assert float(d.min()) >= -1e-9
            elif r.status == "decreasing":
                assert float(d.max()) <= 1e-9
            elif r.status == "not_monotone":
                xc = torch.tensor(r.counterexample, dtype=torch.float64).reshape(1, 3).requires_grad_(True)
                (gc,) = torch.autograd.grad(net(xc)[0, seed % 2], xc)
                assert float(gc[0, feature]) == pytest.approx(r.gradient)
                assert bool(((lo - 1e-12 <= xc) & (xc <= hi + 1e-12)).all())


def test_bab_reaches_mip_on_trained_mlp():
    from benchmarks.lipschitz import clustered_data, trained_mlp

    net = trained_mlp([16, 16, 16, 10], seed=2)
    x, _ = clustered_data(2, seed=102)
    lo, hi = (x[1].double() - 0.2).clamp(0, 1), (x[1].double() + 0.2).clamp(0, 1)
    graph, glo, ghi = _prepare(net, lo, hi, (16,))
    outs = list(range(10))
    crown = upper_bounds(graph, glo, ghi, outs, "crown")[0].max()
    bab = upper_bounds(graph, glo, ghi, outs, "bab", timeout=20.0)[0].max()
    mip, extra = upper_bounds(graph, glo, ghi, outs, "mip", timeout=60.0)
    assert bab <= crown
    if all(s == "optimal" for s in extra["mip_status"]):
        assert float(bab) <= float(mip.max()) * 1.01


@pytest.mark.slow
def test_acceptance_bab_within_1pct_of_mip():
    """16-16-16-10 trained MLPs, eps 0.05-0.2: BaB(10 s) <= 1.01 x exact MIP on >= 90% of the cases."""
    from benchmarks.lipschitz import clustered_data, trained_mlp

    ok = total = 0
    for s in range(3):
        net = trained_mlp([16, 16, 16, 10], seed=s)
        x, _ = clustered_data(2, seed=100 + s)
        for p in range(2):
            for eps in (0.05, 0.1, 0.2):
                lo, hi = (x[p].double() - eps).clamp(0, 1), (x[p].double() + eps).clamp(0, 1)
                graph, glo, ghi = _prepare(net, lo, hi, (16,))
                bab = upper_bounds(graph, glo, ghi, list(range(10)), "bab", timeout=10.0)[0].max()
                mip = upper_bounds(graph, glo, ghi, list(range(10)), "mip", timeout=120.0)[0].max()
                total += 1
                ok += float(bab) <= 1.01 * float(mip)
    assert ok >= 0.9 * total, (ok, total)


def test_monotonicity_relu_bab_proves_what_crown_cannot(monkeypatch):
    import verify.lipschitz.api as lip_api
    from verify.lipschitz.bounds import forward_bounds, jacobian_bounds
    from verify.lipschitz.jacobian import JacobianGraph

    torch.manual_seed(14)
    net = mlp([3, 8, 8, 2]).double()
    lo = torch.rand(3, dtype=torch.float64) - 0.5
    hi = lo + 0.5
    graph, glo, ghi = _prepare(net, lo, hi, (3,))
    jg = JacobianGraph(graph)
    _, parts = jacobian_bounds(jg, forward_bounds(graph, glo, ghi, "crown"), [0])
    dl, du = jg.entry_bounds(1, parts["gates"], parts["gb"], parts["seeds"])
    assert float(dl) < 0 < float(du)  # the root CROWN bound cannot decide the sign
    monkeypatch.setattr(lip_api, "_input_split_sign", lambda *a, **k: ("unknown", None, None))
    r = monotonicity(net, lo, hi, feature=1, output=0, timeout=5)
    assert r.status == "increasing" and r.lower >= 0
    x = (lo + (hi - lo) * torch.rand(5000, 3, dtype=torch.float64)).requires_grad_(True)
    (g,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    assert float(g[:, 1].min()) >= 0


def test_bab_mixed_relu_tanh_sound():
    """ReLU splits with tanh layers left relaxed: fully split domains are never 'settled' by the ReLU LP."""
    for seed in range(3):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                            nn.Linear(4, 2)).double()
        lo = torch.rand(3, dtype=torch.float64) - 0.5
        hi = lo + 0.6
        truth = sampled_max(net, (3,), lo, hi, 3000, 10)
        r = lipschitz(net, lo, hi, method="bab", timeout=2.0, attack=False)
        for j in range(2):
            assert r.per_output[j]["upper"] >= float(truth[j]) * (1 - 1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_python_api_refuses_non_finite_or_negative_timeouts(bad):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="timeout"):
        lipschitz(net, torch.zeros(3), torch.ones(3), method="bab", timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        monotonicity(net, torch.zeros(3), torch.ones(3), feature=0, timeout=bad)


def test_mip_incumbents_certify_a_lower_bound_without_the_attack():
    net = random_relu_mlp(5, [12, 8], 3)
    g = torch.Generator().manual_seed(3)
    x0 = 2 * torch.rand(5, generator=g, dtype=torch.float64) - 1
    res = lipschitz(net, x0 - 0.3, x0 + 0.3, method="mip", attack=False, input_shape=(5,))
    assert 0 < res.lower <= res.upper
    w = torch.tensor(res.extra["witness"][0], dtype=torch.float64)
    assert bool(((w >= x0 - 0.3) & (w <= x0 + 0.3)).all())
