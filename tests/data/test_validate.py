"""Validation before sharding: every bad record is rejected with a reason naming the value."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.data import Crystal
from foundation.data.records import Reject
from foundation.data.validate import ValidationConfig, min_pair_distance, validate


def nacl(**targets):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms
    return Crystal.from_ase(atoms, targets=targets or {"band_gap": 5.0}, id="nacl", source="test")


def rejected(result, *words):
    assert isinstance(result, Reject), result
    for word in words:
        assert word in result.reason, result.reason
    return result


def test_good_crystal_passes_unchanged():
    c = nacl(band_gap=5.0, formation_energy_per_atom=-2.0)
    assert validate(c, ValidationConfig(required_targets=("band_gap",))) is c


def test_no_atoms():
    c = Crystal(numbers=[], positions=np.zeros((0, 3)), cell=np.eye(3) * 4, pbc=True, id="nacl", source="t")
    rejected(validate(c), "no atoms")


def test_nan_coordinates_name_the_atom():
    c = nacl()
    c.positions[1, 2] = np.nan
    rejected(validate(c), "non-finite coordinates", "atom 1", "nan")


def test_non_finite_cell():
    c = nacl()
    c.cell[0, 0] = np.inf
    rejected(validate(c), "non-finite cell")


def test_singular_and_left_handed_cells():
    c = nacl()
    c.cell[2] = c.cell[0] + c.cell[1]  # coplanar lattice vectors
    rejected(validate(c), "singular cell")
    c = nacl()
    c.cell[2] = 0.0
    rejected(validate(c), "periodic cell vector 2 is zero")
    c = nacl()
    c.cell = c.cell[[1, 0, 2]]  # swapping two rows flips the handedness
    rejected(validate(c), "negative cell volume")


def test_non_periodic_directions_need_nothing():
    slab = Crystal.from_ase(fcc111("Cu", size=(2, 2, 3), vacuum=6.0), id="slab", source="t")
    slab.cell[2] = 0.0  # a slab with no vacuum row at all
    assert slab.pbc.tolist() == [True, True, False]
    assert isinstance(validate(slab), Crystal)
    mol = Crystal.from_ase(molecule("H2O"), id="h2o", source="t")
    assert not mol.pbc.any() and np.all(mol.cell == 0)
    assert isinstance(validate(mol), Crystal)
    flat = slab.replace(cell=np.array([[2.5, 0, 0], [5.0, 0, 0], [0, 0, 0]]))  # parallel in-plane rows
    rejected(validate(flat), "singular cell", "pbc [True, True, False]")


def test_unknown_and_disallowed_elements():
    c = nacl()
    c.numbers[0] = 0
    rejected(validate(c), "unknown element Z=0")
    c = nacl()
    c.numbers[0] = 119
    rejected(validate(c), "unknown element Z=119")
    rejected(validate(nacl(), ValidationConfig(allowed_elements=frozenset({11, 8}))), "Z=[17]", "allowed")
    with pytest.raises(ValueError, match="outside 1..118"):
        ValidationConfig(allowed_elements=frozenset({0, 1}))


def test_overlapping_atoms_are_found_through_periodic_images():
    c = nacl()
    # atom 1 placed 0.3 Å from atom 0's image across the cell face: close only with periodic images
    c.positions[1] = c.positions[0] + c.cell[0] + np.array([0.0, 0.0, 0.3])
    assert np.linalg.norm(c.positions[1] - c.positions[0]) > 5
    r = rejected(validate(c), "atoms 0", "and 1", "periodic images", "min_distance=0.5")
    assert "0.3 Å" in r.reason
    assert isinstance(validate(c, ValidationConfig(min_distance=0.2)), Crystal)


def test_atom_too_close_to_its_own_image():
    c = Crystal(numbers=[1], positions=[[0, 0, 0]], cell=np.eye(3) * 0.4, pbc=True, id="tiny", source="t")
    rejected(validate(c), "atoms 0 (Z=1) and 0 (Z=1)", "0.4 Å")


def test_missing_and_non_finite_labels():
    config = ValidationConfig(required_targets=("band_gap",))
    rejected(validate(nacl(efermi=1.0), config), "missing required label 'band_gap'")
    rejected(validate(nacl(band_gap=float("nan")), config), "'band_gap' is not finite", "nan")
    # an optional non-finite label is dropped, the record kept
    kept = validate(nacl(band_gap=1.0, efermi=float("inf")), config)
    assert isinstance(kept, Crystal) and kept.targets == {"band_gap": 1.0}


def test_forces_must_match_the_atoms():
    c = nacl(forces=np.zeros((3, 3)))
    rejected(validate(c), "'forces' has shape (3, 3)", "(8, ...)")
    f = np.zeros((8, 3))
    f[2, 1] = np.nan
    rejected(validate(nacl(forces=f), ValidationConfig(required_targets=("forces",))), "1 non-finite entries")


@settings(max_examples=20, deadline=None)
@given(st.floats(0.6, 2.5), st.integers(0, 2), st.floats(-0.45, 0.45))
def test_min_pair_distance_matches_a_brute_force_image_search(gap, axis, offset):
    """Two atoms `gap` Å apart across a random cell face of a random skewed cell."""
    rng = np.random.default_rng(int(gap * 1000) + axis)
    cell = np.diag([3.0, 3.5, 4.0]) + rng.uniform(-0.5, 0.5, (3, 3))
    frac0 = np.array([0.5, 0.5, 0.5]) + offset
    frac0[axis] = 0.02
    pos0 = frac0 @ cell
    direction = -cell[axis] / np.linalg.norm(cell[axis])
    pos1 = pos0 + gap * direction
    c = Crystal(numbers=[8, 8], positions=[pos0, pos1], cell=cell, pbc=True, id="p", source="t")
    shifts = np.array(np.meshgrid(*[range(-2, 3)] * 3)).reshape(3, -1).T @ cell
    brute = min(np.linalg.norm(c.positions[j] + shifts - c.positions[i], axis=1)[
        np.linalg.norm(c.positions[j] + shifts - c.positions[i], axis=1) > 1e-9].min()
        for i in range(2) for j in range(2))
    found = min_pair_distance(c, 10.0)
    assert found is not None and found[2] == pytest.approx(brute, abs=1e-9)
