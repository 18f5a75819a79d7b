"""The cluster path on one machine: two nodes on loopback with both launchers (torchrun --nnodes 2,
deepspeed --no_ssh), a lost node ending the other in bounded time, kill -9 and a kill in the middle
of a checkpoint write resuming to the uninterrupted run's weights, resumes on another world size with
the same effective batch, and pre-emption signals. Real sample data, the tiny model, CPU + gloo.
The commands are the ones `docker/README.md` gives."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from run_fixtures import (ROOT, clean_env, kill_tree, one_node, sample_config, signal_tree, start_two_nodes)
from safetensors.torch import load_file

from foundation.train.checkpoint import KILL_IN_WRITE_ENV
from foundation.train.watchdog import EXIT_LOST_RANK

pytestmark = pytest.mark.slow

HEARTBEAT = 10  # seconds: the lost-node tests' distributed.heartbeat_timeout_s


def _wait(procs, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in procs:
                kill_tree(p.pid)
            raise AssertionError(f"a node still runs after {timeout} s") from None
    return codes


def _logs(workdir: Path) -> list[str]:
    return [(workdir / f"node{r}.log").read_text() for r in (0, 1)]


def _two_nodes(launcher: str, config: Path, workdir: Path, *overrides: str, timeout: float = 240) -> list[str]:
    procs = start_two_nodes(launcher, config, workdir, *overrides)
    codes = _wait(procs, timeout)
    logs = _logs(workdir)
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    return logs


def _run(config: Path, nproc: int, *overrides: str, env: dict | None = None, ok: bool = True) -> str:
    proc = subprocess.run(one_node(config, nproc, *overrides), env=env or clean_env(), capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, out[-5000:]
    return out


def _same_export(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "export/model.safetensors")), load_file(str(b / "export/model.safetensors"))
    assert set(wa) == set(wb)
    for name, value in wa.items():
        assert torch.equal(wb[name], value), name


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# -- two nodes on loopback ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_node_runs(tmp_path_factory, sample_cache):
    """{(launcher, ZeRO stage): run_dir} of two-node runs: 6 steps, then the same command with
    max_steps 9 resuming from the step-6 checkpoint and exporting. ZeRO-3 trains a model without
    force heads on the two crystal databases (ZeRO-3 cannot train forces; see docker/README.md)."""
    runs = {}
    for launcher, zero in (("torchrun", 0), ("deepspeed", 2), ("torchrun", 3)):
        work = tmp_path_factory.mktemp(f"{launcher}{zero}")
        cfg = sample_config(sample_cache, 6) if zero < 3 else sample_config(sample_cache, 6, forces=False,
                                                                             datasets=("oqmd", "mp"))
        config = _write(work / "config.yaml", cfg)
        run_dir = work / "run"
        common = (f"run_dir={run_dir}", f"distributed.zero_stage={zero}", "checkpoints.every=3")
        first = _two_nodes(launcher, config, work, *common)
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_000000003",
                                                                                   "step_000000006"]
        # resuming is the same code path for every stage: checked on 0 and 2 (the CI's time is short)
        second = (_two_nodes(launcher, config, work, *common, "max_steps=9", "eval.at_start=false")
                  if zero < 3 else None)
        runs[(launcher, zero)] = run_dir, first, second
    return runs


@pytest.mark.parametrize("launcher, zero", [("torchrun", 0), ("deepspeed", 2), ("torchrun", 3)])
def test_two_nodes_train_checkpoint_resume_and_export(two_node_runs, launcher, zero):
    run_dir, first, second = two_node_runs[(launcher, zero)]
    assert f"2 rank(s) on cpu (gloo), ZeRO {zero}" in first[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    if second is not None:
        assert "resume: exact at step 6" in second[0]
    assert summary["steps"] == (9 if second is not None else 6) and summary["world_size"] == 2
    assert (run_dir / "export/model.safetensors").is_file()
    ds = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == zero
    if launcher == "deepspeed":  # the DeepSpeed launcher gave each node's process its rank
        assert "Process" in first[1] and "exits successfully" in first[1]


def test_two_node_checkpoint_resumes_on_one_node(two_node_runs, tmp_path):
    """Two nodes (ZeRO-2, DeepSpeed launcher) -> one process: the same step, the same effective batch."""
    run_dir, _, _ = two_node_runs[("deepspeed", 2)]
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints/step_000000006", copy / "checkpoints/step_000000006")
    config = _write(tmp_path / "config.yaml", yaml.safe_load((run_dir / "config.yaml").read_text()))
    out = _run(config, 1, f"run_dir={copy}", "max_steps=8", "eval.at_start=false")
    assert "world size 2 -> 1: resuming from a universal conversion" in out
    assert "resume: universal at step 6" in out
    assert "on 1 rank(s): grad_accum 2, max_atoms 160 keep the checkpoint's 320 atoms per optimiser step" in out
    assert json.loads((copy / "deepspeed_config.json").read_text())["gradient_accumulation_steps"] == 2
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 1


def test_one_process_checkpoint_resumes_on_two(tmp_path, sample_cache):
    """1 -> 2 processes under ZeRO-2 with grad_accum 2: grad_accum 1 on 2 ranks keeps the batch."""
    config = _write(tmp_path / "config.yaml", sample_config(sample_cache, 4))
    run_dir = tmp_path / "run"
    common = (f"run_dir={run_dir}", "distributed.zero_stage=2", "distributed.grad_accum=2", "checkpoints.every=2")
    _run(config, 1, *common)
    out = _run(config, 2, *common, "max_steps=6", "eval.at_start=false")
    assert "world size 1 -> 2: resuming from a universal conversion" in out and "at step 4" in out
    assert "on 2 rank(s): grad_accum 1, max_atoms 160 keep the checkpoint's 320 atoms per optimiser step" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2


# -- a lost node -----------------------------------------------------------------------------------

def _start_long(tmp_path: Path, sample_cache: Path, launcher: str = "torchrun"):
    config = _write(tmp_path / "config.yaml", sample_config(sample_cache, 100000))
    run_dir = tmp_path / "run"
    procs = start_two_nodes(launcher, config, tmp_path, f"run_dir={run_dir}", "checkpoints.every=4",
                            "eval.every=100000", "eval.at_start=false",
                            f"distributed.heartbeat_timeout_s={HEARTBEAT}")
    marker = run_dir / "checkpoints/step_000000004/complete.json"
    deadline = time.time() + 180
    while not marker.exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "\n".join(_logs(tmp_path))
        time.sleep(0.1)
    return config, run_dir, procs


@pytest.mark.parametrize("victim, how", [(1, "SIGKILL"), (1, "SIGSTOP"), (0, "SIGKILL")])
def test_a_lost_node_ends_the_other_with_an_error_naming_it(tmp_path, sample_cache, victim, how):
    """SIGKILL: the node's processes die (gloo sees the connection drop; the heartbeat names the rank).
    SIGSTOP: a frozen node (no connection drops, collectives would wait 30 minutes): the heartbeat
    ends the survivor after `heartbeat_timeout_s`. Node 0 hosts the rendezvous store."""
    config, run_dir, procs = _start_long(tmp_path, sample_cache)
    t0 = time.time()
    signal_tree(procs[victim].pid, getattr(signal, how))
    survivor = procs[1 - victim]
    try:
        code = survivor.wait(timeout=HEARTBEAT + 50)
    except subprocess.TimeoutExpired:
        code = None
    took = time.time() - t0
    kill_tree(procs[victim].pid)
    kill_tree(survivor.pid)
    log = _logs(tmp_path)[1 - victim]
    assert code is not None, f"the surviving node still runs {took:.0f} s after the other was lost:\n{log[-3000:]}"
    assert code != 0 and took < HEARTBEAT + 50
    assert "lost rank" in log, log[-3000:]
    if victim == 1:
        assert "rank 1 (host " in log, log[-3000:]
    else:
        assert "the master node is lost" in log, log[-3000:]
    if how == "SIGSTOP":
        assert f"exit {EXIT_LOST_RANK}" in log and "has sent no heartbeat" in log
    if victim == 1 and how == "SIGKILL":  # the checkpoints written before are valid: resume from them
        step = int(max(p.name for p in (run_dir / "checkpoints").glob("step_*"))[5:])
        workdir = tmp_path / "again"
        workdir.mkdir()
        logs = _two_nodes("torchrun", config, workdir, f"run_dir={run_dir}", f"max_steps={step + 2}",
                          "eval.at_start=false", "checkpoints.every=4")
        assert f"resume: exact at step {step}" in logs[0]


# -- fault-exact resume on the real run ------------------------------------------------------------

def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_kill9_after_a_checkpoint_resumes_to_the_uninterrupted_weights(trained, tmp_path):
    config, reference, _ = trained
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(one_node(config, 2, f"run_dir={run_dir}"), env=clean_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(run_dir / "checkpoints/step_000000006/complete.json", proc)
    kill_tree(proc.pid)
    proc.wait()
    assert not (run_dir / "export").exists(), "the run finished before it was killed"
    out = _run(config, 2, f"run_dir={run_dir}")
    assert "resume: exact at step 6" in out
    _same_export(reference, run_dir)


def test_a_kill_during_a_checkpoint_write_falls_back_to_the_previous(trained, tmp_path):
    config, reference, _ = trained
    run_dir = tmp_path / "run"
    out = _run(config, 2, f"run_dir={run_dir}", env=clean_env(**{KILL_IN_WRITE_ENV: "12"}), ok=False)
    assert (run_dir / "checkpoints/.tmp-step_000000012").is_dir(), out[-3000:]  # cut off mid-write
    assert not (run_dir / "export").exists()
    out = _run(config, 2, f"run_dir={run_dir}")
    assert "a checkpoint write that never finished" in out
    assert "resume: exact at step 6" in out
    _same_export(reference, run_dir)


# -- pre-emption -------------------------------------------------------------------------------

@pytest.mark.parametrize("nproc, sig", [(2, "SIGTERM"), (1, "SIGUSR1")])
def test_preemption_signal_checkpoints_exits_and_the_requeued_run_resumes(trained, tmp_path, nproc, sig):
    """SIGTERM to torchrun (it forwards it to its workers, as SLURM's pre-emption does) or SLURM's
    SIGUSR1 warning to the process: a checkpoint of the current step, exit 0 within seconds, no
    export; the same command resumes. Under 2 processes the resumed export equals the uninterrupted one."""
    config, reference, _ = trained
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(one_node(config, nproc, f"run_dir={run_dir}"), env=clean_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for(run_dir / "checkpoints/step_000000006/complete.json", proc)
    t0 = time.time()
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=60)
    took = time.time() - t0
    assert took < 30, took
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "preempted" and summary["preempted_by"] in (sig, "a signal to another rank")
    step = summary["steps"]
    assert 6 <= step < 12 and f"pre-empted ({sig}) at step {step}" in out
    assert (run_dir / f"checkpoints/step_{step:09d}/complete.json").is_file()
    assert not (run_dir / "export").exists()
    if nproc == 1:
        assert proc.returncode == 0, out[-3000:]  # the process itself exits 0 (torchrun reports the signal)
        return  # the requeued run is the same resume as below
    out = _run(config, nproc, f"run_dir={run_dir}")
    assert f"resume: exact at step {step}" in out
    _same_export(reference, run_dir)
