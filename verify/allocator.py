"""glibc's allocator, set for bound computations: keep freed tensor memory for reuse instead of handing it back.

A bound pass allocates and frees tensors of megabytes many times per call. glibc serves a block above its mmap
threshold (128 KiB, raised dynamically to at most 32 MiB) with fresh pages from the kernel, zero-filled at first
touch, and returns a heap top above its trim threshold; so every call pays those page faults again. Raising both
(``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``, the settings ``GLIBC_TUNABLES`` also reaches) keeps
the memory in the heap. Measured on our 2-core machine, one thread, CROWN per call: the 784-100-100-10 MLP
6.6-8.5 -> 4.6-4.7 ms, the issue-15 CNN 40-52 -> 32-34 ms, oval21's cifar_wide architecture 82 -> 64 ms; alpha-CROWN,
``clarke verify`` on 10 oval21 instances and training steps unchanged within noise. The cost: a process keeps up to
``trim`` bytes of freed memory at its heap top.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process (the ``clarke`` command does this at start; call it
    once in a script that bounds many networks or boxes). Returns False, changing nothing, where the C library is
    not glibc or ``GLIBC_TUNABLES`` already sets a malloc option (the user's choice stands)."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    for value in (int(mmap_threshold), int(trim_threshold)):
        if value <= 0:
            raise ValueError(f"allocator thresholds must be positive, got {value}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
