"""The per-atom feed-forward update of each block's scalars (`ffn_hidden`): it changes the model's
output, reads and writes invariants only (so the prediction stays invariant under rotation and
permutation and intensive on a supercell, in float64), and a negative width is refused."""

import dataclasses

import pytest
import torch
from model_fixtures import E_FORM, E_FORM_STATS, E_FORM_TASKS, SMALL, assert_invariant_and_intensive, batch_of, load_mp

from foundation.model import FoundationModel

CONFIG = dataclasses.replace(SMALL, ffn_hidden=16)
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]


def test_every_block_gets_the_update_and_it_acts():
    torch.manual_seed(1)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    assert all(block.ffn is not None for block in model.encoder.blocks)
    plain = FoundationModel(SMALL, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".ffn." in k for k in missing)
    batch = batch_of(CRYSTALS, CONFIG.cutoff)
    assert not torch.allclose(model(batch)[E_FORM], plain(batch)[E_FORM])


def test_invariant_and_intensive():
    torch.manual_seed(2)
    model = FoundationModel(CONFIG, E_FORM_TASKS, E_FORM_STATS, dtype=torch.float64).eval()
    assert_invariant_and_intensive(model, CRYSTALS[:2], E_FORM)


def test_a_negative_width_is_refused():
    with pytest.raises(ValueError, match="ffn_hidden"):
        dataclasses.replace(SMALL, ffn_hidden=-1)
