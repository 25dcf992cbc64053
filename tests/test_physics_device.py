"""Device placement of the physics stack: every tensor follows its inputs' device (checked on CPU by making
"meta" the default device), device names and distributed backends resolve as documented, and, where a GPU is
present, GPU training steps equal CPU ones."""

import json

import pytest
import torch

from physics.cli import main
from physics.errors import PhysicsError
from physics.model import PDEModel, physics_loss
from physics.problems import make_spec
from physics.train import TrainConfig, build_backbone, build_layer, dist_backend, resolve_device, sample_fields

CASES = [
    ("soft", "diffusion-sorption", 0.0),
    ("hard", "diffusion-sorption", 0.0),
    ("moe", "diffusion-sorption", 0.0),
    ("moe", "diffusion-sorption", 100.0),  # the joint solve with interface rows
    ("hard", "heat", 0.0),
    ("moe", "heat", 0.0),
    ("moe", "navier-stokes", 0.0),
]


def _model(constraint: str, problem: str, interface_weight: float, dtype: str = "float32", gtol: float = 1e-8):
    cfg = TrainConfig(
        problem=problem,
        constraint=constraint,
        experts=4,
        points=120,
        basis=6,
        width=8,
        layers=2,
        nt=9 if problem == "navier-stokes" else 11,
        nx=16 if problem == "navier-stokes" else 32,
        batch=2,
        steps=1,
        interface_weight=interface_weight,
        dtype=dtype,
        gtol=gtol,
        max_iter=100,
    )
    spec = make_spec(cfg.problem, cfg.nt, cfg.nx)
    return cfg, spec, PDEModel(spec, build_backbone(cfg), build_layer(cfg, spec))


def _step(model: PDEModel, spec, data, ids=(5, 6), converged: bool = False) -> tuple[float, list[torch.Tensor]]:
    """Loss and parameter gradients of one training step (forward, LM solve, implicit backward); ``converged``:
    assert that every solve converged."""
    model.zero_grad()
    u, info = model(data, 3, list(ids))
    assert not converged or info is None or bool(info.converged.all())
    loss = physics_loss(spec, u, data, info).total()
    loss.backward()
    return loss.item(), [p.grad.detach().cpu().clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(("constraint", "problem", "interface_weight"), CASES)
def test_no_tensor_is_created_off_the_inputs_device(constraint, problem, interface_weight):
    # With "meta" as the default device, any tensor made without device= lands on meta: mixing it with the CPU
    # inputs raises, and a meta index would give different numbers. The step must run and match exactly.
    cfg, spec, model = _model(constraint, problem, interface_weight)
    data = sample_fields(cfg, spec, 3, [5, 6])
    loss, grads = _step(model, spec, data)
    with torch.device("meta"):
        loss_meta, grads_meta = _step(model, spec, data)
    assert loss_meta == loss
    assert len(grads_meta) == len(grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_meta, strict=True))


def test_device_names_resolve_or_fail_clearly(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert dist_backend(torch.device("cpu")) == "gloo"
    assert dist_backend(torch.device("cuda", 0)) == "nccl"
    for bad in ("tpu", "gpu0", "cuda:x"):
        with pytest.raises(PhysicsError, match="unknown device"):
            resolve_device(bad)
        with pytest.raises(PhysicsError, match="unknown device"):
            TrainConfig(device=bad)
    # Without a GPU, "auto" is the CPU and asking for a GPU is an error naming the missing CUDA.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(PhysicsError, match="no CUDA GPU is available"):
        resolve_device("cuda")


def test_cli_refuses_a_missing_gpu_before_writing_anything(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    argv = ["pde", "train", "--device", "cuda", "--steps", "1", "--nt", "11", "--nx", "32", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU is available" in err[0]
    assert not out.exists()


def test_trained_run_evaluates_on_the_cpu_with_device_flag(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--nt", "11", "--nx", "32", "--basis", "6", "--width", "8", "--layers", "2", "--points", "60"]
    argv = ["pde", "train", "--constraint", "hard", "--steps", "2", "--n-test", "2", "--device", "cpu", *common]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    assert main(["pde", "eval", str(out), "--no-plots", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["test_rel_l2_pct"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
@pytest.mark.parametrize(("constraint", "problem", "interface_weight"), CASES)
def test_gpu_step_equals_cpu_step(constraint, problem, interface_weight):
    # float64 backbone and tightly converged solves: the GPU and CPU steps may differ only by rounding (reduction
    # order, kernels), which can change where LM stops; a device bug would change the gradients at O(1).
    # The samples are ones whose solves all converge (a solve stopped at the iteration limit is not a function of
    # its inputs at rounding level).
    cfg, spec, model = _model(constraint, problem, interface_weight, dtype="float64", gtol=1e-12)
    ids = (0, 1)
    loss, grads = _step(model, spec, sample_fields(cfg, spec, 3, list(ids)), ids, converged=True)
    gpu = torch.device("cuda")
    loss_gpu, grads_gpu = _step(model.to(gpu), spec, sample_fields(cfg, spec, 3, list(ids), gpu), ids, True)
    assert loss_gpu == pytest.approx(loss, rel=1e-8)
    assert len(grads_gpu) == len(grads) > 0
    # The joint interface solve is ill-conditioned: a 1e-14 relative change of the ICs moves its CPU gradients
    # by about 1e-4 (the others by under 1e-8).
    rtol = 1e-2 if interface_weight else 1e-6
    for a, b in zip(grads, grads_gpu, strict=True):
        assert torch.linalg.vector_norm(a - b) <= rtol * torch.linalg.vector_norm(a)
