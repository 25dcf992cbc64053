"""Real gloo process groups (spawned, FileStore): 1, 2 and 4 processes give the single-process gradients."""

import numpy as np
import pytest
import torch.multiprocessing as mp

from physics.dist_check import CheckConfig, single_process, worker

CFG = CheckConfig()


@pytest.fixture(scope="module")
def reference():
    return single_process(CFG)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_data_and_expert_placements_match_single_process(world, reference, tmp_path):
    loss_ref, grads_ref = reference
    assert np.linalg.norm(grads_ref) > 0
    mp.spawn(worker, args=(world, str(tmp_path / "store"), str(tmp_path), CFG), nprocs=world, join=True)
    for placement in ("data", "expert"):
        out = np.load(tmp_path / f"{placement}.npy")
        loss, grads = out[0], out[2:]
        assert abs(loss - loss_ref) <= 1e-10 * abs(loss_ref), placement
        rel = np.linalg.norm(grads - grads_ref) / np.linalg.norm(grads_ref)
        assert rel <= 1e-10, (placement, world, rel)


def test_all_to_all_keeps_non_contiguous_tensors_and_gradients_in_order(tmp_path):
    """The exchange and its adjoint return C-ordered results for transposed inputs and gradients (empty_like
    would copy the input's strides and scramble the rows the collective writes in C order)."""
    import torch
    import torch.distributed as dist

    from physics.parallel import all_to_all

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.arange(12.0).reshape(3, 4).T.requires_grad_(True)  # (4, 3), non-contiguous
        y = all_to_all(x)
        assert torch.equal(y, x.detach())
        g = torch.arange(12.0).reshape(3, 4).T * 10  # a non-contiguous gradient
        (gx,) = torch.autograd.grad(y, x, grad_outputs=g)
        assert torch.equal(gx, g)
    finally:
        dist.destroy_process_group()
