"""Write validated records into webdataset shards with a manifest: `foundation shard` and `write_shards`.

    foundation shard --format oqmd --input ../shared/data/oqmd/formationenergy.jsonl.gz --out shards/oqmd

For each record read: validate (`foundation.data.validate`) -> split by a hash of its key (or of
its group) -> look for a duplicate structure of another source, in the input or in the
`--dedup-against` directories (`foundation.data.fingerprint`; a database's own records are never
compared with each other: they have distinct ids, and MD frames would cost a StructureMatcher
call per pair) -> shuffle within a
write buffer -> append to `<split>-NNNNNN.tar`. Rejected records (bad input, or duplicates with
`--drop-duplicates`) go to `rejects.jsonl`; read = written + rejected is asserted. The manifest
(format in shards/README.md) holds counts, sha256 per shard, label statistics and element
references of the train split, the split rule, and the sources with their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..._version import __version__
from ..crystal import Crystal
from ..fingerprint import DuplicateIndex, fingerprint
from ..records import Reject
from ..validate import ValidationConfig
from .format import FORMAT, SPLITS, VERSION, encode_record, read_manifest, read_split
from .prepare import prepare_records
from .statistics import LabelAccumulator, dataset_statistics, summarize

__all__ = ["SplitRule", "TrainSubset", "ShardOptions", "write_shards", "read_manifest", "dataset_statistics", "sha256_file", "DEFAULT_EDGE_CUTOFFS"]

DEFAULT_EDGE_CUTOFFS = (4.0, 5.0, 6.0)  # Å: per-record edge counts for max_edges packing


@dataclass(frozen=True)
class SplitRule:
    """split = where u = sha256(f"{seed}:{group}") / 2^256 falls in the cumulative fractions;
    group = the record key `source:id`, or `source:<id before ':'>` with group_by_prefix (all
    frames of one OC20 system share a split). Adding records never moves an existing one."""

    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train, val, test
    seed: int = 0
    group_by_prefix: bool = False

    def __post_init__(self):
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-9:
            raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {self.fractions}")

    def group(self, crystal: Crystal) -> str:
        if self.group_by_prefix:
            return f"{crystal.source}:{crystal.id.split(':', 1)[0]}"
        return crystal.key

    def assign(self, crystal: Crystal) -> str:
        digest = hashlib.sha256(f"{self.seed}:{self.group(crystal)}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        edges = np.cumsum(self.fractions)
        return SPLITS[min(int(np.searchsorted(edges, u, side="right")), 2)]

    def to_json(self) -> dict[str, Any]:
        return {"hash": "sha256", "of": "f'{seed}:{group}'", "seed": self.seed,
                "group": "source:id-prefix" if self.group_by_prefix else "source:id",
                "fractions": dict(zip(SPLITS, self.fractions))}


class TrainSubset:
    """A split rule whose train part keeps only the first `max_train` train records (in input
    order); val and test are the wrapped rule's, unchanged, so learning curves share them. The
    records left out are rejects with the reason, counted like any other."""

    def __init__(self, rule, max_train: int):
        if max_train < 1:
            raise ValueError(f"max_train must be >= 1, got {max_train}")
        self.rule, self.max_train, self.kept = rule, int(max_train), 0
        self.seed, self.group_by_prefix = rule.seed, rule.group_by_prefix
        self.left_out = f"beyond the first {self.max_train} training records (max_train)"

    def group(self, crystal: Crystal) -> str:
        return self.rule.group(crystal)

    def assign(self, crystal: Crystal) -> str | None:
        split = self.rule.assign(crystal)
        if split != "train":
            return split
        self.kept += 1
        return split if self.kept <= self.max_train else None

    def to_json(self) -> dict[str, Any]:
        return {**self.rule.to_json(), "max_train": self.max_train}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _SplitWriter:
    """`<split>-NNNNNN.tar` shards of at most `shard_size` records and `shard_bytes` bytes."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, shard_bytes: int | None):
        self.out_dir, self.split = out_dir, split
        self.shard_size, self.shard_bytes = shard_size, shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.sizes: dict[str, dict[str, list]] = {}
        self._writer = None
        self.count = 0

    def write(self, crystal: Crystal, edges: list[int]) -> None:
        sample = encode_record(crystal, f"{self.count:09d}")
        nbytes = sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if k != "__key__")
        cur = self.shards[-1] if self.shards else None
        if cur is None or cur["records"] >= self.shard_size or (
                self.shard_bytes is not None and cur["records"] and cur["bytes"] + nbytes > self.shard_bytes):
            self._close_current()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            # a fixed integer mtime: byte-identical shards for identical input (reproducible sha256),
            # and no per-member PAX header for a fractional time (a third of the writing time)
            self._writer = wds.TarWriter(str(self.out_dir / name), mtime=0)
            cur = {"file": name, "records": 0, "atoms": 0, "bytes": 0}
            self.shards.append(cur)
            self.sizes[name] = {"n_atoms": [], "n_edges": []}
        self._writer.write(sample)
        cur["records"] += 1
        cur["atoms"] += crystal.n_atoms
        cur["bytes"] += nbytes
        self.sizes[cur["file"]]["n_atoms"].append(crystal.n_atoms)
        self.sizes[cur["file"]]["n_edges"].append(edges)
        self.count += 1

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            cur = self.shards[-1]
            path = self.out_dir / cur["file"]
            cur["bytes"] = path.stat().st_size
            cur["sha256"] = sha256_file(path)

    def close(self) -> list[dict[str, Any]]:
        self._close_current()
        return self.shards


@dataclass(frozen=True)
class ShardOptions:
    """How `write_shards` splits, validates, deduplicates and writes (the manifest records it)."""

    split: SplitRule = field(default_factory=SplitRule)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    shard_size: int = 1000  # records per shard
    shard_mb: float | None = None  # megabytes per shard (whichever limit comes first)
    edge_cutoffs: tuple[float, ...] = DEFAULT_EDGE_CUTOFFS  # Å: per-record edge counts for max_edges packing
    dedup: bool = True
    dedup_against: tuple[str, ...] = ()  # other shard directories
    drop_duplicates: bool = False  # reject duplicates instead of only listing them
    # also compare records of one source with each other (except those of one group with
    # group_by_prefix): mp2018 has 240 such duplicates, found in ~36 s more on the 2-core CPU;
    # leave it off for MD or relaxation frames, which are near-duplicates by nature
    dedup_within_source: bool = False
    workers: int = 1  # processes validating and measuring records
    # records held and written in a seeded random order, so consecutive input records (frames of
    # one trajectory) spread over a shard
    write_shuffle: int = 10000
    reader: dict[str, Any] = field(default_factory=dict)  # {"format", options}: into the manifest
    sources: tuple[str, ...] = ()  # input files, hashed into the manifest
    overwrite: bool = False
    progress: bool = True

    @classmethod
    def build(cls, *, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05), seed: int = 0,
              group_by_prefix: bool = False, required_targets: tuple[str, ...] = (), min_distance: float = 0.5,
              allowed_elements=None, split: SplitRule | None = None, validation: ValidationConfig | None = None,
              reader: dict[str, Any] | None = None, **rest) -> "ShardOptions":
        """Options from keywords: the split from `fractions`/`seed`/`group_by_prefix` unless a whole
        `split` is given, validation from `required_targets`/`min_distance`/`allowed_elements`
        unless a whole `validation` is given."""
        if split is None:
            split = SplitRule(tuple(fractions), seed, group_by_prefix)
        if validation is None:
            elements = None if allowed_elements is None else frozenset(allowed_elements)
            validation = ValidationConfig(min_distance, elements, tuple(required_targets))
        return cls(split=split, validation=validation, reader=dict(reader or {}), **rest)


class _Run:
    """One `write_shards` call: the split writers, the duplicate index, the label statistics of the
    train split and the counts, fed one prepared record at a time."""

    def __init__(self, out: Path, opts: ShardOptions, rejects):
        self.out, self.opts, self.rejects = out, opts, rejects
        shard_bytes = None if opts.shard_mb is None else int(opts.shard_mb * 1e6)
        self.writers = {s: _SplitWriter(out, s, opts.shard_size, shard_bytes) for s in SPLITS}
        self.index, self.origin = _reference_index(opts.dedup_against) if opts.dedup else (None, {})
        self.stats, self.elements, self.dropped_labels, self.counts = LabelAccumulator(), Counter(), Counter(), Counter()
        self.holdout = LabelAccumulator()  # the val split's sums: choose the reference ridge on held-out records
        self.duplicates: list[dict[str, Any]] = []
        self.rng = random.Random(opts.split.seed)
        self.buffer: list[tuple[str, Crystal, list[int]]] = []
        self.split_of: dict[str, str] = {}

    def _reject(self, reject: Reject) -> None:
        self.rejects.write(json.dumps(reject.to_json()) + "\n")
        self.counts["rejected"] += 1

    def _is_dropped_duplicate(self, crystal: Crystal, fp, name: str) -> bool:
        """Look `crystal` up among the records seen (and the reference shards); record a hit."""
        split = self.opts.split
        # by default one database's records are not compared with each other (distinct ids;
        # MD frames would cost a StructureMatcher call per pair of frames): other sources only
        if self.opts.dedup_within_source:
            group = split.group(crystal) if split.group_by_prefix else ""
        else:
            group = crystal.source
        hit = self.index.find(crystal, fp, group)
        if hit is None:
            self.index.add(crystal.key, crystal, fp, group)
            self.split_of[crystal.key] = name
            return False
        where = self.origin.get(hit, "input")
        self.duplicates.append({"key": crystal.key, "duplicate_of": hit, "where": where, "split": name,
                                "split_of_original": self.split_of.get(hit, "")})
        self.counts["duplicates_within_input" if where == "input" else f"duplicates_against:{where}"] += 1
        if self.opts.drop_duplicates:
            self._reject(Reject(crystal.id, crystal.source, f"duplicate structure of {hit} ({where})"))
        return self.opts.drop_duplicates

    def add(self, item) -> None:
        self.counts["read"] += 1
        if isinstance(item, Reject):
            self._reject(item)
            return
        crystal, edges, fp, dropped = item
        self.dropped_labels.update(dropped)
        name = self.opts.split.assign(crystal)
        if name is None:  # a split rule that keeps a subset (TrainSubset) leaves this record out
            self._reject(Reject(crystal.id, crystal.source, f"left out by the split: {self.opts.split.left_out}"))
            return
        if self.index is not None and self._is_dropped_duplicate(crystal, fp, name):
            return
        self.buffer.append((name, crystal, edges))
        self.counts["written"] += 1
        self.flush(self.opts.write_shuffle)

    def flush(self, keep: int) -> None:
        while len(self.buffer) > keep:
            k = self.rng.randrange(len(self.buffer))
            self.buffer[k], self.buffer[-1] = self.buffer[-1], self.buffer[k]
            name, crystal, edges = self.buffer.pop()
            self.writers[name].write(crystal, edges)
            if name == "train":
                self.stats.add(crystal)
                self.elements.update(crystal.numbers.tolist())
            elif name == "val":
                self.holdout.add(crystal)


def write_shards(records: Iterable[Crystal | Reject], out_dir: str | Path, options: ShardOptions | None = None,
                 **keywords) -> dict:
    """Validate, split, deduplicate and write `records` under `out_dir`; returns the manifest.

    `options`: a ShardOptions, or its fields as keywords (`ShardOptions.build`: fractions, seed,
    group_by_prefix, required_targets, min_distance, allowed_elements, shard_size, dedup, ...)."""
    opts = options if options is not None else ShardOptions.build(**keywords)
    out = _prepare_out_dir(Path(out_dir), opts.overwrite)
    with open(out / "rejects.jsonl", "w") as rejects, tqdm(desc=f"shard {out.name}", unit=" rec",
                                                             disable=not opts.progress) as bar:
        run = _Run(out, opts, rejects)
        for item in prepare_records(records, opts.validation, opts.edge_cutoffs, opts.dedup, opts.workers):
            run.add(item)
            bar.update(1)
        run.flush(0)
    counts = run.counts
    if counts["read"] != counts["written"] + counts["rejected"]:
        raise AssertionError(f"record count mismatch: read {counts['read']} != written {counts['written']} "
                             f"+ rejected {counts['rejected']}")
    manifest = _manifest(out, run, {s: w.close() for s, w in run.writers.items()})
    with open(out / "duplicates.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in run.duplicates)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")  # the manifest appears last: its presence means complete
    return read_manifest(out)  # as readers see it: integer element keys, "base"


def _prepare_out_dir(out: Path, overwrite: bool) -> Path:
    if (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds shards (manifest.json); pass overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.tar", "manifest.json", "sizes.npz", "rejects.jsonl", "duplicates.jsonl"):
        for path in out.glob(pattern):
            path.unlink()
    return out


def _reference_index(dirs: tuple[str, ...]):
    """A DuplicateIndex holding every record of the shard directories `dirs` (all splits)."""
    index, origin = DuplicateIndex(), {}
    for d in dirs:
        for split in read_manifest(d)["shards"]:
            for crystal in read_split(d, split):
                index.add(crystal.key, crystal, fingerprint(crystal), crystal.source)
                origin[crystal.key] = str(d)
    return index, origin


def _manifest(out: Path, run: _Run, shards: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    opts, counts, duplicates = run.opts, run.counts, run.duplicates
    edge_cutoffs, validation = opts.edge_cutoffs, opts.validation
    arrays = {}
    for w in run.writers.values():
        for name, s in w.sizes.items():
            arrays[f"{name}/n_atoms"] = np.asarray(s["n_atoms"], dtype=np.int32)
            arrays[f"{name}/n_edges"] = np.asarray(s["n_edges"], dtype=np.int64).reshape(-1, len(edge_cutoffs))
    np.savez(out / "sizes.npz", **arrays)
    state, holdout = run.stats.state(), run.holdout.state()
    summary = summarize(state, holdout) if state["moments"] else {"targets": {}, "element_references": {}, "residuals": {}}
    dup_counts = {"within_input": counts["duplicates_within_input"],
                  "against": {d: counts[f"duplicates_against:{d}"] for d in map(str, opts.dedup_against)},
                  "across_splits": sum(1 for d in duplicates if d["split_of_original"] not in ("", d["split"])),
                  "dropped": opts.drop_duplicates, "checked": opts.dedup, "within_source": opts.dedup_within_source,
                  "list": "duplicates.jsonl"}
    return {
        "format": FORMAT, "version": VERSION, "created_by": f"foundation {__version__}",
        "reader": opts.reader,
        "sources": [_describe_source(p) for p in opts.sources],
        "counts": {"read": counts["read"], "written": counts["written"], "rejected": counts["rejected"],
                   "duplicates": dup_counts,
                   "splits": {s: {"records": sum(e["records"] for e in shards[s]),
                                  "atoms": sum(e["atoms"] for e in shards[s]), "shards": len(shards[s])}
                              for s in SPLITS},
                   "dropped_labels": dict(run.dropped_labels)},
        "split_rule": opts.split.to_json(),
        "validation": {**asdict(validation), "allowed_elements": None if validation.allowed_elements is None
                       else sorted(validation.allowed_elements)},
        "shards": shards,
        "sizes": {"file": "sizes.npz", "sha256": sha256_file(out / "sizes.npz"), "edge_cutoffs": list(edge_cutoffs),
                  "n_edges": "full neighbour list (both directions), periodic images included"},
        "statistics_split": "train",
        "elements": {str(z): n for z, n in sorted(run.elements.items())},
        **summary,
        "label_sums": state,
        "label_sums_val": holdout,
        "rejects": "rejects.jsonl",
    }


def _describe_source(path: str) -> dict[str, Any]:
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return {"path": str(path), "files": [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
                                         for f in files]}
