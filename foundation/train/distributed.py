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

__all__ = ["DistInfo", "setup", "teardown", "all_reduce", "all_gather_rows", "broadcast_text", "barrier"]


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


def fill_launcher_env(local_rank_arg: int | None = None) -> None:
    """Make RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* present whatever started us.

    torchrun and deepspeed export them; `srun` exports SLURM_* (MASTER_ADDR must come from
    the job script); a plain `python` gets a one-process group on a free local port, since
    DeepSpeed otherwise tries MPI discovery (and fails without mpi4py).
    """
    env = os.environ
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
        raise RuntimeError(
            "MASTER_ADDR is not set: a multi-process run started without torchrun/deepspeed "
            "must export MASTER_ADDR (and MASTER_PORT) in its job script"
        )


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
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device()), "nccl"
    # DeepSpeed picks its accelerator once, at import; tell it before that happens.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return torch.device("cpu"), "gloo"


def setup(device: str = "auto", timeout_s: int = 1800, local_rank_arg: int | None = None) -> DistInfo:
    """Start the process group (once per process) and return who we are."""
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
    return DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        world_size=torch.distributed.get_world_size(),
        device=dev,
        backend=backend,
    )


def teardown() -> None:
    """Destroy the process group; through DeepSpeed when it set up its backend, so that it also
    drops its cached groups (a second run in this process would otherwise use the dead ones)."""
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
