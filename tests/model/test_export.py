"""Portable export: round trip with identical predictions; foreign, other-version, corrupt or
mismatched directories refused with a message naming the problem; loading never unpickles."""

import json
import pickle
import shutil

import pytest
import torch
from model_fixtures import batch_of, load_mp

from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats, load_export, save_export
from foundation.model.export import ExportError

CONFIG = ModelConfig(cutoff=4.0, n_basis=6, hidden_irreps="8x0e + 4x1o + 2x2e", n_layers=2,
                     radial_hidden=(8,), head_hidden=8, ewald_every=2, ewald_hidden=4)
TASKS = [TaskSpec.for_target("energy", datasets=("mp",)), TaskSpec.for_target("forces", forces_of="energy"),
         TaskSpec.for_target("band_gap"), TaskSpec.for_target("is_metal")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(3)
    model = FoundationModel(CONFIG, TASKS, stats={"energy": TaskStats((-0.5,), (1.5,), {8: -4.9, 89: -4.1}),
                                                   "band_gap": TaskStats((1.2,), (0.7,))}, dtype=torch.float64).eval()
    directory = save_export(model, tmp_path_factory.mktemp("export") / "m", extra={"sources": ["mp2018"]})
    return model, directory


@pytest.fixture()
def copy(exported, tmp_path):
    return shutil.copytree(exported[1], tmp_path / "copy")


def test_round_trip_identical_predictions(exported, monkeypatch):
    model, directory = exported
    # Loading must never unpickle: make every pickle path fail loudly.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    loaded = load_export(directory)
    assert not loaded.training and loaded.tasks == model.tasks and loaded.config == model.config
    batch = batch_of(load_mp(max_atoms=8, limit=20)[:6], CONFIG.cutoff)
    a, b = model(batch), loaded(batch)
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert next(loaded.parameters()).dtype == torch.float64


def test_config_json_contents(exported):
    meta = json.loads((exported[1] / "config.json").read_text())
    assert meta["format"] == "foundation-export" and meta["format_version"] == 1
    assert meta["dtype"] == "float64" and meta["extra"] == {"sources": ["mp2018"]}
    assert meta["normalization"]["band_gap"] == [[1.2], [0.7]]
    assert meta["element_refs"] == {"energy": {"8": -4.9, "89": -4.1}}
    assert [t["name"] for t in meta["tasks"]] == ["energy", "forces", "band_gap", "is_metal"]
    assert meta["model_config"]["hidden_irreps"] == "8x0e + 4x1o + 2x2e"


def test_float32_round_trip(tmp_path):
    model = FoundationModel(CONFIG, TASKS[:1]).eval()
    loaded = load_export(save_export(model, tmp_path / "f32"))
    batch = batch_of(load_mp(max_atoms=8, limit=10)[:3], CONFIG.cutoff, dtype=torch.float32)
    assert torch.equal(model(batch)["energy"], loaded(batch)["energy"])


def _edit(directory, **changes):
    path = directory / "config.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        node = meta
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(json.dumps(meta))


def test_foreign_directories_refused(tmp_path):
    with pytest.raises(ExportError, match="no such export directory"):
        load_export(tmp_path / "missing")
    with pytest.raises(ExportError, match="no config.json"):
        load_export(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ExportError, match="not a foundation export"):
        load_export(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        load_export(tmp_path)


@pytest.mark.parametrize("version", [0, 2, "1"])
def test_other_format_versions_refused(copy, version):
    _edit(copy, format_version=version)
    with pytest.raises(ExportError, match="format version .* reads version 1 only"):
        load_export(copy)


def test_missing_or_corrupt_weights_refused(copy):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="unreadable safetensors"):
        load_export(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        load_export(copy)


def test_tensors_not_matching_config_refused(copy):
    _edit(copy, **{"model_config.hidden_irreps": "16x0e + 4x1o + 2x2e"})
    with pytest.raises(ExportError, match="do not match config.json.*wrong shapes"):
        load_export(copy)


def test_extra_task_in_config_refused(copy):
    meta = json.loads((copy / "config.json").read_text())
    meta["tasks"].append(dict(meta["tasks"][2], name="gap2"))
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="missing tensors.*gap2"):
        load_export(copy)


def test_invalid_config_fields_refused(copy):
    _edit(copy, **{"model_config.n_layers": "three"})
    with pytest.raises(ExportError, match="model_config.n_layers: expected int"):
        load_export(copy)


def test_normalisation_disagreeing_with_tensors_refused(copy):
    _edit(copy, **{"normalization.band_gap": [[1.2], [0.8]]})
    with pytest.raises(ExportError, match="disagree"):
        load_export(copy)
