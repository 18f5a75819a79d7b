"""Cell descriptors (`cell_features: true`): volume per atom, packing fraction and volume against the
elemental solids reach every atom through a map that starts at zero. The descriptors are checked
against hand-computed values in float64, are the same for a rotated, permuted or repeated cell, are
zero for structures that are not periodic in all directions, and a model with them stays invariant
and round-trips through its state dict. That the map starts at zero and trains is tested with the
element descriptors' (test_element_features.py)."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import batch_of, load_mp, rotated_permuted, supercell

from foundation.config import from_dict, load_yaml
from foundation.data.elements import element_volumes
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats
from foundation.nn.cell import _CENTRE, _SCALE, cell_descriptors

ROOT = Path(__file__).resolve().parents[2]
SMALL = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/small.yaml"))
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]
TASKS = [TaskSpec.for_target("formation_energy_per_atom")]
STATS = {"formation_energy_per_atom": TaskStats((-1.0,), (1.0,), {8: -2.0})}
VOLUMES = torch.tensor(element_volumes(118), dtype=torch.float64)


def _descriptors(numbers, cell, pbc=(True, True, True)):
    numbers = torch.tensor(numbers)
    return cell_descriptors(VOLUMES, numbers, torch.tensor(cell, dtype=torch.float64)[None],
                            torch.tensor([pbc]), torch.zeros(len(numbers), dtype=torch.long), 1)[0]


def test_the_volume_table_is_pymatgens():
    from pymatgen.core.periodic_table import Element

    table = element_volumes(118)
    assert table.shape == (119, 2) and not table[0].any() and (table[1:] > 0).all()
    na = Element("Na")
    assert table[11, 0] == pytest.approx(4 / 3 * math.pi * float(na.atomic_radius) ** 3)
    assert table[11, 1] == pytest.approx(float(na.molar_volume) / 0.602214076)  # cm^3/mol -> Å^3 per atom


def test_the_descriptors_by_hand():
    # rock salt NaCl in its primitive cell: a = 5.64 Å conventional, two atoms in a / 4 of its volume
    a = 5.64
    cell = [[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]
    volume = a**3 / 4
    na, cl = element_volumes(118)[11], element_volumes(118)[17]
    raw = [math.log(volume / 2), math.log((na[0] + cl[0]) / volume), math.log(volume / (na[1] + cl[1]))]
    expected = [(r - c) / s for r, c, s in zip(raw, _CENTRE, _SCALE)]
    torch.testing.assert_close(_descriptors([11, 17], cell), torch.tensor(expected, dtype=torch.float64))
    # a left-handed cell has the same volume
    torch.testing.assert_close(_descriptors([11, 17], [cell[1], cell[0], cell[2]]),
                               torch.tensor(expected, dtype=torch.float64))


def test_the_descriptors_of_a_supercell_and_of_a_slab():
    cell = np.diag([3.0, 4.0, 5.0])
    one = _descriptors([14, 8], cell)
    two = _descriptors([14, 8, 14, 8], cell @ np.diag([2.0, 1.0, 1.0]))
    torch.testing.assert_close(two, one)
    assert not _descriptors([14, 8], cell, pbc=(True, True, False)).any()


def test_a_batch_gives_each_structure_its_own_row():
    cells = torch.tensor(np.stack([np.eye(3) * 3.0, np.eye(3) * 4.0]))
    numbers = torch.tensor([11, 17, 14])
    batch = torch.tensor([0, 0, 1])
    rows = cell_descriptors(VOLUMES, numbers, cells, torch.ones(2, 3, dtype=torch.bool), batch, 2)
    torch.testing.assert_close(rows[0], _descriptors([11, 17], np.eye(3) * 3.0))
    torch.testing.assert_close(rows[1], _descriptors([14], np.eye(3) * 4.0))


def test_a_model_with_them_is_invariant_and_round_trips():
    config = dataclasses.replace(SMALL, cell_features=True, element_features=True)
    torch.manual_seed(1)
    model = FoundationModel(config, TASKS, STATS, dtype=torch.float64).eval()
    torch.nn.init.normal_(model.encoder.cell_features.linear.weight, std=0.3)

    def predict(m, crystals):
        with torch.no_grad():
            return m(batch_of(crystals, SMALL.cutoff))["formation_energy_per_atom"]

    c = CRYSTALS[0]
    p = predict(model, [c])
    torch.testing.assert_close(predict(model, [rotated_permuted(c)]), p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(predict(model, [supercell(c)]), p, rtol=1e-10, atol=1e-10)
    clone = FoundationModel(config, TASKS, STATS, dtype=torch.float64).eval()
    clone.encoder.cell_features.volumes.zero_()  # the checkpoint's table wins over pymatgen's
    clone.load_state_dict(model.state_dict())
    assert element_volumes(118)[1:].all()  # writing a model's table leaves the shared one alone
    torch.testing.assert_close(predict(clone, CRYSTALS), predict(model, CRYSTALS))
