"""Sealing, verification and the resume decision, with a stand-in engine (one process)."""

import json

import torch

from foundation.train import checkpoint as ck
from foundation.train.config import CheckpointConfig
from foundation.train.distributed import DistInfo

SOLO = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend="gloo")


class FakeEngine:
    def save_checkpoint(self, save_dir, tag, save_latest):
        from pathlib import Path

        (Path(save_dir) / tag).mkdir(parents=True)
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1000)


def _save(root, step, cfg=CheckpointConfig(keep=5)):
    return ck.save_checkpoint(FakeEngine(), root, step, {"train": {"step": step}}, {"pos": step},
                              {"w": torch.ones(2)}, SOLO, cfg)


def test_sealed_checkpoint_verifies_and_lists_every_file(tmp_path):
    path = _save(tmp_path, 5)
    assert path.name == "step_000000005" and ck.verify(path) is None
    files = json.loads((path / "complete.json").read_text())["files"]
    assert set(files) == {"deepspeed/mp_rank_00_model_states.pt", "ema.safetensors",
                          "rank_00000.safetensors", "train_state.json"}
    assert all(len(f["sha256"]) == 64 for f in files.values())
    assert not list(tmp_path.glob(".tmp-*"))


def test_truncation_corruption_and_missing_marker_are_detected(tmp_path):
    a, b, c = _save(tmp_path, 1), _save(tmp_path, 2), _save(tmp_path, 3)
    victim = c / "deepspeed" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:10])
    assert "truncated" in ck.verify(c)
    data = bytearray((b / "ema.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (b / "ema.safetensors").write_bytes(bytes(data))
    assert "sha256" in ck.verify(b)
    assert ck.verify(b, checksum=False) is None  # same size: only the checksum sees it
    (a / "complete.json").unlink()
    assert "marker" in ck.verify(a)


def test_resume_picks_the_newest_valid_and_sets_aside_broken_ones(tmp_path, caplog):
    _save(tmp_path, 1), _save(tmp_path, 2)
    (tmp_path / "step_000000002" / "complete.json").unlink()
    (tmp_path / ".tmp-step_000000003").mkdir()  # a write that never finished
    plan = ck.plan_resume(tmp_path, CheckpointConfig(), SOLO)
    assert plan.mode == "exact" and plan.step == 1 and plan.path.endswith("step_000000001")
    assert (tmp_path / "step_000000002.invalid").is_dir() and not (tmp_path / ".tmp-step_000000003").exists()
    assert "skipping checkpoint" in caplog.text and "never finished" in caplog.text
    assert ck.plan_resume(tmp_path, CheckpointConfig(resume=False), SOLO).mode == "fresh"


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, CheckpointConfig(keep=2))
    assert [p.name for p in ck.checkpoint_dirs(tmp_path)] == ["step_000000005", "step_000000004"]
