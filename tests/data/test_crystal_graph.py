import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from pymatgen.core import Lattice, Structure

from foundation.data import Crystal, collate, neighbor_graph


def rocksalt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_pymatgen_round_trip_keeps_positions_exactly():
    s = rocksalt()
    c = Crystal.from_pymatgen(s, targets={"band_gap": 5.0}, id="nacl", source="test")
    assert c.n_atoms == 8 and c.pbc.all() and c.volume == pytest.approx(5.64**3)
    back = c.to_pymatgen()
    np.testing.assert_array_equal(back.cart_coords, s.cart_coords)
    assert back.composition == s.composition


def test_ase_round_trip_keeps_tags_and_fixed_atoms():
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.set_tags([1 if a.position[2] > 8 else 0 for a in slab])
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    c = Crystal.from_ase(slab, id="s", source="oc20")
    assert c.pbc.tolist() == [True, True, False]
    assert c.arrays["fixed"].sum() == 4 and set(c.arrays["tags"]) == {0, 1}
    back = c.to_ase()
    np.testing.assert_array_equal(back.get_tags(), slab.get_tags())
    assert sorted(back.constraints[0].get_indices()) == [0, 1, 2, 3]


def test_mismatched_lengths_name_the_record():
    with pytest.raises(ValueError, match="src:bad"):
        Crystal(numbers=[1, 1], positions=np.zeros((3, 3)), cell=np.eye(3), pbc=True, id="bad", source="src")


def _distances(graph):
    c = graph.crystal
    i, j = graph.edge_index
    vec = c.positions[j] - c.positions[i] + graph.edge_shift @ c.cell
    return np.linalg.norm(vec, axis=1)


def test_neighbor_graph_matches_ase_and_respects_cutoff():
    from ase.neighborlist import neighbor_list

    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    c = Crystal.from_ase(atoms)
    g = neighbor_graph(c, 4.0)
    d = _distances(g)
    assert (d < 4.0).all() and (d > 0).all()
    ref = np.sort(neighbor_list("d", atoms, 4.0))
    np.testing.assert_allclose(np.sort(d), ref, atol=1e-10)


def test_neighbor_graph_respects_non_periodic_directions():
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=0.5)  # tiny vacuum: a periodic z would add bonds
    c = Crystal.from_ase(slab)
    g = neighbor_graph(c, 3.0)
    assert np.all(g.edge_shift[:, 2] == 0)
    periodic = neighbor_graph(c.replace(pbc=np.array([True, True, True])), 3.0)
    assert periodic.n_edges > g.n_edges


def test_molecule_without_cell():
    c = Crystal(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=np.zeros((3, 3)), pbc=False)
    g = neighbor_graph(c, 2.0)
    assert g.n_edges == 6


def test_collate_offsets_and_masks():
    a = Crystal.from_pymatgen(rocksalt(), targets={"band_gap": 5.0}, id="a", source="t")
    b = Crystal.from_ase(bulk("Cu"), targets={"energy": -3.7, "forces": np.ones((1, 3))}, id="b", source="t")
    batch = collate([neighbor_graph(a, 4.0), neighbor_graph(b, 4.0)], dtype=torch.float64)
    assert batch.n_graphs == 2 and batch.numbers.shape == (9,)
    assert batch.edge_index[:, batch.batch[batch.edge_index[0]] == 1].min() >= 8
    assert batch.masks["band_gap"].tolist() == [True, False]
    assert batch.masks["energy"].tolist() == [False, True]
    assert batch.masks["forces"].tolist() == [False] * 8 + [True]
    assert batch.targets["forces"].shape == (9, 3)
    moved = batch.to(dtype=torch.float32)
    assert moved.positions.dtype == torch.float32 and moved.numbers.dtype == torch.int64


def test_slab_with_zero_open_row_does_not_crash_vesin():
    # vesin aborts on a singular box with a periodic direction; the graph builder must guard it.
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    cell = np.array(slab.cell)
    cell[2] = 0.0
    c = Crystal(numbers=slab.numbers, positions=slab.positions, cell=cell, pbc=[True, True, False])
    g = neighbor_graph(c, 3.0)
    ref = neighbor_graph(Crystal.from_ase(slab), 3.0)
    np.testing.assert_allclose(np.sort(_distances(g)), np.sort(_distances(ref)), atol=1e-10)
    wire = Crystal(numbers=[6, 6], positions=[[0, 0, 0], [1.4, 0, 0]], cell=np.diag([2.8, 0, 0]), pbc=[True, False, False])
    assert neighbor_graph(wire, 2.0).n_edges == 4
