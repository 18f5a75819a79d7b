"""Fixtures of the checkpoint API tests: one float64 and one float32 tiny export per session."""

import pytest
import torch
from api_fixtures import make_export


@pytest.fixture(scope="session")
def export64(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export64") / "export", torch.float64)


@pytest.fixture(scope="session")
def export32(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("export32") / "export", torch.float32)
