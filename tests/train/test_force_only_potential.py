"""A force-only potential (target `potential`): an energy head with no labels of its own, trained
through the forces that are its position gradient. Its statistics are (0, force RMS), it has no
mean predictor and no validation row, it adds nothing to the loss but its forces' term, a labelled
energy head of the same records gets no gradient from those forces, and a potential that no force
task reads is refused."""

import numpy as np
import pytest
import torch

from foundation.config import ConfigError, from_dict, load_yaml
from foundation.data.crystal import Crystal
from foundation.data.graph import collate, neighbor_graph
from foundation.data.shards import write_shards
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats
from foundation.train.distributed import DistInfo
from foundation.train.loss import MultiTaskLoss
from foundation.train.normalization import mean_predictors, task_statistics
from foundation.train.resolve import task_specs
from foundation.train.run_config import config_from_mapping
from foundation.train.validation import MetricAccumulator

TASKS = [TaskSpec.for_target("energy", name="e"),
         TaskSpec.for_target("potential", name="u"),
         TaskSpec.for_target("forces", name="f", forces_of="u")]


def _records(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 6))
        cell = np.eye(3) * 4.0
        out.append(Crystal(numbers=rng.choice([3, 8, 14], k), positions=rng.uniform(0, 1, (k, 3)) @ cell, cell=cell,
                           pbc=(True, True, True), id=str(i), source="syn",
                           targets={"energy": float(-5.0 * k + rng.normal(0, 0.1)),
                                    "forces": rng.normal(0, 0.4, (k, 3))}))
    return out


def test_the_spec_is_an_unlabelled_extensive_energy():
    u = TaskSpec.for_target("potential")
    assert not u.labelled and u.is_energy and u.extensive and u.unit == "eV"
    assert TaskSpec.for_target("energy").labelled
    with pytest.raises(ValueError, match="has no labels"):
        TaskSpec(name="u", target="potential", unit="GPa", extensive=True)


def test_statistics_give_the_force_scale_and_no_mean_predictor(tmp_path):
    write_shards(_records(), tmp_path, fractions=(1, 0, 0), progress=False, dedup=False)
    stats = task_statistics(TASKS, {"syn": str(tmp_path)})
    assert stats["u"].mean == (0.0,) and stats["u"].element_refs == {}
    assert stats["u"].std[0] == pytest.approx(0.4, rel=0.1)  # the forces' component RMS
    assert "e" in stats and stats["e"].std[0] != stats["u"].std[0]  # the energy keeps its own scale
    means = mean_predictors(TASKS, {"syn": str(tmp_path)})
    assert "u" not in means and means["f"] == (0.0, False)


def test_forces_train_the_potential_and_leave_the_energy_head_alone():
    torch.manual_seed(0)
    config = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"))
    stats = {"e": TaskStats((-5.0,), (0.1,)), "u": TaskStats((0.0,), (0.4,))}
    model = FoundationModel(config, TASKS, stats=stats).double()
    batch = collate([neighbor_graph(c, config.cutoff) for c in _records(6)], torch.float64)
    assert "potential" not in batch.targets
    loss_fn = MultiTaskLoss(TASKS, stats=stats).double()
    preds = model(batch)
    assert preds["f"].shape == (batch.positions.shape[0], 3)
    loss, logs = loss_fn(preds, batch)
    assert "f/loss" in logs and "e/loss" in logs and not any(k.startswith("u/") for k in logs)
    model.zero_grad()
    loss_fn(model(batch), batch)[0].backward()
    assert [t.name for t in loss_fn.tasks] == ["e", "f"] and loss_fn.log_vars.shape == (2,)  # no s_t for u
    assert model.heads["u"].mlp[0].weight.grad.abs().sum() > 0  # trained by the forces
    model.zero_grad()
    forces_only = {n: torch.zeros_like(p) if n != "f" else p for n, p in model(batch).items()}
    MultiTaskLoss(TASKS[2:] + TASKS[:2], stats=stats).double()(forces_only, batch)[0].backward()
    grad = model.heads["e"].mlp[0].weight.grad
    assert grad is None or grad.abs().sum() == 0  # the energy labels' head is not pulled by forces
    acc = MetricAccumulator(["syn"], TASKS)
    with torch.enable_grad():
        acc.add("syn", model(batch), batch)
    assert set(acc.reduce(_one_process())["syn"]) == {"e", "f"}  # no validation row for u


def _one_process():
    return DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend="gloo")


def test_a_potential_no_force_task_reads_is_refused(tmp_path):
    data = {"a": {"path": str(tmp_path / "a.extxyz"), "format": "extxyz"}}
    cfg = config_from_mapping({"datasets": data, "max_steps": 1, "model": "configs/model/tiny.yaml",
                               "tasks": [{"name": "u", "target": "potential"}]}, "pretrain")
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.target: 'potential' has no labels and no force task"):
        task_specs(cfg, cfg.datasets)
