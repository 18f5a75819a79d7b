"""What the benchmarks share: the machine's description, and one real fine-tuning or
pretraining run (`launch/finetune.py`, `launch/pretrain.py` under torchrun, one thread per process)
returning its summary."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _launch(launcher: str, arguments: list[str], run_dir: Path, nproc: int) -> dict:
    """`launch/<launcher> ARGUMENTS` on `nproc` processes (torchrun when more than one), one thread
    each (ARGUMENTS name RUN_DIR in the launcher's own way); the run's summary.json plus the
    command's wall seconds (start-up and sharding included)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    script = [str(ROOT / "launch" / launcher), *arguments, "log.progress=false", "log.tensorboard=false"]
    # One process runs the launcher directly (its single-process path, as `python launch/...`):
    # torchrun's own interpreter would add a second torch import, seconds per run.
    cmd = [sys.executable, *script] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
         "--master_port", str(free_port()), *script]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["command_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def budget_overrides(budget: str) -> list[str]:
    """Overrides that make a run's wall clock its only budget: `max_time` (the lr decays over it),
    no step or epoch limit, and early stopping that keeps the best validation weights but never
    ends the run (so every model of a comparison trains for the same time)."""
    return [f"max_time={budget}", "max_steps=null", "epochs=null", "early_stopping.patience=1000000"]


def run_finetune(arguments: list[str], run_dir: Path, nproc: int) -> dict:
    """`launch/finetune.py ARGUMENTS --run-dir RUN_DIR` on `nproc` processes; its summary.json plus
    the command's wall seconds (start-up and sharding included)."""
    return _launch("finetune.py", [*arguments, "--run-dir", str(run_dir)], run_dir, nproc)


def run_pretrain(arguments: list[str], run_dir: Path, nproc: int) -> dict:
    """`launch/pretrain.py ARGUMENTS run_dir=RUN_DIR` on `nproc` processes (a fresh run: an earlier
    run's checkpoints in RUN_DIR would resume it); its summary.json plus the command's wall seconds."""
    return _launch("pretrain.py", [*arguments, f"run_dir={run_dir}"], run_dir, nproc)
