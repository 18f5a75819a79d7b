"""Host memory allocator settings for training processes (glibc's malloc, through `mallopt`).

Why: a training step allocates and frees tensors of tens of MiB (per-edge messages, their
gradients) in shapes that change with every batch. With glibc's defaults such blocks are mapped
and unmapped on each allocation (or the heap top is trimmed back to the system and grown again),
so every step pays fresh page faults, page zeroing included. Measured on the 2-core development VM
(mp2018 formation energy, `small`, 2 processes, 400 steps): 20 % of the CPU time in the kernel and
68-72 s of training; with the settings below, 54-59 s (bench/README.md, "The host allocator").
PyTorch's CPU tuning guide recommends swapping in jemalloc or tcmalloc for the same reason; those are
not pip-installable, and three `mallopt` calls give the same effect with glibc, which is already
loaded. Nothing changes numerically: only where freed memory goes.

    M_MMAP_THRESHOLD  32 MiB   blocks up to this come from the heap, not a fresh mapping each time
    M_TRIM_THRESHOLD   8 GiB   freed memory at the heap top stays with the process for reuse
    M_TOP_PAD        256 MiB   the heap grows in large steps

The price is that the process keeps its peak heap until it exits (its peak RSS is unchanged:
957 against 940 MiB per rank in that run). Skipped where it cannot or should not apply: not
glibc (macOS, musl), a preloaded jemalloc or tcmalloc, or the user's own MALLOC_* settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["SETTINGS", "tune_host_allocator"]

log = logging.getLogger("foundation.train")

# mallopt parameter numbers (glibc's malloc.h) -> value
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {_M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 8 * 2**30, _M_TOP_PAD: 256 * 2**20}
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_host_allocator(enabled: bool = True) -> str:
    """Apply SETTINGS to this process's glibc malloc; returns what happened, in words
    ("tuned", or "skipped: <reason>"). Safe to call more than once."""
    if not enabled:
        return "skipped: disabled (distributed.tune_host_allocator: false)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"skipped: not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return f"skipped: another allocator is preloaded ({preload})"
    own = [name for name in _ENV if name in os.environ]
    if own:
        return f"skipped: the environment sets {', '.join(own)}"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    failed = [param for param, value in SETTINGS.items() if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1]
    if failed:
        return f"skipped: mallopt refused parameter(s) {failed}"
    return "tuned"
