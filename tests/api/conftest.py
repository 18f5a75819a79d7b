"""Fixtures of the checkpoint API tests: one float64 and one float32 tiny export per session."""

import pytest
import torch
from api_fixtures import make_export


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Graphs of 5-40 atoms: one thread is fastest, and a second OpenMP thread spin-waits (20x
    # slower, measured) when another process holds the other core of a 2-core runner.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def export64(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export64") / "export", torch.float64)


@pytest.fixture(scope="session")
def export32(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export32") / "export", torch.float32)
