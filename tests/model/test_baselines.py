"""Every shipped encoder config (the default `small`, and the CGCNN, SchNet and composition-only
baselines) on real crystals, in float64: the invariances every encoder owes the heads (rotation,
translation, atom order, periodic cell, supercell), the neighbour cap, composition-only blindness to
geometry, and a model of each through the export with forces equal to −dE/dx."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.spatial.transform import Rotation

from foundation.config import from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats, load_export, save_export
from foundation.model.encoder import nearest_edges
from model_fixtures import batch_of, load_mp, supercell, transformed

ROOT = Path(__file__).resolve().parents[2]
BASELINES = ("cgcnn", "schnet", "composition")
SHIPPED = ("small", *BASELINES)  # configs/model/<name>.yaml


def _config(name: str) -> ModelConfig:
    return from_dict(ModelConfig, load_yaml(ROOT / f"configs/model/{name}.yaml"))


@pytest.fixture(scope="module")
def crystals():
    return load_mp(max_atoms=6, limit=40)[:6]


def _features(encoder, crystals, cutoff):
    with torch.no_grad():
        return encoder(batch_of(crystals, cutoff))["graph_features"]


@pytest.mark.parametrize("name", SHIPPED)
def test_invariant_to_rotation_translation_order_and_supercell(name, crystals):
    torch.manual_seed(0)
    config = _config(name)
    model = FoundationModel(config, [TaskSpec.for_target("band_gap")], dtype=torch.float64).eval()
    encoder, cutoff = model.encoder, config.cutoff
    base = _features(encoder, crystals, cutoff)
    assert base.shape == (len(crystals), config.n_features) and torch.isfinite(base).all()
    assert base.std() > 0  # not trivial
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = [transformed(c, positions=c.positions @ rot.T + 1.7, cell=c.cell @ rot.T) for c in crystals]
    order = [transformed(c, positions=c.positions[::-1], numbers=c.numbers[::-1]) for c in crystals]
    for other in (moved, order, [supercell(c) for c in crystals]):
        torch.testing.assert_close(_features(encoder, other, cutoff), base, atol=1e-9, rtol=1e-9)


def test_composition_only_is_blind_to_geometry(crystals):
    torch.manual_seed(0)
    encoder = FoundationModel(_config("composition"), [TaskSpec.for_target("band_gap")], dtype=torch.float64).encoder
    squeezed = [transformed(c, positions=c.positions * 0.9, cell=c.cell * 0.9) for c in crystals]
    torch.testing.assert_close(_features(encoder, squeezed, 5.0), _features(encoder, crystals, 5.0))


def test_nearest_edges_keeps_the_k_shortest_of_each_atom():
    receiver = torch.tensor([0, 0, 0, 1, 1, 2])
    length = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0, 9.0])
    assert nearest_edges(receiver, length, 2).tolist() == [False, True, True, True, True, True]
    assert nearest_edges(receiver, length, 1).tolist() == [False, True, False, False, True, True]
    assert nearest_edges(receiver, length, 0).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_exports_loads_and_predicts_the_same(name, crystals, tmp_path):
    torch.manual_seed(1)
    tasks = [TaskSpec.for_target("formation_energy_per_atom"), TaskSpec.for_target("energy"),
             TaskSpec.for_target("forces", forces_of="energy")]
    model = FoundationModel(_config(name), tasks, {"energy": TaskStats((-5.0,), (1.0,), {8: -4.9})},
                            dtype=torch.float64).eval()
    loaded = load_export(save_export(model, tmp_path / name))
    batch = batch_of(crystals, model.config.cutoff)
    a, b = model(batch), loaded(batch)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert a["forces"].shape == (batch.positions.shape[0], 3)
    if name == "composition":
        assert torch.equal(a["forces"], torch.zeros_like(a["forces"]))
        return
    # forces of a structure-aware baseline are −dE/dx: one component against a central difference
    h, (atom, axis) = 1e-5, (1, 0)
    energies = []
    for sign in (1.0, -1.0):
        shifted = batch.positions.clone()
        shifted[atom, axis] += sign * h
        with torch.no_grad():
            energies.append(model.heads["energy"](model.encoder(batch, shifted), batch).sum())
    numeric = -(energies[0] - energies[1]) / (2 * h)
    assert a["forces"].abs().max() > 0
    torch.testing.assert_close(a["forces"][atom, axis], numeric, atol=1e-6, rtol=1e-5)
