"""Fault tolerance of the training machinery, on the toy model with 2 real processes (gloo, ZeRO-2):
SIGKILL + resume reproduces the uninterrupted weights, a truncated checkpoint is skipped, a
2-process checkpoint resumes on 1 process, and a NaN loss on one rank is skipped on all."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("toy_run.py")
STEPS = 8
NAN_AT = 3  # batch index carrying a NaN label on the last rank


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(run_dir: Path, nproc: int, *extra: str) -> list[str]:
    args = [str(SCRIPT), "--run-dir", str(run_dir), "--steps", str(STEPS), "--zero", "2",
            "--ckpt-every", "2", "--nan-at", str(NAN_AT), *extra]
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(_port()), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(run_dir: Path, nproc: int, *extra: str) -> str:
    proc = subprocess.run(_cmd(run_dir, nproc, *extra), env=_env(), capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _copy_checkpoints(src: Path, dst: Path, steps: list[int]) -> None:
    (dst / "checkpoints").mkdir(parents=True)
    for step in steps:
        name = f"step_{step:09d}"
        shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted 2-process run with a NaN label in one batch of rank 1."""
    run_dir = tmp_path_factory.mktemp("baseline")
    out = _run(run_dir, 2)
    return run_dir, out


def test_nan_loss_skipped_on_all_ranks_and_logged(baseline):
    run_dir, out = baseline
    assert "non-finite loss on 1 rank(s)" in out
    assert f"SUMMARY {STEPS} 1 " in out  # 8 optimiser steps done, 1 micro-batch skipped
    for name, w in _weights(run_dir / "final.safetensors").items():
        assert torch.isfinite(w).all(), name


def test_sigkill_then_resume_matches_uninterrupted(baseline, tmp_path):
    reference = _weights(baseline[0] / "final.safetensors")
    kill_after = random.Random().randint(2, STEPS - 2)  # a checkpoint step; the kill lands after it
    proc = subprocess.Popen(_cmd(tmp_path, 2, "--sleep", "0.4"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    target = tmp_path / "checkpoints" / f"step_{kill_after - kill_after % 2:09d}" / "complete.json"
    deadline = time.time() + 180
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 0.6))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final.safetensors").exists(), "the run finished before it was killed"
    out = _run(tmp_path, 2)
    assert "resume mode exact" in out
    resumed = _weights(tmp_path / "final.safetensors")
    for name, w in reference.items():
        # Same ranks, same order of floating-point operations: bit-identical on CPU.
        torch.testing.assert_close(resumed[name], w, rtol=0, atol=0, msg=name)


def test_truncated_checkpoint_is_skipped_for_the_previous(baseline, tmp_path):
    _copy_checkpoints(baseline[0], tmp_path, [2, 4])
    victim = tmp_path / "checkpoints" / "step_000000004" / "deepspeed" / "mp_rank_00_model_states.pt"
    with victim.open("r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    out = _run(tmp_path, 2)
    assert "skipping checkpoint" in out and "truncated" in out
    assert "resume mode exact from step 2" in out
    assert (tmp_path / "checkpoints" / "step_000000004.invalid").is_dir()
    resumed, reference = _weights(tmp_path / "final.safetensors"), _weights(baseline[0] / "final.safetensors")
    for name, w in reference.items():
        torch.testing.assert_close(resumed[name], w, rtol=0, atol=0, msg=name)


def test_two_process_checkpoint_resumes_on_one_process(baseline, tmp_path):
    two = tmp_path / "two"
    _copy_checkpoints(baseline[0], two, [2])
    _run(two, 2, "--steps", "2")  # restores step 2 exactly on 2 ranks: the reference weights
    one = tmp_path / "one"
    _copy_checkpoints(baseline[0], one, [2])
    out = _run(one, 1)
    assert "world size 2 -> 1: resuming from a universal conversion" in out
    assert f"SUMMARY {STEPS} " in out
    exact, universal = _weights(two / "restored_exact_2.safetensors"), _weights(one / "restored_universal_2.safetensors")
    for name, w in exact.items():
        torch.testing.assert_close(universal[name], w, rtol=0, atol=0, msg=name)


def test_weights_only_resume_on_a_different_world_size(baseline, tmp_path):
    one = tmp_path / "one"
    _copy_checkpoints(baseline[0], one, [2])
    out = _run(one, 1, "--world-size-change", "weights_only")
    assert "loading the weights of step_000000002 only, the optimiser restarts" in out
    assert f"SUMMARY {STEPS} " in out
    two = tmp_path / "two"
    _copy_checkpoints(baseline[0], two, [2])
    _run(two, 2, "--steps", "2")
    exact, weights = _weights(two / "restored_exact_2.safetensors"), _weights(one / "restored_weights_only_2.safetensors")
    for name, w in exact.items():
        torch.testing.assert_close(weights[name], w, rtol=0, atol=0, msg=name)
