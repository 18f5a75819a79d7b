"""The datasets of a run: native files sharded on first use, the label checks, the training stream
and the per-dataset validation splits.

Sharding cache: a dataset given as native files is sharded (`write_shards`) into
`<cache_dir>/<name>-<key>`, key = hash of everything that changes the shards (input paths, sizes
and mtimes, format, reader options, limit, split rule, derived labels, and with keep_labels
"tasks" the task targets). The manifest is written last, so a directory without one is an
interrupted build and is rebuilt. Only rank 0 builds; the others wait at a barrier (a shared
filesystem is assumed, as for checkpoints). `labels.json` beside the manifest counts every label
found (for the "no such target" message) and non-0/1 classification labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import readers
from ..data.crystal import Crystal
from ..data.labels import derived_label
from ..data.readers.oc20_lmdb import oc22_pkl_to_lmdb
from ..data.records import Reject
from ..data.shards import SplitRule, TrainSubset, build_loader, read_manifest, write_shards
from .data import EpochStream
from .distributed import DistInfo, barrier, broadcast_text

__all__ = ["GivenSplit", "cache_key", "prepare_shards", "check_labels", "make_stream", "resume_position",
           "make_val_splits", "SMALL_TRAIN"]

log = logging.getLogger("foundation.train")

SMALL_TRAIN = 100  # fewer training records than this: a warning (a noisy, easily overfitted fine-tune)


class GivenSplit:
    """A caller's split object (`assign(crystal)`, `to_json()`) in the SplitRule shape write_shards uses."""

    seed, group_by_prefix = 0, False

    def __init__(self, rule):
        self.rule = rule

    def group(self, crystal) -> str:
        return crystal.key

    def assign(self, crystal) -> str:
        split = self.rule.assign(crystal)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split object gave {split!r} for record {crystal.key}: expected train, val or test")
        return split

    def to_json(self) -> dict[str, Any]:
        return {"given": self.rule.to_json()}


def _inputs(ds) -> list[Path]:
    return [Path(p) for p in (ds.lmdb_from_pickles or [ds.path])]


def cache_key(name: str, ds, tasks: list[Any] = (), split=None) -> str:
    """Hex digest of what determines `ds`'s shards (content identity by path, size and mtime)."""
    files = []
    for path in _inputs(ds):
        members = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in members if p.is_file()]
    spec = {"name": name, "files": files, "format": ds.format, "options": ds.options, "limit": ds.limit,
            "fractions": list(ds.fractions), "split_seed": ds.split_seed, "group_by_prefix": ds.group_by_prefix,
            "statistics": 3}  # 2: the val split's label sums (held-out ridge); 3: the per-atom label range
    if ds.max_train is not None:
        spec["max_train"] = ds.max_train
    if ds.derive or ds.keep_labels == "tasks" or split is not None:
        spec.update(derive=ds.derive, keep=ds.keep_labels, targets=sorted({t.target for t in tasks}),
                    binary=sorted({t.target for t in tasks if t.kind == "classification"}),
                    split=None if split is None else split.to_json())
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _native(ds, workdir: Path) -> Iterator:
    paths = [Path(ds.path)] if ds.path else []
    if ds.lmdb_from_pickles:
        # OC20/OC22 releases store pickled graph records in LMDB; rebuild that layout from the
        # sample's pickles (through the restricted unpickler), then read it like a release.
        (workdir / "lmdb").mkdir(parents=True, exist_ok=True)
        paths = [oc22_pkl_to_lmdb(p, workdir / "lmdb" / f"{Path(p).stem}.lmdb") for p in ds.lmdb_from_pickles]
    for path in paths:
        yield from itertools.islice(readers.read(path, format=ds.format, **ds.options), ds.limit)


def _labelled(records: Iterable, ds, tasks: list[Any], tally: dict[str, Counter], where: str) -> Iterator:
    """Records with their derived labels; with keep_labels "tasks" only the tasks' labels are
    kept and a record with none of them is a Reject. `tally` counts every label found (records
    carrying it) and non-0/1 classification labels."""
    wanted = {t.target for t in tasks}
    binary = {t.target for t in tasks if t.kind == "classification"}
    for record in records:
        if not isinstance(record, Crystal):
            yield record
            continue
        labels = dict(record.targets)
        for name, expr in ds.derive.items():
            value = derived_label(expr, labels)
            if value is not None:
                labels[name] = value
        tally["found"].update(labels.keys())
        if ds.keep_labels == "tasks":
            labels = {k: v for k, v in labels.items() if k in wanted}
            if not labels:
                yield Reject(record.id, record.source, f"no label for {', '.join(sorted(wanted))}", where)
                continue
        record.targets = labels
        for key in binary & set(labels):
            if labels[key] not in (0, 1):
                tally["non_binary"][f"{key}={labels[key]!r}"] += 1
        yield record


def _build(name: str, ds, out: Path, tasks: list[Any], split) -> None:
    start = time.perf_counter()
    rule = GivenSplit(split) if split is not None else SplitRule(tuple(ds.fractions), ds.split_seed,
                                                                ds.group_by_prefix)
    if ds.max_train is not None:
        rule = TrainSubset(rule, ds.max_train)
    tally: dict[str, Counter] = {"found": Counter(), "non_binary": Counter()}
    records = _labelled(_native(ds, out.with_name(out.name + ".work")), ds, tasks, tally, str(ds.path))
    reader = {"format": ds.format, "options": ds.options, "limit": ds.limit}
    if ds.derive:
        reader["derive"] = ds.derive
    manifest = write_shards(records, out, split=rule, dedup=False, reader=reader,
                            sources=tuple(str(p) for p in _inputs(ds)), overwrite=True, progress=False)
    (out / "labels.json").write_text(json.dumps({k: dict(v) for k, v in tally.items()}, indent=1))
    c = manifest["counts"]
    log.info("sharded %s: read %d, written %d, rejected %d (%s) in %.1f s -> %s", name, c["read"], c["written"],
             c["rejected"], ", ".join(f"{s} {v['records']}" for s, v in c["splits"].items()),
             time.perf_counter() - start, out)


def prepare_shards(res, info: DistInfo, split=None) -> dict[str, str]:
    """Collective. {dataset: shard directory or URL}; rank 0 builds missing caches first.
    `split`: an object with `assign(crystal)` and `to_json()` replacing the hash split."""
    dirs: dict[str, str] = {}
    for name, ds in res.datasets.items():
        if ds.shards is not None:
            dirs[name] = ds.shards
            continue
        text = ""
        if info.is_main:
            out = Path(res.config.cache_dir) / f"{name}-{cache_key(name, ds, res.tasks, split)}"
            if not ((out / "manifest.json").is_file() and (out / "labels.json").is_file()):
                _build(name, ds, out, res.tasks, split)
            text = str(out)
        dirs[name] = broadcast_text(text, info)
    barrier(info)
    return dirs


def _labels_found(shard_dirs: dict[str, str]) -> tuple[Counter, Counter]:
    """(records per label, non-0/1 classification labels) over the datasets built from native files."""
    found, non_binary = Counter(), Counter()
    for where in shard_dirs.values():
        path = Path(where) / "labels.json"
        if path.is_file():
            labels = json.loads(path.read_text())
            found.update(labels["found"])
            non_binary.update(labels["non_binary"])
    return found, non_binary


def _check_targets(res, shard_dirs: dict[str, str]) -> None:
    found, non_binary = _labels_found(shard_dirs)
    if not found:
        return  # shard directories given: their labels are whatever they hold
    for i, task in enumerate(res.tasks):
        if task.forces_of is None and task.labelled and not found.get(task.target):
            listing = ", ".join(f"{k} ({n})" for k, n in sorted(found.items())) or "none"
            raise ConfigError(f"tasks[{i}].target: {', '.join(res.datasets)} has no label {task.target!r}; "
                              f"labels found (records): {listing}")
    if non_binary:
        raise ConfigError(f"tasks: a classification target needs labels 0 or 1; found "
                          f"{', '.join(list(non_binary)[:5])} (use kind regression, or derive a 0/1 "
                          "label with data.derive)")


def _reject_reasons(shard_dir: str) -> Counter:
    reasons: Counter = Counter()
    path = Path(shard_dir) / "rejects.jsonl"
    if path.is_file():
        with open(path) as fh:
            for line in fh:
                reasons[json.loads(line)["reason"].split(":")[0][:80]] += 1
    return reasons


def check_labels(res, shard_dirs: dict[str, str], report: bool = True) -> dict[str, dict[str, Any]]:
    """ConfigError for a target absent from the data, non-0/1 classification labels or an empty
    train split; with `report`, logs the record counts of each native dataset (and warns of a tiny
    train split or none to validate on). Returns {dataset: the manifest's counts}."""
    _check_targets(res, shard_dirs)
    counts = {name: read_manifest(where)["counts"] for name, where in shard_dirs.items()}
    for name, c in counts.items():
        splits = {s: v["records"] for s, v in c["splits"].items()}
        if splits["train"] == 0:
            raise ConfigError(f"datasets.{name}: no training record (kept {c['written']} of {c['read']})")
        if not report or res.datasets[name].shards is not None:
            continue
        reasons = "".join(f"; {n} x {r}" for r, n in _reject_reasons(shard_dirs[name]).most_common(3))
        log.info("data %s: read %d records, kept %d (train %d, val %d, test %d), rejected %d%s -> %s", name,
                 c["read"], c["written"], splits["train"], splits["val"], splits["test"], c["rejected"], reasons,
                 shard_dirs[name])
        if splits["train"] < SMALL_TRAIN and res.config.recipe == "finetune":
            log.warning("only %d training records: expect a noisy fine-tune that overfits easily", splits["train"])
    if report and not any(c["splits"]["val"]["records"] for c in counts.values()):
        log.warning("no validation records: no early stopping, the last weights are exported")
    return counts


def make_stream(loader_cfg, shard_dirs: dict[str, str], info: DistInfo) -> EpochStream:
    """The endless training stream of this rank (all datasets mixed by the loader)."""
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


def make_val_splits(loader_cfg, shard_dirs: dict[str, str], info: DistInfo) -> dict[str, Callable[[], Iterable]]:
    """{dataset: () -> this rank's validation batches}, file order, datasets without a val split left out."""
    cfg = dataclasses.replace(loader_cfg, shuffle=False, temperature=1.0, num_workers=0)
    splits = {}
    for name, where in shard_dirs.items():
        if not read_manifest(where)["shards"].get("val"):
            if info.is_main:
                log.warning("dataset %s has no validation records: it is trained on but not evaluated", name)
            continue
        loader = build_loader({name: where}, "val", cfg, rank=info.rank, world_size=info.world_size)
        splits[name] = lambda loader=loader: loader.batches(0, 0)
    return splits
