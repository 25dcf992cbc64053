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
