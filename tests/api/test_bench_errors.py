"""`bench/errors.py`: two exports scored on one shard split, with the median and the MAE without
each model's worst structures, on the split's records as the shards hold them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from api_fixtures import make_export, perovskites

from foundation.api import load_model
from foundation.data.shards import read_split, write_shards


def test_errors_scores_each_export_on_the_split(export64, tmp_path, bench_script):
    errors = bench_script("errors")
    crystals = perovskites(24)
    manifest = write_shards(crystals, tmp_path / "shards", fractions=(0.5, 0.25, 0.25))
    test = list(read_split(tmp_path / "shards", "test"))
    assert len(test) == manifest["counts"]["splits"]["test"]["records"] > 3
    by_id = {c.id: c for c in crystals}
    assert all(np.allclose(c.positions, by_id[c.id].positions) for c in test)  # the records, decoded

    other = make_export(tmp_path / "other", torch.float64, seed=1)
    out = tmp_path / "errors.json"
    assert errors.main([str(export64), str(other), "--shards", str(tmp_path / "shards"), "--task",
                        "formation_energy", "--drop", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["n"] == len(test) and list(doc["models"]) == [str(export64), str(other)]
    labels = np.array([c.targets["formation_energy"] for c in test])
    for export, row in doc["models"].items():
        expected = np.abs(load_model(export).predict(test)["formation_energy"] - labels)
        assert row["mae"] == pytest.approx(expected.mean()) and row["median"] == pytest.approx(np.median(expected))
        assert row["mae_without_worst_2"] == pytest.approx(np.sort(expected)[:-2].mean())
        assert [e for _, _, e in row["worst"]] == pytest.approx(np.sort(expected)[::-1][:2])
    assert doc["models"][str(export64)]["mae"] != doc["models"][str(other)]["mae"]
    with pytest.raises(SystemExit, match="has the label 'energy'"):  # a task of the export the records lack
        errors.main([str(export64), "--shards", str(tmp_path / "shards"), "--task", "energy"])
