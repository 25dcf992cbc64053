"""A node of a (simulated, two-node) Ray cluster dies while it runs an instance: the instance is re-run on the
other node and the report is complete and correct, each instance once."""

from __future__ import annotations

import csv
import threading

import pytest

from tests.test_cli_verify import run_main
from tests.test_cluster import SLOW, _acas, _instances, _report, fault_when_running

ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra (in [dev]): pip install -e '.[cluster]'")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_node_dying_mid_instance_is_rerun_on_another_node(capsys, tmp_path):
    from ray.cluster_utils import Cluster

    pairs = [_acas(*s) for s in SLOW[:4]]
    csv_path = _instances(tmp_path, pairs)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    removed = threading.Event()

    def remove_the_second_node(pids: list[int]) -> None:  # both nodes run an instance
        cluster.remove_node(doomed, allow_graceful=False)
        removed.set()

    try:
        with fault_when_running(2, remove_the_second_node):
            code, _, err = run_main(capsys, "verify", "--instances", csv_path, "--report", tmp_path / "r.csv",
                                    "--cluster", "ray", "-q")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed.is_set()  # the node went away while both nodes ran an instance
    assert code == 0, err
    rows = _report(tmp_path / "r.csv")
    assert [(r["onnx"], r["vnnlib"]) for r in rows] == pairs
    assert all(r["status"] == "unsat" and r["correct"] == "1" for r in rows), rows
    with (tmp_path / "r.csv").open(newline="") as f:
        assert len(list(csv.reader(f))) == len(pairs) + 1
