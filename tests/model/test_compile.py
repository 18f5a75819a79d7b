"""`RunConfig.compile`: training forwards through torch.compile (dynamic shapes). A compiled step
must compute what the eager one does (loss and every gradient), over batches of different sizes
without a recompile each; copies (the EMA's) must never run the original's weights; and force
tasks, whose training needs a double backward, are refused."""

import copy
from pathlib import Path

import pytest
import torch
from model_fixtures import batch_of, load_mp

from foundation.config import ConfigError, from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats
from foundation.train.loop import Objective
from foundation.train.loss import MultiTaskLoss
from foundation.train.run_config import config_from_mapping
from foundation.train.weights import check_compile

ROOT = Path(__file__).resolve().parents[2]
SMALL = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/small.yaml"))
TARGET = "formation_energy_per_atom"
CRYSTALS = load_mp(max_atoms=12, limit=40)


def _objective(compile: bool) -> Objective:
    torch.manual_seed(0)
    task = TaskSpec.for_target(TARGET)
    model = FoundationModel(SMALL, [task], {TARGET: TaskStats((-1.0,), (1.0,), {})})
    return Objective(model, MultiTaskLoss([task], mode="fixed"), compile=compile)


def _batch(crystals):
    batch = batch_of(crystals, SMALL.cutoff, dtype=torch.float32)
    batch.targets[TARGET] = torch.linspace(-2.0, 0.5, batch.n_graphs)
    batch.masks[TARGET] = torch.ones(batch.n_graphs, dtype=torch.bool)
    return batch


def _step(objective: Objective, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    objective.zero_grad()
    loss, _, _ = objective(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


def test_a_compiled_step_computes_the_eager_one_and_copies_do_not_share_it():
    eager, compiled = _objective(False).train(), _objective(True).train()
    torch._dynamo.reset()
    for crystals in (CRYSTALS[:7], CRYSTALS[7:20], CRYSTALS[20:23]):  # 3 batch sizes, one compile
        batch = _batch(crystals)
        want_loss, want_grads = _step(eager, batch)
        loss, grads = _step(compiled, batch)
        torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5)
        assert grads.keys() == want_grads.keys() and len(grads) > 10
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    assert compiled._compiled is not None and eager._compiled is None
    # Evaluation runs eager: an objective that only evaluates never compiles.
    fresh = _objective(True).eval()
    with torch.no_grad():
        fresh(batch)
    assert fresh._compiled is None
    # A deep copy (what the EMA makes) starts without the original's compiled function, and
    # evaluates its own weights.
    twin = copy.deepcopy(compiled)
    assert twin._compiled is None and twin.compile
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        twin.eval(), eager.eval()
        for p, q in zip(eager.parameters(), twin.parameters()):
            p.copy_(q)
        torch.testing.assert_close(twin(batch)[0], eager(batch)[0])


def test_compile_is_refused_with_force_tasks_and_read_from_the_config():
    energy = TaskSpec.for_target("energy")
    forces = TaskSpec.for_target("forces", forces_of="energy")
    check_compile(True, [TaskSpec.for_target(TARGET), energy])
    check_compile(False, [energy, forces])
    with pytest.raises(ConfigError, match="double backward"):
        check_compile(True, [energy, forces])
    base = {"recipe": "finetune", "data": {"path": "x.json"}, "tasks": [{"target": TARGET}],
            "model": "configs/model/small.yaml", "max_steps": 1}
    assert config_from_mapping({**base, "compile": True}).compile is True
    assert config_from_mapping(base).compile is False
