"""ml4acopf's family (VNN-COMP 2023/2024): a regressor whose outputs feed an AC power-flow computation.

The benchmark's networks are not here. This builds one of the same kind and exports it with the same ONNX operators
as ``14_ieee_ml4acopf.onnx``: an MLP, generator and voltage limits through sigmoids, voltages gathered at both ends of
every line (buses repeat: Gather with repeated indices), sines and cosines of angle differences, products of two
variables, squares (Pow), incidence-matrix products, thermal residuals and bus balances (Neg, Transpose, Expand and
the Shape / ConstantOfShape / Equal / Where plumbing of a traced batch size). It must load, match onnxruntime, get
sound bounds, and run through ``verify`` without error on properties shaped like the benchmark's (a box on the
balance outputs).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import verify
from tests.helpers import assert_box_contains, box_corners, extreme_points
from verify.errors import UnsupportedOperator
from verify.frontends.onnx_frontend import load_onnx
from verify.pipeline import verify_instance
from verify.vnnlib import parse_vnnlib

N_BUS, N_GEN, N_LOAD, N_LINE = 5, 2, 3, 6
BENCHMARK_OPS = {"Slice", "Sin", "Cos", "Where", "ConstantOfShape", "Gather", "Sigmoid", "Equal", "Constant", "Concat",
                 "Neg", "Mul", "Pow", "Gemm", "Relu", "Transpose", "Add", "Sub", "Expand", "MatMul"}
"""The node types of VNN-COMP's 14_ieee_ml4acopf.onnx (and its 118 / 300-bus versions)."""


class PowerFlowNet(nn.Module):
    """Loads ``[pd, qd]`` -> generation, voltages, line flows, thermal residuals and bus balances (the outputs of
    ml4acopf's networks, on a 5-bus grid). ``transposed``: the bus balances as ``(C @ p.T).T``, which exports the
    Transpose nodes of the benchmark (the torch frontend keeps the batch axis first and reads ``p @ C.T``)."""

    def __init__(self, seed: int = 0, transposed: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.transposed = transposed
        self.net = nn.Sequential(nn.Linear(2 * N_LOAD, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 2 * N_GEN + 2 * N_BUS - 1))
        self.register_buffer("f_bus", torch.tensor([0, 0, 1, 2, 3, 1]))  # bus 0 and bus 1 start two lines each
        self.register_buffer("t_bus", torch.tensor([1, 2, 2, 3, 4, 4]))
        self.register_buffer("g", torch.rand(N_LINE, generator=gen) * 5 + 1)
        self.register_buffer("b", -(torch.rand(N_LINE, generator=gen) * 10 + 5))
        self.register_buffer("Cg", (torch.rand(N_BUS, N_GEN, generator=gen) < 0.5).float())
        self.register_buffer("Cl", (torch.rand(N_BUS, N_LOAD, generator=gen) < 0.5).float())
        lines = torch.arange(N_LINE)
        cf, ct = torch.zeros(N_BUS, N_LINE), torch.zeros(N_BUS, N_LINE)
        cf[self.f_bus, lines], ct[self.t_bus, lines] = 1.0, 1.0
        self.register_buffer("Cf", cf)
        self.register_buffer("Ct", ct)

    def incidence(self, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (c @ p.T).T if self.transposed else p @ c.T

    def forward(self, x):
        z = self.net(x)
        pd, qd = x[:, :N_LOAD], x[:, N_LOAD:]
        pg = 0.1 + 0.9 * torch.sigmoid(z[:, :N_GEN])
        qg = -0.5 + torch.sigmoid(z[:, N_GEN:2 * N_GEN])
        vm = 0.94 + 0.12 * torch.sigmoid(z[:, 2 * N_GEN:2 * N_GEN + N_BUS])
        va = torch.cat([torch.zeros(x.shape[0], 1), 0.1 * z[:, 2 * N_GEN + N_BUS:]], dim=1)  # reference bus: 0
        vm_f, vm_t = vm[:, self.f_bus], vm[:, self.t_bus]
        angle = va[:, self.f_bus] - va[:, self.t_bus]
        c, s = torch.cos(angle), torch.sin(angle)
        vft = vm_f * vm_t
        g = self.g.expand(x.shape[0], -1)
        pf = g * vm_f ** 2 - g * vft * c - self.b * vft * s
        pt = g * vm_t ** 2 - g * vft * c + self.b * vft * s
        qf = -self.b * vm_f ** 2 + self.b * vft * c - g * vft * s
        qt = -self.b * vm_t ** 2 + self.b * vft * c + g * vft * s
        thermal = -(pf ** 2 + qf ** 2) + 4.0
        p_bal = self.incidence(self.Cg, pg) - pd @ self.Cl.T - pf @ self.Cf.T - pt @ self.Ct.T
        q_bal = self.incidence(self.Cg, qg) - qd @ self.Cl.T - qf @ self.Cf.T - qt @ self.Ct.T
        return torch.cat([pg, qg, vm, va, pf, pt, qf, qt, thermal, p_bal, q_bal], dim=1)


N_OUT = 2 * N_GEN + 2 * N_BUS + 5 * N_LINE + 2 * N_BUS
BALANCES = range(N_OUT - 2 * N_BUS, N_OUT)
LOADS = np.array([0.21, 0.47, 0.30, 0.08, 0.11, 0.15])


def export(path, opset: int, seed: int = 0) -> PowerFlowNet:
    net = PowerFlowNet(seed, transposed=True).eval()
    torch.onnx.export(net, (torch.from_numpy(LOADS[None]).float(),), str(path), opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      dynamo=False)
    return net


def load_box(scale: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's input set: each load within +-5 % of its reference value."""
    lo, hi = LOADS * (1 - scale), LOADS * (1 + scale)
    return torch.from_numpy(lo[None]), torch.from_numpy(hi[None])


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_the_export_has_the_benchmarks_operators_loads_and_matches_onnxruntime(tmp_path, opset):
    path = tmp_path / f"acopf_{opset}.onnx"
    export(path, opset)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert BENCHMARK_OPS <= ops, BENCHMARK_OPS - ops
    graph = load_onnx(path)
    x = (LOADS * np.random.default_rng(opset).uniform(0.9, 1.1, size=(32, 6))).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = graph(torch.from_numpy(x)).reshape(32, -1).detach().numpy()
    assert ours.shape == ref.shape == (32, N_OUT)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("scale", [0.01, 0.05])
def test_bounds_of_the_onnx_network_contain_its_values(tmp_path, scale):
    """Zero tolerance against the ONNX network's own function, evaluated in float64 (its constants are float32:
    ``0.94`` there is not the torch module's ``0.94``, which differs by ~1e-9, enough to leave a tight bound)."""
    path = tmp_path / "acopf.onnx"
    net = export(path, 13)
    graph = load_onnx(path)
    exact = graph.with_dtype(torch.float64)
    lo, hi = load_box(scale)
    pts = torch.cat([lo + (hi - lo) * torch.rand(2000, 6, dtype=torch.float64), box_corners(lo, hi),
                     extreme_points(lambda x: exact(x).reshape(x.shape[0], -1), lo[0], hi[0], k=N_OUT)])
    with torch.no_grad():
        ys = exact(pts).reshape(pts.shape[0], -1)
        assert float((ys - net.double()(pts)).abs().max()) < 1e-5  # the same network, up to its float32 constants
    widths = {}
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = verify.bound(graph, lo, hi, method=method)
        assert (ys >= lower).all() and (ys <= upper).all(), method
        widths[method] = float((upper - lower).sum())
    assert widths["alpha-crown"] <= widths["crown"] < widths["ibp"]


@pytest.mark.parametrize("transposed", [False, True])
def test_the_torch_frontend_reads_the_module_itself(transposed):
    """Buffers indexed by buses (repeats), ``torch.zeros(x.shape[0], 1)``, a buffer's ``expand`` and ``p @ C.T``, or
    ``(C @ p.T).T`` as the benchmark's code writes it."""
    net = PowerFlowNet(1, transposed=transposed).eval()
    graph = verify.from_torch(net, (2 * N_LOAD,))
    x = torch.from_numpy(LOADS[None] * np.random.default_rng(0).uniform(0.9, 1.1, size=(16, 6))).float()
    torch.testing.assert_close(graph(x).reshape(16, -1), net(x), rtol=0, atol=1e-6)
    lo, hi = load_box()
    lower, upper = verify.bound(net, lo.float(), hi.float(), method="crown")
    assert_box_contains(net, lo.float(), hi.float(), lower, upper, label="torch crown", samples=200)


class _BatchMoved(nn.Module):
    def __init__(self, use: str):
        super().__init__()
        self.lin, self.use = nn.Linear(4, 3), use
        self.register_buffer("c", torch.ones(2, 3))

    def forward(self, x):
        y = torch.relu(self.lin(x))
        if self.use == "relu":
            return torch.relu(y.T).T  # an op across the batch axis
        if self.use == "sum":
            return (self.c @ y.T).sum(0, keepdim=True)  # a reduction over the transposed row's features
        return y.T  # returned transposed


@pytest.mark.parametrize("use", ["relu", "sum", "out"])
def test_other_uses_of_a_transposed_row_are_refused_by_name(use):
    with pytest.raises(UnsupportedOperator, match="transposed batch axis|one tensor"):
        verify.from_torch(_BatchMoved(use).eval(), (4,))


def _balance_property(path, lo: torch.Tensor, hi: torch.Tensor, limits: dict[int, tuple[float, float]]) -> None:
    """A VNNLIB file as the benchmark writes them: the input box, and a box on some outputs (a conjunction)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.shape[1])]
    lines += [f"(declare-const Y_{j} Real)" for j in range(N_OUT)]
    for i in range(lo.shape[1]):
        lines += [f"(assert (<= X_{i} {float(hi[0, i])!r}))", f"(assert (>= X_{i} {float(lo[0, i])!r}))"]
    for j, (a, b) in limits.items():
        lines += [f"(assert (<= Y_{j} {b!r}))", f"(assert (>= Y_{j} {a!r}))"]
    path.write_text("\n".join(lines) + "\n")


def test_verify_finds_a_balance_point_and_never_errors(tmp_path):
    model = tmp_path / "acopf.onnx"
    net = export(model, 13)
    lo, hi = load_box()
    with torch.no_grad():
        y = net.double()((lo + hi) / 2 + 0.3 * (hi - lo) / 2)[0]
    reachable = tmp_path / "reachable.vnnlib"  # every balance within 1e-2 of its value at a point of the box
    _balance_property(reachable, lo, hi, {j: (float(y[j]) - 1e-2, float(y[j]) + 1e-2) for j in BALANCES})
    res = verify_instance(model, reachable, timeout=30)
    assert res.status == "sat" and res.validated, (res.status, res.stage, res.message)
    spec = parse_vnnlib(reachable)
    assert any(p.box.contains(res.x) for p in spec.properties)

    balanced = tmp_path / "balanced.vnnlib"  # the benchmark's question: can every balance be within 1e-3 of 0?
    _balance_property(balanced, lo, hi, {j: (-1e-3, 1e-3) for j in BALANCES})
    res = verify_instance(model, balanced, timeout=30)
    assert res.status in ("sat", "unsat", "unknown", "timeout"), (res.status, res.message)
    if res.status == "sat":
        assert res.validated
    if res.status == "unsat":  # no sampled or attacked point may satisfy every constraint
        pts = torch.cat([lo + (hi - lo) * torch.rand(4000, 6, dtype=torch.float64),
                         extreme_points(net.double(), lo[0], hi[0], k=N_OUT)])
        with torch.no_grad():
            bal = net.double()(pts)[:, list(BALANCES)]
        assert not bool((bal.abs() <= 1e-3).all(1).any())
