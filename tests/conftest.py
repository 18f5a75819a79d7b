"""Fixtures shared by every test folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_script():
    """`bench_script("accuracy")`: a benchmark script imported as a module (with `bench/` on the path
    while it imports, for its `_common`), so a test can call its functions and `main`."""
    def load(name: str):
        sys.path.insert(0, str(BENCH))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(BENCH))
    return load
