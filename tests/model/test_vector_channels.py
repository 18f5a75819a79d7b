"""The first block's vector messages from a few scalar mixtures of their own (`vector_channels`):
its per-edge messages shrink as configured, the written-out product still equals e3nn's, the model
stays invariant under rotation and permutation and intensive on a supercell in float64, and a
negative setting is refused."""

import dataclasses

import pytest
import torch
from e3nn import o3
from model_fixtures import E_FORM, E_FORM_STATS, E_FORM_TASKS, SMALL, assert_invariant_and_intensive, load_mp

from foundation.model import FoundationModel

CONFIG = dataclasses.replace(SMALL, vector_channels=16)
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]


def test_the_first_block_makes_fewer_vector_messages():
    torch.manual_seed(0)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64)
    first, last = model.encoder.blocks
    assert first.irreps_mid == o3.Irreps("64x0e + 16x1o")
    assert first.tp.irreps_in1 == o3.Irreps("64x0e + 16x0e")
    without = FoundationModel(dataclasses.replace(SMALL, vector_channels=0), E_FORM_TASKS, E_FORM_STATS).encoder.blocks
    assert without[0].irreps_mid == o3.Irreps("64x0e + 64x1o") and last.irreps_mid == without[-1].irreps_mid
    assert first.written_out is not None
    n = 11
    x, sh = first.tp.irreps_in1.randn(n, -1, dtype=torch.float64), first.tp.irreps_in2.randn(n, -1, dtype=torch.float64)
    w = torch.randn(n, first.tp.weight_numel, dtype=torch.float64)
    assert torch.allclose(first.written_out(x, sh, w), first.tp(x, sh, w), atol=1e-12)


def test_invariant_and_intensive():
    torch.manual_seed(4)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    assert_invariant_and_intensive(model, CRYSTALS[:2], E_FORM)


def test_a_negative_setting_is_refused():
    with pytest.raises(ValueError, match="vector_channels"):
        dataclasses.replace(SMALL, vector_channels=-2)
