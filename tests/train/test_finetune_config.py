"""Fine-tuning configuration: derived labels, config errors that stop before anything starts
(unknown key, bad freeze/derive/budget, missing checkpoint), and CLI flags over the YAML
(foundation/train/run_config.py, resolve.py, foundation/data/labels.py, foundation/cli/finetune.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.cli.finetune import config_from_args, parse_args
from foundation.config import ConfigError
from foundation.data.labels import derived_label
from foundation.train.resolve import validate
from foundation.train.run_config import TaskConfig, config_from_mapping, load_config

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def test_derived_labels():
    labels = {"wien2k_B": 100.0, "band_gap": 0.0, "zero": 0.0}
    assert derived_label("log10(wien2k_B)", labels) == pytest.approx(2.0)
    assert derived_label("wien2k_B", labels) == 100.0
    assert derived_label("band_gap <= 0", labels) == 1.0 and derived_label("band_gap > 0.5", labels) == 0.0
    assert derived_label("log10(zero)", labels) is None and derived_label("log10(missing)", labels) is None


def _cfg(**over) -> dict:
    return {"checkpoint": "nowhere", "data": {"path": str(DATA / "materials_project/summary.jsonl.gz")},
            "tasks": [{"target": "band_gap"}], "max_steps": 5, **over}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"early_stopping\.patiense: unknown key"):
        config_from_mapping(_cfg(early_stopping={"patiense": 3}))
    with pytest.raises(ConfigError, match=r"freeze"):
        config_from_mapping(_cfg(freeze="blocks:2"))
    with pytest.raises(ConfigError, match=r"max_task_weight must be > 0"):
        config_from_mapping(_cfg(max_task_weight=0))
    assert config_from_mapping(_cfg(max_task_weight=10)).max_task_weight == 10
    with pytest.raises(ConfigError, match=r"max_task_weight caps the learned uncertainty weights"):
        config_from_mapping(_cfg(max_task_weight=10, loss="fixed"))
    with pytest.raises(ConfigError, match=r"max_steps, epochs or max_time"):
        config_from_mapping({k: v for k, v in _cfg().items() if k != "max_steps"})
    with pytest.raises(ConfigError, match=r"data: derive\.y: "):
        config_from_mapping(_cfg(data={"path": "x", "derive": {"y": "sqrt(x)"}}))
    with pytest.raises(ConfigError, match=r"^checkpoint: .*nowhere"):
        validate(config_from_mapping(_cfg(), "finetune"))
    path = tmp_path / "ft.yaml"
    path.write_text("data: {path: missing.json}\ntasks: [{target: band_gap}]\nmax_steps: 3\nlr_decay: 2.0\n")
    with pytest.raises(ConfigError, match=r"lr_decay must lie in \(0, 1\]"):
        load_config(path, recipe="finetune")


def test_cli_flags_override_the_yaml(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("data: {path: a.json.gz, format: matbench, options: {targets: [e_form]}, limit: 9}\n"
                    "tasks: [{target: formation_energy_per_atom}, {target: band_gap}]\nmax_steps: 3\n")
    args = parse_args(["--config", str(path), "--data", "b.csv", "--target", "heat_all", "--kind", "regression",
                       "--freeze", "first:1", "--lr-decay", "0.5", "--keep-heads", "max_steps=7"])
    cfg = config_from_args(args)
    assert cfg.data.path == "b.csv" and cfg.data.format is None and cfg.data.options == {} and cfg.data.limit == 9
    assert cfg.tasks == [TaskConfig(target="heat_all", kind="regression")]
    assert (cfg.freeze, cfg.lr_decay, cfg.keep_heads, cfg.max_steps) == ("first:1", 0.5, True, 7)
    with pytest.raises(ConfigError, match="apply to one task"):
        config_from_args(parse_args(["--config", str(path), "--task-name", "x"]))
    bare = config_from_args(parse_args(["--data", "c.json", "--target", "band_gap", "--drop-heads"]))
    assert bare.epochs is not None and bare.keep_heads is False
    pooled = config_from_args(parse_args(["--data", "c.json", "--target", "log10_bulk_modulus", "--pool", "features"]))
    assert pooled.tasks == [TaskConfig(target="log10_bulk_modulus", pool="features")]


def test_one_config_type_for_both_recipes(tmp_path):
    """Pretraining and fine-tuning are two recipes of RunConfig: defaults differ, the type does not;
    a fresh model from a model config alone needs no checkpoint; a config names its recipe."""
    fine = config_from_mapping(_cfg(), "finetune")
    pre = config_from_mapping({"datasets": {"mp": {"path": "x"}}, "tasks": [{"target": "band_gap"}], "max_steps": 5})
    assert type(fine) is type(pre)
    assert (fine.loss, fine.optimizer.lr, fine.early_stopping.enabled, fine.final_eval) == ("fixed", 1e-3, True, True)
    assert (pre.loss, pre.optimizer.lr, pre.early_stopping.enabled, pre.final_eval) == ("uncertainty", 3e-4, False, False)
    assert fine.data.keep_labels == "tasks" and fine.data.fractions == (0.8, 0.1, 0.1)
    tiny = str(ROOT / "configs/model/tiny.yaml")
    fresh = config_from_mapping({**{k: v for k, v in _cfg().items() if k != "checkpoint"}, "model": tiny}, "finetune")
    assert fresh.checkpoint is None and fresh.model == tiny
    with pytest.raises(ConfigError, match="one of them"):
        config_from_mapping({**_cfg(), "model": tiny}, "finetune")
    res = validate(fresh)
    assert res.pretrained is None and res.model.n_layers >= 1 and res.loader.cutoff == res.model.cutoff
    with pytest.raises(ConfigError, match="recipe: the config is a 'pretrain' config"):
        config_from_mapping({**_cfg(), "recipe": "pretrain"}, "finetune")
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.weigth: unknown key"):
        config_from_mapping(_cfg(tasks=[{"target": "band_gap", "weigth": 2}]), "finetune")
    with pytest.raises(ConfigError, match=r"loader\.max_atom: unknown key"):
        config_from_mapping(_cfg(loader={"max_atom": 2}), "finetune")
