"""Pretraining throughput (atoms/s) and peak memory: 1 process vs 2 processes (data parallel, gloo)
on the sample configuration, side by side in one run; writes bench/results/pretrain.json.

    python bench/pretrain.py [--steps 120] [--config configs/pretrain/sample.yaml]

Each variant is the real `launch/pretrain.py` (DeepSpeed engine, ZeRO-0, fp32, tiny model) with
evaluation, checkpoints and the export pushed past the end, so `train_seconds` covers data loading,
forward, backward and the optimiser step only. Variants:
    1 process  x 1 thread     the baseline
    1 process  x 2 threads    the peer: the same 2 cores used by intra-op threads instead
    2 processes x 1 thread    data parallel (what `torchrun --nproc_per_node 2` gives)
Scaling efficiency = atoms/s(2 processes) / (2 x atoms/s(1 process x 1 thread)). The shards are
built before the first variant (not timed). Timings depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(config: str, run_dir: Path, nproc: int, threads: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    never = str(10 * steps)
    script = [str(ROOT / "launch/pretrain.py"), "--config", config, f"run_dir={run_dir}", f"max_steps={steps}",
              f"eval.every={never}", "eval.at_start=false", "eval.max_batches=1", f"checkpoints.every={never}",
              "export=false", "log.progress=false", "log.tensorboard=false"]
    cmd = [sys.executable, *script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(_port()), *script]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "processes": nproc, "threads_per_process": threads, "steps": summary["steps"],
        "atoms": summary["atoms"], "train_seconds": round(summary["train_seconds"], 2),
        "atoms_per_s": round(summary["atoms_per_s"], 1),
        "peak_rss_mib_per_rank": round(summary["peak_rss_mib_per_rank"], 1),
        "wall_seconds_incl_startup": round(time.perf_counter() - start, 1),
    }


def _machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/pretrain/sample.yaml")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--out", default=str(ROOT / "bench/results/pretrain.json"))
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # builds the shard cache (untimed) so that no variant pays for it
        _run(args.config, Path(tmp) / "warm", 1, 2, 1)
        for name, nproc, threads in VARIANTS:
            row = {"variant": name, **_run(args.config, Path(tmp) / name.replace(" ", "_"), nproc, threads, args.steps)}
            print(json.dumps(row), flush=True)
            results.append(row)
    base = results[0]["atoms_per_s"]
    out = {
        "benchmark": "pretraining throughput, launch/pretrain.py on the sample config (tiny model, fp32, ZeRO-0)",
        "machine": _machine(),
        "config": args.config,
        "steps": args.steps,
        "results": results,
        "ratios": {
            "2 threads vs 1 thread (1 process)": round(results[1]["atoms_per_s"] / base, 2),
            "2 processes vs 1 process (1 thread each)": round(results[2]["atoms_per_s"] / base, 2),
            "scaling_efficiency_2_processes": round(results[2]["atoms_per_s"] / (2 * base), 2),
        },
        "note": "per-rank batches are packed to loader.max_atoms, so 2 processes train on twice the atoms per "
                "optimiser step; the machine is shared, so repeat runs vary by ~10-20%",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
