"""Checkpoints that are not ours, or not this version's, are refused with a message naming the
problem; a pickle is never unpickled (its payload would write a marker file); every path form of
an export (directory, run directory, config.json, model.safetensors) loads the same model."""

import json
import pathlib
import shutil

import pytest
import torch

from foundation import load_encoder, load_model
from foundation.cli import main
from foundation.calculator import FoundationCalculator
from foundation.model.export import ExportError, resolve_export


class _Payload:
    """Unpickling this calls Path.write_text(marker, "executed")."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "executed")


def _malicious_checkpoint(directory: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.pt"
    torch.save({"state_dict": {}, "hook": _Payload(marker)}, path)
    return path


def test_pickle_checkpoint_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "marker"
    checkpoint = _malicious_checkpoint(tmp_path / "run", marker)
    for path in (checkpoint, checkpoint.parent):
        with pytest.raises(ExportError, match=str(path)):
            load_model(path)
        with pytest.raises(ExportError):
            load_encoder(path)
        with pytest.raises(ExportError):
            FoundationCalculator(path)
    with pytest.raises(ExportError, match="zip archive .*unpickling can run arbitrary code"):
        load_model(checkpoint)
    with pytest.raises(ExportError, match=r"no config.json.*it holds \['model.pt'\]"):
        load_model(checkpoint.parent)
    structure = tmp_path / "POSCAR"
    structure.write_text("Si\n1.0\n0 2.7 2.7\n2.7 0 2.7\n2.7 2.7 0\nSi\n2\ncartesian\n0 0 0\n1.35 1.35 1.35\n")
    assert main(["predict", str(checkpoint), str(structure), "--out", str(tmp_path / "p.csv")]) == 2
    assert "unpickling can run arbitrary code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
    # the trap is real: a plain unpickling of the same file does run the payload
    torch.load(checkpoint, weights_only=False)
    assert marker.read_text() == "executed"


def test_plain_pickle_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"\x80\x04\x95")
    with pytest.raises(ExportError, match="a Python pickle"):
        load_model(path)


def test_old_format_version_refused(export64, tmp_path):
    copy = shutil.copytree(export64, tmp_path / "old")
    meta = json.loads((copy / "config.json").read_text())
    meta["format_version"], meta["package_version"] = 0, "0.0.1"
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"format version 0 \(written by foundation 0.0.1\).*reads version 1"):
        load_model(copy)
    with pytest.raises(ExportError, match="format version 0"):
        load_encoder(copy / "model.safetensors")


def test_model_config_not_matching_tensors_refused(export64, tmp_path):
    copy = shutil.copytree(export64, tmp_path / "other")
    meta = json.loads((copy / "config.json").read_text())
    meta["model_config"]["hidden_irreps"] = "32x0e + 8x1o + 4x2e"
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"tensors do not match config.json: .*wrong shapes .*config needs"):
        load_model(copy)


def test_unrelated_directory_and_missing_path_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ExportError, match=rf"{tmp_path}: not a foundation export \(no config.json"):
        load_model(tmp_path)
    with pytest.raises(ExportError, match="not a foundation export file"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(ExportError, match="no such export directory"):
        load_model(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ExportError, match="not a foundation export .format None"):
        load_model(tmp_path)


def test_every_path_form_resolves(export64, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(export64, run / "export")
    (run / "checkpoints").mkdir()
    forms = [run, run / "export", run / "export" / "config.json", run / "export" / "model.safetensors"]
    assert {resolve_export(p) for p in forms} == {run / "export"}
    reference = load_model(export64).model.state_dict()
    loaded = load_model(str(run)).model.state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)
