"""`FoundationModel.forces_on_own_datasets` (set by the trainer): one backward pass for all force
tasks gives, on each task's own records, exactly the per-task forces (float64), zeros elsewhere,
in training (create_graph) and evaluation mode; overlapping datasets fall back to the per-task path."""

import numpy as np
import pytest
import torch

from foundation.config import from_dict, load_yaml
from foundation.data.graph import collate, neighbor_graph
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats

from toy import random_crystal


def _model(datasets_b=("b", "c")):
    config = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"))
    tasks = [TaskSpec.for_target("energy", name="ea", datasets=("a",)),
             TaskSpec.for_target("forces", name="fa", forces_of="ea", datasets=("a",)),
             TaskSpec.for_target("energy", name="eb", datasets=datasets_b),
             TaskSpec.for_target("forces", name="fb", forces_of="eb", datasets=datasets_b)]
    torch.manual_seed(0)
    return FoundationModel(config, tasks, stats={"ea": TaskStats((0.1,), (0.7,)), "eb": TaskStats((-0.2,), (1.3,))}).double()


def _batch():
    rng = np.random.default_rng(0)
    return collate([neighbor_graph(random_crystal(rng, str(k)), 5.0, dataset="abcd"[k % 4]) for k in range(8)],
                   torch.float64)


@pytest.mark.parametrize("training", [False, True])
def test_one_pass_equals_per_task_forces_on_own_records(training):
    model, batch = _model(), _batch()
    model.train(training)
    reference = model(batch)
    model.forces_on_own_datasets = True
    fast = model(batch)
    for task, own in (("fa", "a"), ("fb", "bc")):
        atoms = torch.tensor([d in own for d in batch.datasets])[batch.batch]
        torch.testing.assert_close(fast[task][atoms], reference[task][atoms], rtol=1e-12, atol=1e-12)
        assert torch.count_nonzero(fast[task][~atoms]) == 0
        assert fast[task][atoms].abs().sum() > 0
    if training:  # the force loss still back-propagates to the weights
        (fast["fa"].square().sum() + fast["fb"].square().sum()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_shared_datasets_fall_back_to_the_per_task_path():
    model, batch = _model(datasets_b=("a", "b")), _batch()
    reference = model(batch)
    model.forces_on_own_datasets = True
    fast = model(batch)
    for task in ("fa", "fb"):
        torch.testing.assert_close(fast[task], reference[task], rtol=0, atol=0)
