"""The per-atom feed-forward update of each block's scalars (`ffn_hidden`): it changes the model's
output, reads and writes invariants only (so the prediction stays invariant under rotation and
permutation and intensive on a supercell, in float64), and a negative width is refused."""

import dataclasses
from pathlib import Path

import pytest
import torch
from model_fixtures import batch_of, load_mp, rotated_permuted, supercell

from foundation.config import from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats

SMALL = from_dict(ModelConfig, load_yaml(Path(__file__).resolve().parents[2] / "configs/model/small.yaml"))
CONFIG = dataclasses.replace(SMALL, ffn_hidden=16)
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]
TASKS = [TaskSpec.for_target("formation_energy_per_atom")]
STATS = {"formation_energy_per_atom": TaskStats((-1.0,), (1.0,), {8: -2.0})}
KEY = "formation_energy_per_atom"


def test_every_block_gets_the_update_and_it_acts():
    torch.manual_seed(1)
    model = FoundationModel(CONFIG, TASKS, STATS, dtype=torch.float64).eval()
    assert all(block.ffn is not None for block in model.encoder.blocks)
    plain = FoundationModel(SMALL, TASKS, STATS, dtype=torch.float64).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".ffn." in k for k in missing)
    batch = batch_of(CRYSTALS, CONFIG.cutoff)
    assert not torch.allclose(model(batch)[KEY], plain(batch)[KEY])


def test_invariant_and_intensive():
    torch.manual_seed(2)
    model = FoundationModel(CONFIG, TASKS, STATS, dtype=torch.float64).eval()
    with torch.no_grad():
        for c in CRYSTALS[:2]:
            p = model(batch_of([c], CONFIG.cutoff))[KEY]
            torch.testing.assert_close(model(batch_of([rotated_permuted(c)], CONFIG.cutoff))[KEY], p,
                                       rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(model(batch_of([supercell(c)], CONFIG.cutoff))[KEY], p,
                                       rtol=1e-10, atol=1e-10)


def test_a_negative_width_is_refused():
    with pytest.raises(ValueError, match="ffn_hidden"):
        dataclasses.replace(SMALL, ffn_hidden=-1)
