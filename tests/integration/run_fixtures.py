"""What the end-to-end run tests share: a small real-data pretraining config, free ports, a clean
launcher environment, and the launch commands of every launcher (one node or two on loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
SCRIPT = ROOT / "launch/pretrain.py"


def sample_config(cache: Path, steps: int = 12, forces: bool = True, datasets=("oqmd", "mp", "lips", "oc22")) -> dict:
    """The sample databases (small subsets), the tiny model, CPU + gloo, ZeRO-1, a checkpoint every 6 steps."""
    frac = [0.7, 0.3, 0.0]
    all_datasets = {
        "oqmd": {"path": str(DATA / "oqmd/formationenergy.jsonl.gz"), "format": "oqmd", "limit": 60, "fractions": frac},
        "mp": {"path": str(DATA / "materials_project/summary.jsonl.gz"), "format": "mp_summary", "limit": 60,
               "fractions": frac},
        "lips": {"path": str(DATA / "lips/frames.extxyz"), "format": "extxyz", "limit": 20, "fractions": frac},
        "oc22": {"lmdb_from_pickles": [str(DATA / "oc22/oc22_pickle16_val.pkl")], "format": "oc20_lmdb",
                 "options": {"source": "oc22"}, "fractions": frac},
    }
    tasks = [
        {"name": "formation_energy", "target": "formation_energy_per_atom", "datasets": ["oqmd", "mp"]},
        {"name": "band_gap", "target": "band_gap", "datasets": ["oqmd", "mp"]},
        {"name": "is_metal", "target": "is_metal", "datasets": ["mp"]},
        {"name": "lips_energy", "target": "energy", "datasets": ["lips"]},
        {"name": "lips_forces", "target": "forces", "forces_of": "lips_energy", "datasets": ["lips"]},
        {"name": "oc22_energy", "target": "energy", "datasets": ["oc22"]},
        {"name": "oc22_forces", "target": "forces", "forces_of": "oc22_energy", "datasets": ["oc22"]},
    ]
    tasks = [{**t, "datasets": [d for d in t["datasets"] if d in datasets]} for t in tasks
             if (forces or t["target"] != "forces") and any(d in datasets for d in t["datasets"])]
    return {
        "cache_dir": str(cache),
        "model": str(ROOT / "configs/model/tiny.yaml"),
        "max_steps": steps,
        "seed": 3,
        "loader": {"max_atoms": 160, "temperature": 2.0},
        "datasets": {k: v for k, v in all_datasets.items() if k in datasets},
        "tasks": tasks,
        "optimizer": {"lr": 5.0e-3, "weight_decay": 0.0},
        "schedule": {"warmup_steps": 2, "min_lr_ratio": 0.1},
        "ema": {"decay": 0.5},
        "distributed": {"device": "cpu", "zero_stage": 1},
        "checkpoints": {"every": 6, "keep": 3},
        "eval": {"every": steps, "at_start": True},
        "log": {"every": 1, "progress": False},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        env.pop(key, None)
    return env


def one_node(config: Path, nproc: int, *overrides: str) -> list[str]:
    """`python launch/pretrain.py` (1 process) or `torchrun --nproc_per_node N`."""
    script = [str(SCRIPT), "--config", str(config), *overrides]
    if nproc == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *script]


def node_command(launcher: str, node_rank: int, port: int, hostfile: Path, config: Path, *overrides: str) -> list[str]:
    """One node of a two-node job on loopback, one process per node, as under SLURM: `torchrun
    --nnodes 2 --node_rank R` or `deepspeed --no_ssh --node_rank R` (the DeepSpeed launcher without ssh)."""
    script = [str(SCRIPT), "--config", str(config), *overrides]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port), *script]
    deepspeed = Path(sys.executable).with_name("deepspeed")
    return [str(deepspeed), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *script]


def start_two_nodes(launcher: str, config: Path, workdir: Path, *overrides: str) -> list[subprocess.Popen]:
    """Both nodes started, each in its own session (so a node's whole process tree can be killed)."""
    hostfile = workdir / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")  # the DeepSpeed launcher's world: 2 nodes x 1
    port = free_port()
    procs = []
    for rank in (0, 1):
        log = (workdir / f"node{rank}.log").open("w")
        procs.append(subprocess.Popen(node_command(launcher, rank, port, hostfile, config, *overrides),
                                      env=clean_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      start_new_session=True))
    return procs


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (torchrun starts its workers in their own sessions)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def signal_tree(pid: int, sig: int) -> None:
    for p in process_tree(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def kill_tree(pid: int) -> None:
    signal_tree(pid, signal.SIGKILL)
