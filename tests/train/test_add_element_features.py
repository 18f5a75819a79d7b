"""`add_element_features`: fine-tuning a checkpoint whose encoder has no element descriptors adds
them, zero-initialised, so the fine-tune starts from exactly the pretrained encoder's features
(foundation/train/resolve.py, weights.py); a fresh model of any encoder gets them too, so a
task config that asks for them gives them to every model compared on it."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize("flag", ["element_features", "cell_features"])
def test_added_descriptors_start_from_the_pretrained_features(flag):
    """`add_cell_features` does for the cell descriptors (foundation/nn/cell.py) what
    `add_element_features` does for the element descriptors."""
    res = validate(config_from_mapping(_cfg(**{f"add_{flag}": True}), "finetune"))
    assert getattr(res.model, flag) and not getattr(res.pretrained.config, flag)
    model = build_objective(res, {"band_gap": TaskStats((1.0,), (1.0,))}).model.eval()
    assert not getattr(model.encoder, flag).linear.weight.any()
    if flag == "cell_features":
        assert model.encoder.cell_features.volumes[1:].all()  # pymatgen's volumes, not the zero map's
    rock_salt = Crystal([11, 17], [[0.0, 0.0, 0.0], [2.82, 2.82, 2.82]], 5.64 * (1 - torch.eye(3).numpy()) / 2,
                        [True, True, True], id="NaCl")
    batch = collate([neighbor_graph(rock_salt, res.model.cutoff)])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(batch)["graph_features"],
                                   res.pretrained.encoder(batch)["graph_features"])


@pytest.mark.parametrize("flag, other", [("element_features", "cell_features"), ("cell_features", "element_features")])
def test_a_fresh_model_gets_them_too(flag, other):
    fresh = {k: v for k, v in _cfg(**{f"add_{flag}": True}).items() if k != "checkpoint"}
    res = validate(config_from_mapping({**fresh, "model": str(ROOT / "configs/model/cgcnn.yaml")}, "finetune"))
    assert res.pretrained is None and res.model.encoder == "cgcnn" and getattr(res.model, flag)
    assert not getattr(res.model, other)

