"""Atomic, verifiable training checkpoints: DeepSpeed engine state plus our own state files.

One checkpoint (every rank writes into a temporary directory; rank 0 seals it):

    <root>/step_000000100/
        deepspeed/               engine.save_checkpoint: module weights, optimiser (partitions)
        ema.safetensors          EMA weights and update count                    (rank 0)
        train_state.json         step, epoch, counters, world size, ZeRO stage   (rank 0)
        rank_00000.safetensors   RNG states of that rank; its data position in the metadata
        complete.json            written last: every file with its size (and sha256)

Sealing: fsync every file, write `complete.json`, fsync, rename `.tmp-step_...` to `step_...`,
fsync the parent. A crash leaves either a `.tmp-` directory (ignored) or a sealed directory.
Resuming picks the newest sealed checkpoint whose files match the marker; a checkpoint that
fails (truncated file, missing marker) is renamed `*.invalid` with a warning and the previous
one is used.

Unpickling: everything we write is safetensors or JSON. DeepSpeed's own files are read by
DeepSpeed (`torch.load(weights_only=False)` inside `engine.load_checkpoint` and the universal
converter); we hand it only directories this code wrote into the run directory, and only after
their checksums match the marker we wrote, never a user-supplied file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import CheckpointConfig
from .distributed import DistInfo, barrier, broadcast_text
from .rng import capture_rng, restore_rng

__all__ = ["ResumePlan", "save_checkpoint", "plan_resume", "restore", "verify", "checkpoint_dirs"]

log = logging.getLogger(__name__)

MARKER = "complete.json"
DS_TAG = "deepspeed"
_PREFIX = "step_"
KILL_IN_WRITE_ENV = "FOUNDATION_TEST_KILL_IN_CHECKPOINT"  # a step: rank 0 SIGKILLs itself mid-write (tests)


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{_PREFIX}{step:09d}"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Sealed-looking checkpoint directories of `root`, newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]), reverse=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    _fsync(path)


def verify(ckpt: str | Path, checksum: bool = True) -> str | None:
    """None if `ckpt` is complete and intact, else the reason it is not."""
    ckpt = Path(ckpt)
    marker = ckpt / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (the write did not finish)"
    try:
        listed = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable {MARKER}: {exc}"
    for rel, info in listed.items():
        path = ckpt / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != info["size"]:
            return f"{rel} has {path.stat().st_size} bytes, the marker says {info['size']} (truncated?)"
        if checksum and info.get("sha256") and _sha256(path) != info["sha256"]:
            return f"{rel}: sha256 differs from the marker"
    return None


def _seal(tmp: Path, final: Path, checksum: bool) -> None:
    """Rank 0, after every rank has written: fsync, write the marker, rename atomically."""
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync(path)
        rel = str(path.relative_to(tmp))
        files[rel] = {"size": path.stat().st_size, **({"sha256": _sha256(path)} if checksum else {})}
    _write_json(tmp / MARKER, {"files": files})
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(final.parent)


def save_checkpoint(
    engine,
    root: str | Path,
    step: int,
    train_state: dict[str, Any],
    data_state: dict[str, Any] | None,
    ema_state: dict[str, torch.Tensor] | None,
    info: DistInfo,
    cfg: CheckpointConfig,
) -> Path:
    """Collective: every rank must call it at the same step. Returns the sealed directory."""
    root = Path(root)
    final, tmp = step_dir(root, step), root / f".tmp-{_PREFIX}{step:09d}"
    if info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(info)
    engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    tensors, meta = capture_rng()
    meta["data"] = json.dumps(data_state)
    rank_file = tmp / f"rank_{info.rank:05d}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(rank_file), metadata=meta)
    _fsync(rank_file)
    if info.is_main and os.environ.get(KILL_IN_WRITE_ENV) == str(step):
        # Test hook (tests/integration): die the way a node does, in the middle of this write.
        os.kill(os.getpid(), signal.SIGKILL)
    if info.is_main:
        if ema_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
        _write_json(tmp / "train_state.json", {**train_state, "step": step, "world_size": info.world_size})
    barrier(info)
    if info.is_main:
        _seal(tmp, final, cfg.checksum)
        for old in checkpoint_dirs(root)[cfg.keep:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


@dataclass(frozen=True)
class ResumePlan:
    """What to load, decided by rank 0 and shared with every rank before the engine is built."""

    mode: str  # "fresh" | "exact" | "universal" | "weights_only"
    path: str = ""  # the checkpoint directory
    load_dir: str = ""  # engine.load_checkpoint(load_dir, tag=DS_TAG)
    step: int = 0
    saved_world_size: int = 0
    batch: dict | None = None  # the saved run's world_size, grad_accum, max_atoms (train_state "batch")


def _is_partitioned(ds_dir: Path) -> bool:
    """True when the optimiser (or the weights) are split per rank: ZeRO, or bf16's optimiser."""
    return any(ds_dir.glob("zero_pp_rank_*"))


def _convert_universal(ds_dir: Path, out_root: Path) -> Path:
    """DeepSpeed universal checkpoint of `ds_dir` in `out_root/DS_TAG` (rank 0 only)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    target = out_root / DS_TAG
    if (out_root / MARKER).is_file():
        return out_root
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir(parents=True)
    args = argparse.Namespace(
        input_folder=str(ds_dir), output_folder=str(target), num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True, inject_missing_state=True,
    )
    ds_to_universal(args)
    (target.parent / "latest_universal").write_text(DS_TAG)
    _write_json(out_root / MARKER, {"source": str(ds_dir)})
    return out_root


def _decide(root: Path, cfg: CheckpointConfig, info: DistInfo) -> ResumePlan:
    """Rank 0: the newest checkpoint that verifies, and how this world size can load it."""
    for stale in root.glob(f".tmp-{_PREFIX}*") if root.is_dir() else []:
        log.warning("removing %s: a checkpoint write that never finished", stale)
        shutil.rmtree(stale, ignore_errors=True)
    for ckpt in checkpoint_dirs(root):
        reason = verify(ckpt, cfg.checksum)
        if reason is not None:
            bad = ckpt.with_name(ckpt.name + ".invalid")
            log.warning("skipping checkpoint %s: %s (moved to %s)", ckpt, reason, bad.name)
            shutil.rmtree(bad, ignore_errors=True)
            os.rename(ckpt, bad)
            continue
        state = json.loads((ckpt / "train_state.json").read_text())
        saved, step, batch = int(state["world_size"]), int(state["step"]), state.get("batch") or None
        if saved == info.world_size or not _is_partitioned(ckpt / DS_TAG):
            return ResumePlan("exact", str(ckpt), str(ckpt), step, saved, batch)
        if cfg.world_size_change == "universal":
            try:
                out = _convert_universal(ckpt / DS_TAG, root / "universal" / ckpt.name)
                log.warning("world size %d -> %d: resuming from a universal conversion of %s",
                            saved, info.world_size, ckpt.name)
                return ResumePlan("universal", str(ckpt), str(out), step, saved, batch)
            except Exception as exc:  # any converter failure falls back to the weights
                log.warning("universal conversion of %s failed (%s); loading weights only", ckpt, exc)
        log.warning("world size %d -> %d: loading the weights of %s only, the optimiser restarts",
                    saved, info.world_size, ckpt.name)
        return ResumePlan("weights_only", str(ckpt), str(ckpt), step, saved, batch)
    return ResumePlan("fresh")


def plan_resume(root: str | Path, cfg: CheckpointConfig, info: DistInfo) -> ResumePlan:
    """Collective. Decide on rank 0 (verify, convert if needed), broadcast the plan to all."""
    plan = _decide(Path(root), cfg, info) if (info.is_main and cfg.resume) else ResumePlan("fresh")
    text = broadcast_text(json.dumps(asdict(plan)), info)
    return ResumePlan(**json.loads(text))


def restore(engine, plan: ResumePlan, ema, info: DistInfo) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Collective. Load the engine, EMA and this rank's RNG; return (train_state, data_state).

    `data_state` is None when the world size changed (positions are per rank) or for a fresh run.
    """
    if plan.mode == "fresh":
        return {}, None
    ckpt = Path(plan.path)
    if plan.mode == "weights_only":
        loaded, _ = engine.load_checkpoint(plan.load_dir, tag=DS_TAG, load_module_only=True,
                                           load_optimizer_states=False, load_lr_scheduler_states=False)
    else:
        loaded, _ = engine.load_checkpoint(plan.load_dir, tag=DS_TAG, load_lr_scheduler_states=False)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load {plan.load_dir} (mode {plan.mode})")
    train_state = json.loads((ckpt / "train_state.json").read_text())
    if ema is not None and (ckpt / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
    data_state = None
    rank_file = ckpt / f"rank_{info.rank:05d}.safetensors"
    if plan.saved_world_size == info.world_size and rank_file.is_file():
        from safetensors import safe_open

        with safe_open(str(rank_file), framework="pt") as fh:
            meta = fh.metadata()
        restore_rng(load_file(str(rank_file)), meta)
        data_state = json.loads(meta["data"])
    barrier(info)
    return train_state, data_state
