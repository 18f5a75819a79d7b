"""Datasets of a pretraining run: native files sharded on first use, manifests -> normalisation and
element references, the training stream and the per-dataset validation splits.

Sharding cache: a dataset given as a native file is sharded (`foundation.data.shards.write_shards`)
into `<cache_dir>/<name>-<key>`, key = hash of everything that changes the shards (input file paths,
sizes and mtimes, format, reader options, limit, split rule). The manifest is written last by the
shard writer, so a directory without one is an interrupted build and is rebuilt. Only rank 0
builds; the other ranks wait at a barrier (shared filesystem assumed, as for checkpoints).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .data import EpochStream
from .distributed import DistInfo, barrier, broadcast_text

__all__ = ["cache_key", "prepare_shards", "task_statistics", "make_stream", "make_val_splits"]

log = logging.getLogger("foundation.train")


def _inputs(ds) -> list[Path]:
    return [Path(p) for p in (ds.lmdb_from_pickles or [ds.path])]


def cache_key(name: str, ds) -> str:
    """Hex digest of what determines `ds`'s shards (content identity by path, size and mtime)."""
    files = []
    for path in _inputs(ds):
        members = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in members if p.is_file()]
    spec = {"name": name, "files": files, "format": ds.format, "options": ds.options, "limit": ds.limit,
            "fractions": list(ds.fractions), "split_seed": ds.split_seed, "group_by_prefix": ds.group_by_prefix}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _records(ds, workdir: Path) -> Iterable:
    from ..data import readers

    paths = [Path(ds.path)] if ds.path else []
    if ds.lmdb_from_pickles:
        # OC20/OC22 releases store pickled graph records in LMDB; rebuild that layout from the
        # sample's pickles (through the restricted unpickler), then read it like a release.
        from ..data.readers.oc20_lmdb import oc22_pkl_to_lmdb

        (workdir / "lmdb").mkdir(parents=True, exist_ok=True)
        paths = [oc22_pkl_to_lmdb(p, workdir / "lmdb" / f"{Path(p).stem}.lmdb") for p in ds.lmdb_from_pickles]
    for path in paths:
        yield from itertools.islice(readers.read(path, format=ds.format, **ds.options), ds.limit)


def _build(name: str, ds, out: Path) -> None:
    from ..data.shards import SplitRule, write_shards

    start = time.perf_counter()
    work = out.with_name(out.name + ".work")
    manifest = write_shards(
        _records(ds, work), out, split=SplitRule(tuple(ds.fractions), ds.split_seed, ds.group_by_prefix),
        dedup=False, reader={"format": ds.format, "options": ds.options, "limit": ds.limit},
        sources=tuple(str(p) for p in _inputs(ds)), overwrite=True, progress=False)
    c = manifest["counts"]
    log.info("sharded %s: read %d, written %d, rejected %d (%s) in %.1f s -> %s", name, c["read"], c["written"],
             c["rejected"], ", ".join(f"{s} {v['records']}" for s, v in c["splits"].items()),
             time.perf_counter() - start, out)


def prepare_shards(cfg, info: DistInfo) -> dict[str, str]:
    """Collective. {dataset: shard directory or URL}; rank 0 builds missing caches first."""
    cache = Path(cfg.cache_dir)
    dirs: dict[str, str] = {}
    for name, ds in cfg.datasets.items():
        if ds.shards is not None:
            dirs[name] = ds.shards
            continue
        text = ""
        if info.is_main:
            out = cache / f"{name}-{cache_key(name, ds)}"
            if not (out / "manifest.json").is_file():
                _build(name, ds, out)
            text = str(out)
        dirs[name] = broadcast_text(text, info)
    barrier(info)
    return dirs


def task_statistics(tasks: list[Any], shard_dirs: dict[str, str]) -> tuple[dict, dict]:
    """(normalization, element_refs) keyed by task name, from the train-split label sums.

    An energy task with forces takes the RMS force component of its datasets as its scale
    (MACE's choice): forces are the energy's gradient, so one scale serves both, and the
    per-atom energy spread of an MD or relaxation set (LiPS: 0.006 eV/atom against 0.6 eV/Å
    forces; OC22: ~0) would otherwise make the initial forces 100x too small or the loss explode.
    The force tasks then use that scale in the loss (MultiTaskLoss's fallback)."""
    from ..data.shards import dataset_statistics

    normalization, element_refs = dataset_statistics(shard_dirs, tasks)
    for task in tasks:
        if task.forces_of is None:
            continue
        chosen = {n: d for n, d in shard_dirs.items() if not task.datasets or n in task.datasets}
        force_stats, _ = dataset_statistics(chosen)
        if task.target in force_stats and task.forces_of in normalization:
            mean, _ = normalization[task.forces_of]
            normalization[task.forces_of] = (mean, force_stats[task.target][1])
    return normalization, element_refs


def make_stream(loader_cfg, shard_dirs: dict[str, str], info: DistInfo) -> EpochStream:
    """The endless training stream of this rank (all datasets mixed by the loader)."""
    from ..data.stream import build_loader

    loader = build_loader(shard_dirs, "train", loader_cfg, rank=info.rank, world_size=info.world_size)
    static = {"world_size": info.world_size, "num_workers": loader_cfg.num_workers, "seed": loader_cfg.seed}
    stream = EpochStream(loader.batches, static=static)
    stream.loader = loader
    return stream


def resume_position(stream: EpochStream, saved: dict[str, Any]) -> None:
    """Map another world size's data position (rank 0's, saved in train_state) onto this one:
    the loader skips the same fraction of that epoch (not exact: the records split differently)."""
    loader = stream.loader
    loader.load_state_dict({"epoch": int(saved.get("epoch", 0)), "position": int(saved.get("index", 0)),
                            **{k: saved[k] for k in ("world_size", "num_workers", "seed") if k in saved}})
    stream.load_state_dict({"epoch": loader.epoch, "index": loader.position})


def _has_split(shard_dir: str, split: str) -> bool:
    from ..data.shard_format import read_manifest

    return bool(read_manifest(shard_dir)["shards"].get(split))


def make_val_splits(loader_cfg, shard_dirs: dict[str, str], info: DistInfo) -> dict[str, Callable[[], Iterable]]:
    """{dataset: () -> this rank's validation batches}, file order, datasets without a val split left out."""
    from ..data.stream import build_loader

    cfg = dataclasses.replace(loader_cfg, shuffle=False, temperature=1.0, num_workers=0)
    splits = {}
    for name, where in shard_dirs.items():
        if not _has_split(where, "val"):
            if info.is_main:
                log.warning("dataset %s has no validation records: it is trained on but not evaluated", name)
            continue
        loader = build_loader({name: where}, "val", cfg, rank=info.rank, world_size=info.world_size)
        splits[name] = lambda loader=loader: loader.batches(0, 0)
    return splits
