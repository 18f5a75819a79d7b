"""One process group for every launcher: `deepspeed`, `torchrun`, SLURM `srun`, or one plain `python`.

CUDA + NCCL where a GPU is visible (one GPU per local rank), CPU + gloo otherwise. The
collective helpers below take and return tensors on `info.device`, so the same code runs
on both backends (NCCL reduces only CUDA tensors).

Rule for every caller: a collective must be reached by all ranks the same number of times.
The training loop keeps this by all-reducing flags (NaN skip, end of data) instead of
letting one rank branch alone.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from dataclasses import dataclass

import torch

from .watchdog import Heartbeat, looks_distributed

__all__ = ["DistInfo", "LauncherEnvError", "setup", "teardown", "all_reduce", "all_gather_rows", "broadcast_text",
           "barrier", "check_launcher_env"]


class LauncherEnvError(RuntimeError):
    """The launcher's or scheduler's environment contradicts itself; the message names the variable."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str  # "nccl" | "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _int_var(env, name: str, minimum: int = 0) -> int | None:
    if name not in env:
        return None
    try:
        value = int(env[name])
    except ValueError:
        raise LauncherEnvError(f"{name}={env[name]!r} is not an integer") from None
    if value < minimum:
        raise LauncherEnvError(f"{name}={value} must be >= {minimum}")
    return value


def check_launcher_env(env=None) -> None:
    """Refuse an inconsistent launcher/scheduler environment, naming the variable (before any
    process group, so a bad job script fails in a second instead of hanging at rendezvous).

    Checks: the integers are integers; RANK and WORLD_SIZE come together, 0 <= RANK < WORLD_SIZE;
    LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE; SLURM_PROCID < SLURM_NTASKS and SLURM_LOCALID <
    SLURM_NTASKS_PER_NODE where SLURM provides the rank; MASTER_PORT in 1..65535; MASTER_ADDR resolves.
    """
    env = os.environ if env is None else env
    rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE", 1)
    if (rank is None) != (world is None):
        have, missing = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise LauncherEnvError(f"{have} is set but {missing} is not: a launcher sets both (or neither)")
    if rank is not None and rank >= world:
        raise LauncherEnvError(f"RANK={rank} is not below WORLD_SIZE={world}")
    local, local_world = _int_var(env, "LOCAL_RANK"), _int_var(env, "LOCAL_WORLD_SIZE", 1)
    if local is not None and local_world is not None and local >= local_world:
        raise LauncherEnvError(f"LOCAL_RANK={local} is not below LOCAL_WORLD_SIZE={local_world}")
    if local_world is not None and world is not None and local_world > world:
        raise LauncherEnvError(f"LOCAL_WORLD_SIZE={local_world} exceeds WORLD_SIZE={world}")
    if local is not None and world is not None and local >= world:
        raise LauncherEnvError(f"LOCAL_RANK={local} is not below WORLD_SIZE={world}")
    if rank is None and "SLURM_PROCID" in env:
        procid, ntasks = _int_var(env, "SLURM_PROCID"), _int_var(env, "SLURM_NTASKS", 1)
        if ntasks is None:
            raise LauncherEnvError("SLURM_PROCID is set but SLURM_NTASKS is not")
        if procid >= ntasks:
            raise LauncherEnvError(f"SLURM_PROCID={procid} is not below SLURM_NTASKS={ntasks}")
        localid = _int_var(env, "SLURM_LOCALID")
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        if localid is not None and per_node.isdigit() and localid >= int(per_node):
            raise LauncherEnvError(f"SLURM_LOCALID={localid} is not below SLURM_NTASKS_PER_NODE={per_node}")
    port = _int_var(env, "MASTER_PORT", 1)
    if port is not None and port > 65535:
        raise LauncherEnvError(f"MASTER_PORT={port} is not a TCP port (1..65535)")
    addr = env.get("MASTER_ADDR")
    if addr is not None and (world or 1) > 1:
        try:
            socket.getaddrinfo(addr, None)
        except OSError as exc:
            raise LauncherEnvError(f"MASTER_ADDR={addr!r} does not resolve ({exc})") from None


def fill_launcher_env(local_rank_arg: int | None = None) -> None:
    """Make RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* present whatever started us.

    torchrun and deepspeed export them; `srun` exports SLURM_* (MASTER_ADDR must come from
    the job script); a plain `python` gets a one-process group on a free local port, since
    DeepSpeed otherwise tries MPI discovery (and fails without mpi4py). An inconsistent
    environment is refused first (`check_launcher_env`).
    """
    env = os.environ
    check_launcher_env(env)
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_PORT", "29500")
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    if "LOCAL_RANK" not in env:
        env["LOCAL_RANK"] = str(local_rank_arg if local_rank_arg is not None else 0)
    if "MASTER_ADDR" not in env:
        raise LauncherEnvError(
            "MASTER_ADDR is not set: a multi-process run started without torchrun/deepspeed "
            "must export MASTER_ADDR (and MASTER_PORT) in its job script"
        )
    check_launcher_env(env)


def _pick_device(device: str, local_rank: int) -> tuple[torch.device, str]:
    match device:
        case "auto":
            use_cuda = torch.cuda.is_available()
        case "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("distributed.device is 'cuda' but no CUDA device is visible")
            use_cuda = True
        case "cpu":
            use_cuda = False
        case _:
            raise ValueError(f"unknown device {device!r} (auto, cpu, cuda)")
    if use_cuda:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and local_rank >= torch.cuda.device_count():
            raise LauncherEnvError(f"LOCAL_RANK={local_rank} but this node shows {torch.cuda.device_count()} CUDA "
                                   "device(s) (CUDA_VISIBLE_DEVICES, --nproc_per_node and --gpus-per-node disagree)")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device()), "nccl"
    # DeepSpeed picks its accelerator once, at import; tell it before that happens.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return torch.device("cpu"), "gloo"


_HEARTBEAT = None  # this process's Heartbeat (watchdog.py), between setup and teardown


def setup(device: str = "auto", timeout_s: int = 1800, local_rank_arg: int | None = None,
          heartbeat_timeout_s: float = 0.0) -> DistInfo:
    """Start the process group (once per process) and return who we are. `heartbeat_timeout_s` > 0
    (and more than one rank): a lost rank ends every other within that many seconds (watchdog.py)."""
    global _HEARTBEAT
    fill_launcher_env(local_rank_arg)
    local_rank = int(os.environ["LOCAL_RANK"])
    dev, backend = _pick_device(device, local_rank)
    if not torch.distributed.is_initialized():
        # torch's own process group (env://, as every launcher sets it); DeepSpeed adopts it when
        # its engine is built. Not deepspeed.init_distributed here: that imports DeepSpeed and
        # builds its communication op (about 30 s on a fresh machine) before the data and labels
        # are checked, so a wrong target would be reported only after it.
        timeout = datetime.timedelta(seconds=timeout_s)
        if os.environ["WORLD_SIZE"] == "1":
            # One process: an in-memory store, no TCP port to pick and lose to another process
            # between choosing it and binding it (seen with two runs starting at once).
            torch.distributed.init_process_group(backend=backend, timeout=timeout, rank=0, world_size=1,
                                                 store=torch.distributed.HashStore())
        else:
            torch.distributed.init_process_group(backend=backend, timeout=timeout)
    if _HEARTBEAT is None and heartbeat_timeout_s > 0 and torch.distributed.get_world_size() > 1:
        _HEARTBEAT = Heartbeat(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                               heartbeat_timeout_s).start()
    return DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        world_size=torch.distributed.get_world_size(),
        device=dev,
        backend=backend,
    )


def lost_rank_reason(exc: BaseException) -> str | None:
    """After `exc` ended a multi-rank run: the lost rank, named, when a collective failed because
    a rank left (watchdog.Heartbeat.diagnose); None otherwise."""
    if _HEARTBEAT is None or not looks_distributed(exc):
        return None
    return _HEARTBEAT.diagnose()


def teardown() -> None:
    """Destroy the process group; through DeepSpeed when it set up its backend, so that it also
    drops its cached groups (a second run in this process would otherwise use the dead ones).
    The heartbeat stops first: this rank leaves the run normally."""
    global _HEARTBEAT
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()
        _HEARTBEAT = None
    if not torch.distributed.is_initialized():
        return
    comm = sys.modules.get("deepspeed.comm")
    if comm is not None and comm.is_initialized():
        comm.destroy_process_group()
    else:
        torch.distributed.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        # gloo's barrier is fine; NCCL's needs the device to be known to avoid a hang warning.
        if info.backend == "nccl":
            torch.distributed.barrier(device_ids=[info.device.index])
        else:
            torch.distributed.barrier()


def all_reduce(values: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """A reduced copy of `values` (any shape, float64 kept) across ranks; op: sum | max | min."""
    out = values.detach().to(info.device).clone()
    if info.world_size == 1:
        return out
    match op:
        case "sum":
            rop = torch.distributed.ReduceOp.SUM
        case "max":
            rop = torch.distributed.ReduceOp.MAX
        case "min":
            rop = torch.distributed.ReduceOp.MIN
        case _:
            raise ValueError(f"unknown reduce op {op!r} (sum, max, min)")
    torch.distributed.all_reduce(out, op=rop)
    return out


def all_gather_rows(rows: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate `rows` [n_r, ...] of every rank (n_r may differ) in rank order, on every rank.

    Pads to the longest, gathers tensors (no pickling of objects), then trims.
    """
    rows = rows.detach().to(info.device)
    if info.world_size == 1:
        return rows.clone()
    count = torch.tensor([rows.shape[0]], device=info.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(info.world_size)]
    torch.distributed.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=info.device)
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def broadcast_text(text: str | None, info: DistInfo, src: int = 0) -> str:
    """Rank `src`'s string on every rank (UTF-8 bytes in a tensor, no pickle)."""
    if info.world_size == 1:
        return text or ""
    data = (text or "").encode() if info.rank == src else b""
    length = torch.tensor([len(data)], dtype=torch.int64, device=info.device)
    torch.distributed.broadcast(length, src)
    buf = torch.zeros(int(length.item()), dtype=torch.uint8, device=info.device)
    if info.rank == src and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    torch.distributed.broadcast(buf, src)
    return bytes(buf.cpu().tolist()).decode()
