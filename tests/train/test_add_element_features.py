"""`add_element_features`: fine-tuning a checkpoint whose encoder has no element descriptors adds
them, zero-initialised, so the fine-tune starts from exactly the pretrained encoder's features
(foundation/train/resolve.py, weights.py); a fresh model of any encoder gets them too, so a
task config that asks for them gives them to every model compared on it."""

from __future__ import annotations

from pathlib import Path

import torch

from foundation.data.crystal import Crystal
from foundation.data.graph import collate, neighbor_graph
from foundation.model.tasks import TaskStats
from foundation.train.resolve import validate
from foundation.train.run_config import config_from_mapping
from foundation.train.weights import build_objective

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "foundation/pretrained/small-corpus"


def _cfg(**over) -> dict:
    return {"checkpoint": str(SHIPPED), "data": {"path": str(DATA / "materials_project/summary.jsonl.gz")},
            "tasks": [{"target": "band_gap"}], "max_steps": 5, **over}


def test_added_descriptors_start_from_the_pretrained_features():
    res = validate(config_from_mapping(_cfg(add_element_features=True), "finetune"))
    assert res.model.element_features and not res.pretrained.config.element_features
    model = build_objective(res, {"band_gap": TaskStats((1.0,), (1.0,))}).model.eval()
    assert not model.encoder.element_features.linear.weight.any()
    rock_salt = Crystal([11, 17], [[0.0, 0.0, 0.0], [2.82, 2.82, 2.82]], 5.64 * (1 - torch.eye(3).numpy()) / 2,
                        [True, True, True], id="NaCl")
    batch = collate([neighbor_graph(rock_salt, res.model.cutoff)])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(batch)["graph_features"],
                                   res.pretrained.encoder(batch)["graph_features"])


def test_a_fresh_model_gets_them_too():
    fresh = {k: v for k, v in _cfg(add_element_features=True).items() if k != "checkpoint"}
    res = validate(config_from_mapping({**fresh, "model": str(ROOT / "configs/model/cgcnn.yaml")}, "finetune"))
    assert res.pretrained is None and res.model.encoder == "cgcnn" and res.model.element_features


def test_added_cell_descriptors_start_from_the_pretrained_features():
    """`add_cell_features` does the same for the cell descriptors (foundation/nn/cell.py)."""
    res = validate(config_from_mapping(_cfg(add_cell_features=True, add_element_features=True), "finetune"))
    assert res.model.cell_features and not res.pretrained.config.cell_features
    model = build_objective(res, {"band_gap": TaskStats((1.0,), (1.0,))}).model.eval()
    assert not model.encoder.cell_features.linear.weight.any()
    assert model.encoder.cell_features.volumes[1:].all()
    rock_salt = Crystal([11, 17], [[0.0, 0.0, 0.0], [2.82, 2.82, 2.82]], 5.64 * (1 - torch.eye(3).numpy()) / 2,
                        [True, True, True], id="NaCl")
    batch = collate([neighbor_graph(rock_salt, res.model.cutoff)])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(batch)["graph_features"],
                                   res.pretrained.encoder(batch)["graph_features"])
    fresh = {k: v for k, v in _cfg(add_cell_features=True).items() if k != "checkpoint"}
    res = validate(config_from_mapping({**fresh, "model": str(ROOT / "configs/model/cgcnn.yaml")}, "finetune"))
    assert res.pretrained is None and res.model.cell_features and not res.model.element_features
