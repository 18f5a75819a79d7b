"""Fine-tuning weights without a training run: freezing depths, layer-wise learning-rate groups,
the late-starting EMA, and early stopping's bookkeeping (foundation/train/weights.py, early_stopping.py, ema.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from foundation.config import from_dict, load_yaml
from foundation.model import FoundationModel, ModelConfig, TaskSpec
from foundation.train.engine import param_groups
from foundation.model.tasks import TaskStats
from foundation.train.config import EarlyStoppingConfig
from foundation.train.early_stopping import EarlyStopping
from foundation.train.ema import EMA
from foundation.train.weights import encoder_depth, freeze_encoder, lr_scales
from foundation.train.loop import Objective
from foundation.train.loss import MultiTaskLoss

ROOT = Path(__file__).resolve().parents[2]


def _model(n_layers: int = 2) -> FoundationModel:
    cfg = from_dict(ModelConfig, {**load_yaml(ROOT / "configs/model/tiny.yaml"), "n_layers": n_layers})
    return FoundationModel(cfg, [TaskSpec.for_target("band_gap"), TaskSpec.for_target("is_metal")])


def _encoder_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("encoder.")]


def test_encoder_depth_names_embedding_blocks_and_heads():
    assert encoder_depth("encoder.embedding.weight") == 0
    assert encoder_depth("model.encoder.blocks.0.linear_in.weight") == 1
    assert encoder_depth("encoder.blocks.2.radial_mlp.layer0.weight") == 3
    assert encoder_depth("encoder.ewald.1.charges.weight") == 2
    assert encoder_depth("model.heads.band_gap.mlp.0.weight") is None
    assert encoder_depth("heads.encoder.mlp.0.weight") is None  # a task named "encoder"
    assert encoder_depth("loss.log_vars") is None


def test_freeze_first_k_freezes_exactly_the_embedding_and_first_k_blocks():
    model = _model(n_layers=3)
    for k in range(4):
        for p in model.parameters():
            p.requires_grad_(True)
        frozen = set(freeze_encoder(model, k))
        expected = {n for n in _encoder_names(model) if n.startswith("encoder.embedding.")
                    or any(n.startswith(f"encoder.blocks.{b}.") for b in range(k))}
        assert frozen == expected, k
        for name, p in model.named_parameters():
            assert p.requires_grad == (name not in expected), (k, name)


def test_freeze_none_and_whole_encoder():
    model = _model()
    assert freeze_encoder(model, -1) == []
    assert set(freeze_encoder(model, 2)) == set(_encoder_names(model))  # "encoder" = depth L


def test_lr_decay_groups_have_the_expected_ratios():
    model = _model(n_layers=2)
    objective = Objective(model, MultiTaskLoss(list(model.tasks.values())))
    groups = param_groups(objective, 0.01, lr_scales(0.5, 2))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    for name, p in objective.named_parameters():
        if name.startswith("model.heads.") or name.startswith("loss."):
            expected = 1.0
        elif name.startswith("model.encoder.blocks.1."):
            expected = 0.5  # last block: lr·D
        elif name.startswith("model.encoder.blocks.0."):
            expected = 0.25  # first block: lr·D^L
        else:
            assert name.startswith("model.encoder.embedding."), name
            expected = 0.125  # embedding: lr·D^(L+1)
        assert scale_of[id(p)] == expected, name
    # frozen parameters get no group; decay still follows the matrix/bias rule
    freeze_encoder(model, 0)
    groups = param_groups(objective, 0.01, lr_scales(0.5, 2))
    assert id(model.encoder.embedding.weight) not in {id(p) for g in groups for p in g["params"]}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}


def test_param_groups_without_scales_are_the_pretraining_groups():
    objective = Objective(_model(), MultiTaskLoss([TaskSpec.for_target("band_gap"), TaskSpec.for_target("is_metal")]))
    groups = param_groups(objective, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all("lr_scale" not in g for g in groups)


def test_delayed_ema_copies_then_averages():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5, start=2)
    for step in range(1, 4):
        with torch.no_grad():
            model.weight.add_(1.0)
        before = ema.module.weight.clone()
        ema.update(model.named_parameters())
        if step <= 2:
            assert torch.equal(ema.module.weight, model.weight)
        else:
            assert torch.allclose(ema.module.weight, before + 0.9 * (model.weight - before))  # min(0.5, 1/10)=0.1


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    model = torch.nn.Linear(1, 1)
    task = TaskSpec.for_target("band_gap")
    stop = EarlyStopping(EarlyStoppingConfig(patience=2), True, [task], {"band_gap": TaskStats(std=(2.0,))}, lambda: model)
    maes = [0.5, 0.4, 0.45, 0.41]
    decisions = []
    for step, mae in enumerate(maes, 1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        decisions.append(stop(step, {"d": {"band_gap": {"mae": mae, "rmse": mae, "n": 3}}}))
    assert decisions == [False, False, False, True]
    assert stop.best_step == 2 and stop.best == pytest.approx(0.4) and float(stop.best_state["weight"]) == 2.0
    assert stop.curve == [(1, 0.5), (2, 0.4), (3, 0.45), (4, 0.41)]
    loss = EarlyStopping(EarlyStoppingConfig(monitor="loss"), True, [task, TaskSpec.for_target("is_metal")],
                         {"band_gap": TaskStats(std=(2.0,))}, lambda: model)
    assert loss.value({"d": {"band_gap": {"mae": 0.5}, "is_metal": {"roc_auc": 0.75}}}) == pytest.approx(0.25)
    assert math.isnan(loss.value({}))
