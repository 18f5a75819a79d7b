"""The host allocator settings of training processes (foundation/train/allocator.py): applied on
glibc, skipped with the reason where the user chose otherwise, and switchable from the config."""

import platform

import pytest

from foundation.train.allocator import tune_host_allocator
from foundation.train.config import DistributedConfig

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_applied_on_glibc(monkeypatch):
    for name in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    assert tune_host_allocator() == "tuned"
    assert tune_host_allocator() == "tuned"  # idempotent


def test_skipped_with_the_reason(monkeypatch):
    assert tune_host_allocator(enabled=False).startswith("skipped: disabled")
    if not GLIBC:
        assert tune_host_allocator().startswith("skipped: not glibc")
        return
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert tune_host_allocator() == "skipped: the environment sets MALLOC_TRIM_THRESHOLD_"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert "another allocator is preloaded" in tune_host_allocator()


def test_on_by_default_and_switchable():
    assert DistributedConfig().tune_host_allocator is True
    assert DistributedConfig(tune_host_allocator=False).tune_host_allocator is False
