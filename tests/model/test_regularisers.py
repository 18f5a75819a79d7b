"""The two regularisers for small, data-bound property sets: `ModelConfig.dropout` (on the
invariants every head reads) and `RunConfig.position_noise` (a Gaussian displacement of every atom
in training batches). Both act in training only: an evaluated or exported model predicts exactly as
without them, stays invariant, and the config refuses values that make no sense."""

from pathlib import Path

import pytest
import torch
from model_fixtures import batch_of, load_mp, rotated_permuted

from foundation.config import ConfigError, from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats
from foundation.train.loop import Objective
from foundation.train.loss import MultiTaskLoss
from foundation.train.run_config import config_from_mapping
from foundation.train.weights import check_position_noise

ROOT = Path(__file__).resolve().parents[2]
TINY = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/tiny.yaml"))
CRYSTALS = [c for c in load_mp(max_atoms=6, limit=60) if len(set(c.numbers)) > 1][:3]
TARGET = "log10_bulk_modulus"
STATS = {TARGET: TaskStats((1.5,), (0.3,), {})}


def _model(dropout: float, seed: int = 0) -> FoundationModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{**TINY.__dict__, "dropout": dropout})
    return FoundationModel(config, [TaskSpec.for_target(TARGET)], STATS, dtype=torch.float64)


def test_dropout_acts_in_training_only():
    plain, dropped = _model(0.0), _model(0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout adds no weights
    batch = batch_of(CRYSTALS, TINY.cutoff)
    with torch.no_grad():
        want = plain.eval()(batch)[TARGET]
        torch.testing.assert_close(dropped.eval()(batch)[TARGET], want)
        dropped.train()
        torch.manual_seed(1)
        first = dropped(batch)[TARGET]
        torch.manual_seed(2)
        second = dropped(batch)[TARGET]
    assert not torch.allclose(first, want) and not torch.allclose(first, second)


def test_a_model_with_dropout_is_invariant_when_evaluated():
    model = _model(0.3, seed=2).eval()
    c = CRYSTALS[0]
    with torch.no_grad():
        p = model(batch_of([c], TINY.cutoff))[TARGET]
        q = model(batch_of([rotated_permuted(c)], TINY.cutoff))[TARGET]
    torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_dropout_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(**{**TINY.__dict__, "dropout": bad})


class _Seen(torch.nn.Module):
    """A stand-in model that records the positions it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.positions = None

    def forward(self, batch):
        self.positions = batch.positions.clone()
        return {TARGET: self.w * batch.positions.sum() + torch.zeros(batch.n_graphs, dtype=batch.positions.dtype)}


def test_position_noise_displaces_training_batches_only():
    batch = batch_of(CRYSTALS * 20, TINY.cutoff)
    seen = _Seen()
    objective = Objective(seen, MultiTaskLoss([TaskSpec.for_target(TARGET)]), position_noise=0.05)
    batch.targets[TARGET] = torch.zeros(batch.n_graphs, dtype=batch.positions.dtype)
    batch.masks[TARGET] = torch.ones(batch.n_graphs, dtype=torch.bool)
    objective.train()
    objective(batch)
    shift = seen.positions - batch.positions  # the batch itself is left as it was
    assert shift.abs().max() > 0
    assert abs(shift.std().item() - 0.05) < 0.01 and abs(shift.mean().item()) < 0.01
    objective.eval()
    objective(batch)
    torch.testing.assert_close(seen.positions, batch.positions)


def test_position_noise_is_refused_with_atom_level_tasks_and_out_of_range():
    energy = TaskSpec.for_target("energy")
    forces = TaskSpec.for_target("forces", forces_of="energy")
    check_position_noise(0.03, [TaskSpec.for_target(TARGET)])
    check_position_noise(0.0, [energy, forces])
    with pytest.raises(ConfigError, match="atom level"):
        check_position_noise(0.03, [energy, forces])
    base = {"recipe": "finetune", "data": {"path": "x.json"}, "tasks": [{"target": TARGET}],
            "model": "configs/model/tiny.yaml", "max_steps": 1}
    assert config_from_mapping({**base, "position_noise": 0.03}).position_noise == 0.03
    with pytest.raises((ConfigError, ValueError), match="position_noise"):
        config_from_mapping({**base, "position_noise": -0.1})
