"""`pool: features`: an intensive task's head applied to the mean of the atoms' invariants (CGCNN's
readout) instead of averaging per-atom outputs. The prediction keeps the task's normalisation and
element references, stays invariant and supercell-consistent, differs from the per-atom form
(the head combines atoms nonlinearly), trains, and survives an export; extensive tasks refuse it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import batch_of, load_mp, rotated_permuted, supercell

from foundation.api import load_encoder
from foundation.config import ConfigError, from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats, load_export, save_export
from foundation.train.resolve import task_specs
from foundation.train.run_config import config_from_mapping

ROOT = Path(__file__).resolve().parents[2]
TINY = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/tiny.yaml"))
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]
TARGET = "log10_bulk_modulus"
STATS = {TARGET: TaskStats((1.5,), (0.3,), {8: 0.2, 3: -0.1})}


def _model(pool: str, seed: int = 0) -> FoundationModel:
    torch.manual_seed(seed)
    task = TaskSpec.for_target(TARGET, pool=pool)
    return FoundationModel(TINY, [task], STATS, dtype=torch.float64).eval()


def _predict(model, crystals):
    with torch.no_grad():
        return model(batch_of(crystals, TINY.cutoff))[TARGET]


def test_the_head_sees_the_mean_of_the_features():
    pooled, per_atom = _model("features"), _model("contributions")
    per_atom.load_state_dict(pooled.state_dict())  # identical weights, only the readout differs
    batch = batch_of(CRYSTALS, TINY.cutoff)
    with torch.no_grad():
        h = pooled.encoder(batch)["node_invariants"]
        head = pooled.heads[TARGET]
        for i, crystal in enumerate(CRYSTALS):
            rows = batch.batch == i
            refs = torch.tensor([STATS[TARGET].element_refs.get(int(z), 0.0) for z in crystal.numbers])
            want = 0.3 * head.mlp(h[rows].mean(0)) + 1.5 + refs.mean()
            torch.testing.assert_close(_predict(pooled, [crystal]), want.reshape(1).to(torch.float64))
    assert not torch.allclose(_predict(pooled, CRYSTALS), _predict(per_atom, CRYSTALS))


def test_pooled_features_are_invariant_and_supercell_consistent():
    model = _model("features", seed=3)
    c = CRYSTALS[0]
    moved = rotated_permuted(c)
    p = _predict(model, [c])
    torch.testing.assert_close(_predict(model, [moved]), p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_predict(model, [supercell(c)]), p, rtol=1e-10, atol=1e-10)
    # A batch predicts each structure as it would alone.
    alone = torch.cat([_predict(model, [x]) for x in CRYSTALS])
    torch.testing.assert_close(_predict(model, CRYSTALS), alone, rtol=1e-10, atol=1e-10)


def test_pooled_head_trains_and_round_trips(tmp_path):
    model = _model("features", seed=1).train()
    out = model(batch_of(CRYSTALS, TINY.cutoff))[TARGET]
    out.sum().backward()
    assert model.heads[TARGET].mlp[0].weight.grad.abs().max() > 0
    assert next(model.encoder.parameters()).grad is not None
    model.eval()
    directory = save_export(model, tmp_path / "pooled")
    loaded = load_export(directory)
    assert loaded.tasks[TARGET].pool == "features"
    torch.testing.assert_close(_predict(loaded, CRYSTALS), _predict(model, CRYSTALS))
    # The readout features are the hidden layer the pooled head computes: of the mean features.
    readout = load_encoder(directory).embed(CRYSTALS[:1], level="readout")  # [1, F_all + H]
    with torch.no_grad():
        h = model.encoder(batch_of(CRYSTALS[:1], TINY.cutoff))["node_invariants"]
        want = model.heads[TARGET].mlp[:2](h.mean(0))
    np.testing.assert_allclose(readout[0, -want.shape[0]:], want.numpy(), rtol=1e-10, atol=1e-12)


def test_extensive_and_atom_tasks_refuse_it():
    with pytest.raises(ValueError, match="intensive structure-level"):
        TaskSpec.for_target("energy", pool="features")
    with pytest.raises(ValueError, match="pool must be"):
        TaskSpec.for_target(TARGET, pool="sum")


def test_a_run_config_names_it_per_task():
    cfg = config_from_mapping({
        "recipe": "finetune", "model": str(ROOT / "configs/model/tiny.yaml"), "max_steps": 1,
        "data": {"path": "x.json", "format": "mp_elasticity"},
        "tasks": [{"target": "log10_shear_modulus", "pool": "features"}, {"target": "log10_bulk_modulus"}],
    })
    specs = task_specs(cfg, {"x": cfg.data})
    assert [s.pool for s in specs] == ["features", "contributions"]
    bad = {"recipe": "finetune", "model": str(ROOT / "configs/model/tiny.yaml"), "max_steps": 1,
           "data": {"path": "x.json", "format": "cif_csv"}, "tasks": [{"target": "energy", "pool": "features"}]}
    with pytest.raises(ConfigError, match="intensive"):
        task_specs(config_from_mapping(bad), {"x": config_from_mapping(bad).data})
