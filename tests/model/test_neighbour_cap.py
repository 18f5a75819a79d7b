"""The equivariant encoder's neighbour cap (`max_neighbors`, CGCNN's 12 nearest): it keeps each
atom's nearest shells whole, so in float64 a capped model stays invariant to rotation, translation
and the order of atoms, and intensive outputs of a 2x2x2 supercell equal the cell's, even in
symmetric crystals where the k-th and (k+1)-th neighbours sit at one distance."""

import dataclasses

import numpy as np
import pytest
import torch
from model_fixtures import SMALL, batch_of, load_mp, supercell, transformed

from foundation.model import FoundationModel, TaskSpec, TaskStats
from foundation.model.encoder import edge_vectors, nearest_shell_edges

CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:4]
TOL = dict(rtol=1e-10, atol=1e-10)


def _model(k: int) -> FoundationModel:
    torch.manual_seed(0)
    stats = {"formation_energy_per_atom": TaskStats((-1.0,), (1.0,), {8: -2.0})}
    return FoundationModel(dataclasses.replace(SMALL, max_neighbors=k),
                           [TaskSpec.for_target("formation_energy_per_atom")], stats, dtype=torch.float64).eval()


def _predict(model, crystals):
    with torch.no_grad():
        return model(batch_of(crystals, model.config.cutoff))["formation_energy_per_atom"]


def test_nearest_shell_edges_keeps_ties_whole():
    receiver = torch.tensor([0, 0, 0, 0, 1, 1])
    length = torch.tensor([2.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert nearest_shell_edges(receiver, length, 2).tolist() == [True, True, True, False, True, True]
    assert nearest_shell_edges(receiver, length, 1).tolist() == [False, True, False, False, True, False]
    assert nearest_shell_edges(receiver, length, 0).all()


def test_the_cap_drops_edges_and_changes_the_prediction():
    batch = batch_of(CRYSTALS, SMALL.cutoff)
    kept = nearest_shell_edges(batch.edge_index[0], edge_vectors(batch).norm(dim=-1), 6)
    assert 0 < int(kept.sum()) < batch.edge_index.shape[1]
    capped, full = _predict(_model(2), CRYSTALS), _predict(_model(0), CRYSTALS)
    assert (capped - full).abs().max() > 1e-6  # float64: far above rounding
    torch.testing.assert_close(_predict(_model(10_000), CRYSTALS), full, **TOL)  # a cap above every count


@pytest.mark.parametrize("index", range(len(CRYSTALS)))
def test_a_capped_model_is_invariant_and_supercell_consistent(index):
    model, c = _model(6), CRYSTALS[index]
    rng = np.random.default_rng(index)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(c.n_atoms)
    moved = transformed(c, positions=(c.positions[perm] + rng.normal(size=3)) @ q.T, cell=c.cell @ q.T,
                        numbers=c.numbers[perm])
    p = _predict(model, [c])
    torch.testing.assert_close(_predict(model, [moved]), p, **TOL)
    torch.testing.assert_close(_predict(model, [supercell(c)]), p, **TOL)
