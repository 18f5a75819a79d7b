"""Fine-tuning end to end in this (plain python) process, on real sample data and a tiny export built
here: dcdft from the command-line entry, a frozen encoder with kept and replaced heads, a partly
frozen encoder on an explicit split, early stopping that exports the best step, and target errors
that stop before training. Each run starts and ends its own one-process group."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation.cli.finetune import cli_main, config_from_args, parse_args
from foundation.config import ConfigError, from_dict, load_yaml
from foundation.data.readers import read
from foundation.data.shards.stream import LoaderConfig, build_loader
from foundation.model import FoundationModel, ModelConfig, TaskSpec, TaskStats, load_export, save_export
from foundation.train.datasets import cache_key
from foundation.train.resolve import validate
from foundation.train.run import run
from foundation.train.run_config import RunConfig, config_from_mapping

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
MP = DATA / "materials_project" / "summary.jsonl.gz"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny export with the heads a pretrained checkpoint has (energies, forces, band gap, ...)."""
    torch.manual_seed(0)
    config = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/tiny.yaml"))
    tasks = [TaskSpec.for_target("formation_energy_per_atom", name="formation_energy"),
             TaskSpec.for_target("band_gap"), TaskSpec.for_target("is_metal"),
             TaskSpec.for_target("energy", name="mp_energy"),
             TaskSpec.for_target("forces", name="mp_forces", forces_of="mp_energy")]
    model = FoundationModel(config, tasks, stats={"band_gap": TaskStats((0.5,), (1.2,)),
                                                  "mp_energy": TaskStats(element_refs={8: -4.9})})
    return save_export(model, tmp_path_factory.mktemp("pretrained") / "export")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def finetune(cfg: RunConfig, split=None) -> dict:
    return run(validate(cfg), split=split)


def _shard_key(res, split) -> str:
    return cache_key(res.data_name, res.datasets[res.data_name], res.tasks, split)


def _config(pretrained: Path, cache: Path, run_dir: Path, **over) -> RunConfig:
    base = {"checkpoint": str(pretrained), "run_dir": str(run_dir), "cache_dir": str(cache), "seed": 1,
            "data": {"path": str(MP), "format": "mp_summary", "limit": 60},
            "tasks": [{"target": "band_gap"}], "max_steps": 6, "loader": {"max_atoms": 96},
            "optimizer": {"lr": 5.0e-3}, "schedule": {"warmup_steps": 1},
            "eval": {"every": 3}, "log": {"tensorboard": False, "progress": False}, "distributed": {"device": "cpu"}}
    return config_from_mapping({**base, **over}, "finetune")


def _state(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_dcdft_fine_tunes_end_to_end_from_one_command(pretrained, cache, tmp_path, capsys):
    run = tmp_path / "dcdft"
    rc = cli_main(["--config", str(ROOT / "configs/finetune/dcdft.yaml"), "--checkpoint", str(pretrained),
                   "--run-dir", str(run), f"cache_dir={cache}", "max_steps=12", "eval.every=4",
                   "log.tensorboard=false", "log.progress=false"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert {"export", "best_step", "validation", "test"} <= set(summary)
    assert summary["data"]["counts"]["read"] == 71 and summary["data"]["counts"]["rejected"] == 0
    val = summary["validation"]["bulk_modulus"]
    assert math.isfinite(val["mae"]) and val["n"] > 0
    model = load_export(summary["export"])
    assert list(model.tasks) == ["bulk_modulus"]  # pretrained heads dropped by default
    task = model.tasks["bulk_modulus"]
    assert (task.target, task.unit, task.kind) == ("log10_bulk_modulus", "log10(GPa)", "regression")
    extra = json.loads((run / "export" / "config.json").read_text())["extra"]
    assert extra["finetune"]["checkpoint"] == str(pretrained)
    assert extra["finetune"]["best_step"] == summary["best_step"]
    assert "validation  bulk_modulus" in out and "training records: expect a noisy" in out


def test_the_launcher_checks_a_config_without_starting_anything(pretrained):
    proc = subprocess.run([sys.executable, str(ROOT / "launch/finetune.py"), "--config",
                           str(ROOT / "configs/finetune/dcdft.yaml"), "--checkpoint", str(pretrained), "--check"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "config ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("config", sorted((ROOT / "configs/finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(config, pretrained):
    res = validate(config_from_args(parse_args(["--config", str(config), "--checkpoint", str(pretrained)])))
    assert res.tasks and Path(res.datasets[res.data_name].path).is_file()
    assert res.config.max_steps is not None and res.config.early_stopping.enabled


def test_frozen_encoder_kept_heads_and_a_replaced_head(pretrained, cache, tmp_path, capsys):
    summary = finetune(_config(pretrained, cache, tmp_path / "keep", freeze="encoder", keep_heads=True,
                               eval={"every": 3, "at_start": True}))
    out = capsys.readouterr().out
    before, after = load_export(pretrained), load_export(summary["export"])
    assert "replacing the checkpoint's head 'band_gap'" in out
    assert summary["replaced_heads"] == ["band_gap"]
    assert summary["kept_heads"] == ["formation_energy", "is_metal", "mp_energy", "mp_forces"]
    assert set(after.tasks) == set(before.tasks)
    encoder = _state(before, "encoder.")
    assert all(torch.equal(encoder[k], v) for k, v in _state(after, "encoder.").items())  # bit-identical
    for name in ("formation_energy", "is_metal", "mp_energy"):
        kept = _state(after, f"heads.{name}.")
        assert kept and all(torch.equal(v, before.state_dict()[k]) for k, v in kept.items()), name
    assert after.tasks["mp_forces"].forces_of == "mp_energy"
    new, old = _state(after, "heads.band_gap."), _state(before, "heads.band_gap.")
    assert not torch.equal(new["heads.band_gap.mlp.0.weight"], old["heads.band_gap.mlp.0.weight"])
    initial = summary["training"]["initial_validation"]["summary"]["band_gap"]["mae"]
    assert summary["training"]["validation"]["summary"]["band_gap"]["mae"] != initial  # the new head trained


class IdSplit:
    """An explicit split: named records to val and test, the rest to train."""

    def __init__(self, val: list[str], test: list[str]):
        self.val, self.test = set(val), set(test)

    def assign(self, crystal) -> str:
        return "val" if crystal.id in self.val else "test" if crystal.id in self.test else "train"

    def to_json(self) -> dict:
        return {"val": sorted(self.val), "test": sorted(self.test)}


def _split_ids(shard_dir: str, name: str) -> dict[str, set[str]]:
    out = {}
    for split in ("train", "val", "test"):
        loader = build_loader({name: shard_dir}, split, LoaderConfig(cutoff=5.0, shuffle=False))
        out[split] = {i.split(":", 1)[1] for batch in loader for i in batch.ids}
    return out


def test_first_k_frozen_heads_dropped_on_an_explicit_split(pretrained, cache, tmp_path):
    ids = [r.id for r in read(MP, "mp_summary")][:60]
    split = IdSplit(ids[:12], ids[12:20])
    cfg = _config(pretrained, cache, tmp_path / "split", freeze="first:1",
                  tasks=[{"name": "ef", "target": "formation_energy_per_atom"}])
    res = validate(cfg)
    assert len({_shard_key(res, None), _shard_key(res, split), _shard_key(res, IdSplit(ids[:5], []))}) == 3
    summary = finetune(cfg, split=split)
    assert _split_ids(summary["data"]["shards"], summary["data"]["name"]) == {
        "train": set(ids[20:]), "val": set(ids[:12]), "test": set(ids[12:20])}
    assert summary["validation"]["ef"]["n"] == 12 and summary["test"]["ef"]["n"] == 8
    before, after = load_export(pretrained), load_export(summary["export"])
    assert list(after.tasks) == ["ef"]
    for prefix, same in (("encoder.embedding.", True), ("encoder.blocks.0.", True), ("encoder.blocks.1.", False)):
        pairs = [(v, before.state_dict()[k]) for k, v in _state(after, prefix).items() if v.is_floating_point()]
        assert all(torch.equal(a, b) for a, b in pairs) == same, prefix


def test_early_stopping_stops_on_a_plateau_and_exports_the_best_step(pretrained, cache, tmp_path):
    # A plateau by definition: after the first evaluation nothing improves by more than min_delta.
    cfg = _config(pretrained, cache, tmp_path / "stop", max_steps=40, eval={"every": 2},
                  early_stopping={"patience": 2, "min_delta": 1.0e9}, checkpoints={"every": 2, "keep": 10})
    summary = finetune(cfg)
    assert summary["stopped_early"] and summary["steps"] == 6 and summary["best_step"] == 2
    curve = summary["monitor"]["curve"]  # every evaluation's validation MAE, the best among them
    assert [step for step, _ in curve] == [2, 4, 6]
    assert curve[0][1] == pytest.approx(summary["monitor"]["best"])
    ema = load_file(str(Path(cfg.run_dir) / "checkpoints" / "step_000000002" / "ema.safetensors"))
    exported = load_export(summary["export"]).state_dict()
    assert set(exported) == {k.removeprefix("model.") for k in ema if k.startswith("model.")}
    assert all(torch.equal(v, ema[f"model.{k}"]) for k, v in exported.items())
    last = load_file(str(Path(cfg.run_dir) / "checkpoints" / "step_000000006" / "ema.safetensors"))
    assert not all(torch.equal(v, last[f"model.{k}"]) for k, v in exported.items())  # not the last weights


def test_a_target_the_data_lacks_or_non_binary_labels_stop_before_training(pretrained, cache, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.target: .* no label 'bulk_modulus'; labels found .*band_gap") as err:
        finetune(_config(pretrained, cache, tmp_path / "a", tasks=[{"target": "bulk_modulus"}]))
    assert "band_gap (60)" in str(err.value)  # records carrying the label, not a sum of its values
    with pytest.raises(ConfigError, match=r"classification target needs labels 0 or 1; found band_gap="):
        finetune(_config(pretrained, cache, tmp_path / "b", tasks=[{"target": "band_gap", "kind": "classification"}]))
    assert not (tmp_path / "a" / "export").exists() and not (tmp_path / "b" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.datasets: this run reads one dataset, 'summary'"):
        validate(_config(pretrained, cache, tmp_path / "c", tasks=[{"target": "band_gap", "datasets": ["mp"]}]))
    rc = cli_main(["--checkpoint", str(pretrained), "--data", str(DATA / "missing.json"), "--target", "band_gap"])
    assert rc == 2 and "data.path: no such file" in capsys.readouterr().err


def test_a_wrong_target_is_reported_before_deepspeed_is_imported(cache, tmp_path):
    """A fresh model from a model config alone (no checkpoint); the label check answers before
    DeepSpeed is imported or its communication op built."""
    code = ("import sys; from foundation.cli import main; "
            f"rc = main(['finetune', '--model', {str(ROOT / 'configs/model/tiny.yaml')!r}, '--data', {str(MP)!r}, "
            f"'--target', 'nope', '--run-dir', {str(tmp_path / 'run')!r}, 'cache_dir={cache}', 'data.limit=30', "
            "'distributed.device=cpu']); "
            "assert rc == 2 and 'deepspeed' not in sys.modules, (rc, sorted(m for m in sys.modules if 'deepspeed' in m))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no label 'nope'; labels found (records): " in proc.stderr and "band_gap (30)" in proc.stderr


def test_a_wall_clock_budget_stops_the_run_exports_and_says_how_far_it_got(pretrained, cache, tmp_path):
    cfg = _config(pretrained, cache, tmp_path / "timed", max_steps=None, max_time="3s", eval={"every": 2},
                  early_stopping={"enabled": False})
    assert cfg.max_time == 3.0
    summary = finetune(cfg)
    assert summary["stopped_by"] == "max_time" and summary["steps"] > 0
    assert 3.0 <= summary["budget"]["wall_seconds"] < 60 and summary["budget"]["max_steps"] is None
    assert Path(summary["export"], "model.safetensors").is_file() and summary["validation"]["band_gap"]["n"] > 0
    steps = finetune(_config(pretrained, cache, tmp_path / "steps", max_steps=4, max_time="10m"))
    assert steps["stopped_by"] == "max_steps" and steps["steps"] == 4
