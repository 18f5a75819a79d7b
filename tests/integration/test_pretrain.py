"""End to end: `launch/pretrain.py` on real sample data (small subsets, sharded once per session),
2 processes under torchrun (CPU + gloo, ZeRO-1), tiny model; then resume on 1 process, the
export against the checkpoint, and config errors that stop before any process group."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from run_fixtures import ROOT, clean_env, one_node, sample_config

pytestmark = pytest.mark.slow

STEPS = 12


def _config(cache: Path) -> dict:
    return sample_config(cache, STEPS)


def _launch(config: Path, nproc: int, *overrides: str) -> str:
    proc = subprocess.run(one_node(config, nproc, *overrides), env=clean_env(), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _errors(metrics: dict) -> dict[tuple[str, str], float]:
    return {(d, t): v["mae"] for d, ts in metrics.items() for t, v in ts.items() if "mae" in v}


def test_two_processes_train_and_the_loss_falls(trained):
    _, run_dir, out = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 2 and summary["skipped_batches"] == 0
    assert "final validation metrics" in out and "oc22_forces" in out and "ROC-AUC" in out
    before, after = _errors(summary["initial_validation"]), _errors(summary["validation"])
    assert set(before) == set(after) and len(after) >= 5
    # every regression task of every dataset, summed relative to its initial error
    assert sum(after[k] / before[k] for k in after) < 0.9 * len(after), (before, after)
    # each head is judged against its mean predictor and its initial value; the loss weights are reported
    assert "mean pred." in out and "verdict" in out and "loss weights per task" in out
    tasks = {t["name"] for t in _config(Path("."))["tasks"]}
    assert set(summary["task_weights"]) == tasks and all(w > 0 for w in summary["task_weights"].values())
    for (d, t), value in after.items():
        mean = summary["validation"][d][t]["mean_mae"]
        assert mean > 0
        learns = value < 0.99 * mean and value < 0.99 * before[(d, t)]
        assert (summary["heads"][f"{d}/{t}"] == "learns") == learns, (d, t, value, mean, before[(d, t)])
    ds_json = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert ds_json["zero_optimization"]["stage"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_000000006", "step_000000012"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/lips_forces/loss", "train/band_gap/weight", "train/atoms_per_s",
                "val/mp/is_metal/roc_auc", "val/oqmd/formation_energy/mae"):
        assert tag in tags, tag


def test_export_and_checkpoint_give_identical_predictions(trained):
    from safetensors.torch import load_file

    from foundation.data.shards.stream import LoaderConfig, build_loader
    from foundation.model import FoundationModel, load_export

    _, run_dir, _ = trained
    exported = load_export(run_dir / "export")
    ema = load_file(str(run_dir / "checkpoints/step_000000012/ema.safetensors"))
    rebuilt = FoundationModel(exported.config, list(exported.tasks.values()))
    rebuilt.load_state_dict({k[len("model."):]: v for k, v in ema.items() if k.startswith("model.")})
    rebuilt.eval()
    shards = json.loads((run_dir / "shards.json").read_text())
    loader = build_loader({"lips": shards["lips"], "mp": shards["mp"]}, "val", LoaderConfig(cutoff=5.0, shuffle=False))
    batch = next(iter(loader))
    a, b = exported(batch), rebuilt(batch)
    assert set(a) == set(exported.tasks)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=0.1", "optimizer.learning_rate: unknown key for OptimizerConfig"),
    ("max_steps=ten", "max_steps: expected int, got str"),
    ("distributed.zero_stage=7", "distributed: zero_stage must be 0, 1, 2 or 3"),
    ("distributed.zero_stage=3", "distributed.zero_stage: ZeRO-3 cannot train force tasks"),
    ("datasets.oqmd={shards: /nonexistent/oqmd_shards}", "datasets.oqmd.shards: no such shard directory: /nonexistent"),
])
def test_config_errors_fail_before_any_process_group(tmp_path, capsys, override, message):
    from foundation.cli.pretrain import cli_main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "cache")))
    assert cli_main(["--config", str(config), override, f"run_dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_cluster_config_is_valid_and_generates_deepspeed_json():
    from deepspeed.runtime.config import DeepSpeedConfig

    from foundation.config import to_dict
    from foundation.train.deepspeed_config import deepspeed_config
    from foundation.train.resolve import validate
    from foundation.train.run_config import load_config

    res = validate(load_config(ROOT / "configs/pretrain/cluster.yaml"))
    cfg = res.config
    assert cfg.distributed.precision == "bf16" and cfg.distributed.zero_stage == 2
    assert to_dict(res.model)["n_layers"] >= 4  # the base model
    ds = deepspeed_config(cfg.distributed, cfg.optimizer)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == 2 and parsed.bfloat16_config.enabled
    sample = validate(load_config(ROOT / "configs/pretrain/sample.yaml"))
    assert {t.name for t in sample.tasks} <= {t.name for t in res.tasks}
    for name in ("mp2018", "perovskites"):
        assert all(name not in str(ds) for ds in cfg.datasets.values())
        assert all(name not in str(ds) for ds in sample.config.datasets.values())
