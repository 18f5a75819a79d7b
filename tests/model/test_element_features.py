"""Element descriptors (`element_features: true`): the periodic table's values reach every encoder
through a map that starts at zero, so a model with them predicts as one without until it trains;
the table is standardised, chemically ordered, carried by a checkpoint, and the model stays
invariant (it only changes what each species starts as)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import batch_of, load_mp, rotated_permuted, supercell

from foundation.config import from_dict, load_yaml
from foundation.data.elements import DESCRIPTOR_NAMES, element_descriptors
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats

ROOT = Path(__file__).resolve().parents[2]
SMALL = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/small.yaml"))
CGCNN = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/cgcnn.yaml"))
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]
TASKS = [TaskSpec.for_target("formation_energy_per_atom")]
STATS = {"formation_energy_per_atom": TaskStats((-1.0,), (1.0,), {8: -2.0})}


def test_the_table_is_standardised_and_chemical():
    table = element_descriptors(118)
    assert table.shape == (119, len(DESCRIPTOR_NAMES)) and np.isfinite(table).all()
    assert not table[0].any()  # no species
    np.testing.assert_allclose(table[1:].mean(axis=0), 0.0, atol=1e-12)
    x = table[:, DESCRIPTOR_NAMES.index("X")]
    assert x[9] == x[1:].max()  # fluorine is the most electronegative
    d = table[:, DESCRIPTOR_NAMES.index("valence_d")]
    assert d[26] > d[20] and d[29] == d[1:].max()  # Fe 3d6 over Ca; Cu's 3d10 is full
    # Elements of one group sit closer than elements of one period.
    assert np.linalg.norm(table[11] - table[19]) < np.linalg.norm(table[11] - table[17])  # Na-K vs Na-Cl


@pytest.mark.parametrize("base", [SMALL, CGCNN], ids=["small", "cgcnn"])
@pytest.mark.parametrize("flag, buffer", [("element_features", "table"), ("cell_features", "volumes")])
def test_the_map_starts_at_zero_then_trains(base, flag, buffer):
    """The element descriptors and the cell descriptors (test_cell_features.py) alike."""
    torch.manual_seed(0)
    plain = FoundationModel(base, TASKS, STATS, dtype=torch.float64)
    torch.manual_seed(0)
    with_table = FoundationModel(dataclasses.replace(base, **{flag: True}), TASKS, STATS, dtype=torch.float64)
    missing = with_table.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"encoder.{flag}.linear.weight", f"encoder.{flag}.{buffer}"]
    batch = batch_of(CRYSTALS, base.cutoff)
    out = with_table(batch)["formation_energy_per_atom"]
    torch.testing.assert_close(out, plain(batch)["formation_energy_per_atom"])
    out.sum().backward()
    assert getattr(with_table.encoder, flag).linear.weight.grad.abs().max() > 0


def test_a_model_with_the_table_is_invariant_and_round_trips():
    torch.manual_seed(1)
    model = FoundationModel(dataclasses.replace(SMALL, element_features=True), TASKS, STATS, dtype=torch.float64).eval()
    torch.nn.init.normal_(model.encoder.element_features.linear.weight, std=0.3)

    def predict(m, crystals):
        with torch.no_grad():
            return m(batch_of(crystals, SMALL.cutoff))["formation_energy_per_atom"]

    c = CRYSTALS[0]
    moved = rotated_permuted(c)
    p = predict(model, [c])
    torch.testing.assert_close(predict(model, [moved]), p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(predict(model, [supercell(c)]), p, rtol=1e-10, atol=1e-10)
    clone = FoundationModel(dataclasses.replace(SMALL, element_features=True), TASKS, STATS, dtype=torch.float64).eval()
    clone.encoder.element_features.table.zero_()  # the checkpoint's table wins over pymatgen's
    clone.load_state_dict(model.state_dict())
    assert element_descriptors(118)[1:].any()  # writing a model's table leaves the shared one alone
    torch.testing.assert_close(predict(clone, CRYSTALS), predict(model, CRYSTALS))
