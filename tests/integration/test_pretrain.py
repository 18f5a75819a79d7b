"""End to end: `launch/pretrain.py` on real sample data (small subsets, sharded once per session),
2 processes under torchrun (CPU + gloo, ZeRO-1), tiny model; then resume on 1 process, the
export against the checkpoint, and config errors that stop before any process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
STEPS = 12


def _config(cache: Path) -> dict:
    frac = [0.7, 0.3, 0.0]
    return {
        "cache_dir": str(cache),
        "model": str(ROOT / "configs/model/tiny.yaml"),
        "max_steps": STEPS,
        "seed": 3,
        "loader": {"max_atoms": 160, "temperature": 2.0},
        "datasets": {
            "oqmd": {"path": str(DATA / "oqmd/formationenergy.jsonl.gz"), "format": "oqmd", "limit": 60, "fractions": frac},
            "mp": {"path": str(DATA / "materials_project/summary.jsonl.gz"), "format": "mp_summary", "limit": 60,
                   "fractions": frac},
            "lips": {"path": str(DATA / "lips/frames.extxyz"), "format": "extxyz", "limit": 20, "fractions": frac},
            "oc22": {"lmdb_from_pickles": [str(DATA / "oc22/oc22_pickle16_val.pkl")], "format": "oc20_lmdb",
                     "options": {"source": "oc22"}, "fractions": frac},
        },
        "tasks": [
            {"name": "formation_energy", "target": "formation_energy_per_atom", "datasets": ["oqmd", "mp"]},
            {"name": "band_gap", "target": "band_gap", "datasets": ["oqmd", "mp"]},
            {"name": "is_metal", "target": "is_metal", "datasets": ["mp"]},
            {"name": "lips_energy", "target": "energy", "datasets": ["lips"]},
            {"name": "lips_forces", "target": "forces", "forces_of": "lips_energy", "datasets": ["lips"]},
            {"name": "oc22_energy", "target": "energy", "datasets": ["oc22"]},
            {"name": "oc22_forces", "target": "forces", "forces_of": "oc22_energy", "datasets": ["oc22"]},
        ],
        "optimizer": {"lr": 5.0e-3, "weight_decay": 0.0},
        "schedule": {"warmup_steps": 2, "min_lr_ratio": 0.1},
        "ema": {"decay": 0.5},
        "distributed": {"device": "cpu", "zero_stage": 1},
        "checkpoints": {"every": 6, "keep": 3},
        "eval": {"every": STEPS, "at_start": True},
        "log": {"every": 1, "progress": False},
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, nproc: int, *overrides: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    script = [str(ROOT / "launch/pretrain.py"), "--config", str(config), *overrides]
    cmd = [sys.executable, *script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(_port()), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One 2-process run (also the shard build, once per session)."""
    base = tmp_path_factory.mktemp("pretrain")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(_config(base / "cache")))
    run_dir = base / "run"
    out = _launch(config, 2, f"run_dir={run_dir}")
    return config, run_dir, out


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


def test_resume_on_one_process_from_the_two_process_run(trained, tmp_path):
    import shutil

    config, run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    out = _launch(config, 1, f"run_dir={copy}", f"max_steps={STEPS + 2}", "eval.at_start=false")
    assert "world size 2 -> 1: resuming from a universal conversion" in out
    assert "resume: universal at step 12" in out
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps"] == STEPS + 2 and summary["world_size"] == 1


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


def test_resume_from_a_middle_checkpoint_reproduces_the_run(trained, tmp_path):
    """A crash after step 6 (only that checkpoint survives): the resumed 2-process run ends with
    bit-identical weights, so model, optimiser, EMA, data position and RNG were all restored."""
    import shutil

    from safetensors.torch import load_file

    config, run_dir, _ = trained
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints/step_000000006", copy / "checkpoints/step_000000006")
    out = _launch(config, 2, f"run_dir={copy}")
    assert "resume: exact at step 6" in out
    reference, resumed = load_file(str(run_dir / "export/model.safetensors")), load_file(str(copy / "export/model.safetensors"))
    assert set(reference) == set(resumed)
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name
