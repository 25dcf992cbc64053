"""verify.allocator: glibc keeps freed tensor memory for reuse (measured as page faults in a fresh process)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from verify.allocator import tune_allocator

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# Allocates, fills and frees a 40 MiB tensor 6 times; prints the minor page faults of the last 10 rounds.
PROBE = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from verify.allocator import tune_allocator
    assert tune_allocator()
if sys.argv[1].startswith("cli"):
    from verify.cli.main import main
    if sys.argv[1] == "cli-usage":  # a usage error: no command runs
        assert main(["bounds", "--option-that-does-not-exist"]) == 2
    else:  # a command runs, and fails on its missing file
        assert main(["verify", "/nonexistent/net.onnx", "/nonexistent/prop.vnnlib"]) == 2
def rounds(n):
    for _ in range(n):
        t = torch.empty(10 << 20, dtype=torch.float32)
        t.fill_(1.0)
        del t
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_tuned_allocator_reuses_freed_tensor_memory():
    default, tuned = _faults("default"), _faults("tuned")
    # 10 x 40 MiB of fresh pages is ~102,000 faults by default; reused heap memory faults almost never
    assert default > 50_000
    assert tuned < default / 5


def test_the_clarke_command_tunes_the_allocator_when_a_command_runs():
    assert _faults("cli-command") < _faults("cli-usage") / 5  # a usage error returns before any command


def test_a_user_setting_in_glibc_tunables_stands(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert tune_allocator() is False


@pytest.mark.parametrize("bad", [0, -1])
def test_thresholds_must_be_positive(bad):
    with pytest.raises(ValueError, match="positive"):
        tune_allocator(mmap_threshold=bad)
