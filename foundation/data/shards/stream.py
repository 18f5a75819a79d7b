"""Streaming loader over webdataset shards: split by rank and worker, mixed, packed, resumable.

    loader = build_loader({"mp": "shards/mp2018", "oc20": "shards/oc20"}, "train",
                          LoaderConfig(cutoff=5.0, max_atoms=2048, num_workers=4),
                          rank=rank, world_size=world_size, epoch=0)
    for batch in loader: ...            # len(loader) batches, the same number on every rank
    state = loader.state_dict()         # {"epoch", "position", ...}: resume mid-epoch exactly

Records, not shards, are split between ranks and workers (`foundation.data.shards.packing`): the plan
is computed from the manifests alone, identically in every process, so three shards feed four
rank×worker slots, and every rank gets the same number of batches with no collective. This is the
explicit node/worker split: webdataset's shard-level `split_by_node`/`split_by_worker` are not
used, because splitting shards leaves slots idle and batch counts unequal when shards do not
divide evenly; rank and world size are passed in, the worker comes from `get_worker_info()`. A worker
reads only the part of the epoch stream that holds its batches (one pass, a few shards open),
decodes its records, builds periodic neighbour graphs (vesin) and collates them. A corrupt or
truncated shard is skipped from the point it fails, with a warning naming it; its missing records
are counted (`loader.counters`), their batches are yielded without them, and a batch left with
no readable record is replaced by a repeat of the worker's previous good batch
(`counters["replaced_batches"]`), so batch counts stay equal on every rank. Only a worker whose
every batch is unreadable stops the run (a RuntimeError naming the rank).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..graph import collate, neighbor_graph
from .packing import (EpochPlan, SourceSizes, plan_epoch, reader_keys, release_free_memory, worker_batches,
                      worker_windows)
from .format import decode_record
from .remote import FetchPolicy, ShardUnavailable, fetch
from .cache import GraphCache
from .sources import resolve_sources

__all__ = ["GraphCache", "LoaderConfig", "StreamConfig", "ShardLoader", "build_loader"]

log = logging.getLogger("foundation.data")


@dataclass(frozen=True)
class LoaderConfig:
    cutoff: float | None = None  # Å, neighbour graph cutoff (the model's; a training run sets it)
    max_atoms: int = 1024  # atoms per batch (a larger structure gets a batch of its own)
    max_edges: int | None = None  # edges per batch, from per-record counts in the manifests
    num_workers: int = 0  # DataLoader worker processes per rank (0: read in the main process)
    seed: int = 0  # shard order, dataset mixing and local shuffle (with the epoch)
    temperature: float = 1.0  # dataset mixing p_i ∝ n_i^(1/T); 1 = every record once per epoch
    shuffle: bool = True  # False: file order (evaluation)
    shuffle_buffer: int = 1000  # records per block of the local shuffle
    interleave: int = 4  # shards of one dataset read side by side
    prefetch_factor: int = 2  # batches each worker prepares ahead
    multiprocessing_context: str | None = None  # "fork", "spawn", "forkserver" (None: platform default)
    # Remote shards (http(s)://, s3://, pipe:): fetched whole with this many retries (exponential
    # backoff from retry_backoff_s), checked against the manifest's sha256 ("remote" shards,
    # "always", "never"); a shard still failing is skipped and its records counted (remote.py).
    retries: int = 4
    retry_backoff_s: float = 0.5
    verify_checksums: str = "remote"
    # MiB of records with their neighbour graphs kept in memory across epochs, per loader (0: none).
    # A cached record is neither read from its shard nor searched for neighbours again; records
    # past the budget are read every epoch as without it. Only with num_workers 0 (a worker's
    # memory ends with its epoch). For sets that fit in memory: mp2018's 26,538 train structures at
    # 4 Å take ~500 MiB (bench/README.md, "Graphs cached in memory").
    cache_mib: int = 0

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(retries=self.retries, backoff_s=self.retry_backoff_s, verify=self.verify_checksums)

    def __post_init__(self):
        if self.cutoff is not None and not self.cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {self.cutoff}")
        if self.max_atoms < 1 or (self.max_edges is not None and self.max_edges < 1):
            raise ValueError(f"batch budgets must be >= 1, got max_atoms={self.max_atoms}, max_edges={self.max_edges}")
        if self.num_workers < 0 or self.shuffle_buffer < 1 or self.interleave < 1:
            raise ValueError("num_workers >= 0, shuffle_buffer >= 1 and interleave >= 1 are required")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.cache_mib < 0:
            raise ValueError(f"cache_mib must be >= 0 (0: no cache), got {self.cache_mib}")
        if self.cache_mib and self.num_workers:
            raise ValueError(f"cache_mib={self.cache_mib} needs num_workers=0 (got {self.num_workers}): a "
                             "worker process's cache would end with its epoch")
        self.fetch_policy()  # checks retries, backoff and verify


StreamConfig = LoaderConfig  # the name the design notes use


def _identity(x):
    return x


class _ShardReader:
    """Records of one shard in file order; `get(r)` decodes record r (requests increase).

    The shard is fetched whole first (`remote.fetch`: retries, resume, sha256); a shard that stays
    unreachable or fails its checksum, or that turns out corrupt or short while decoding, is skipped
    from that point with one warning, and `events` counts why."""

    def __init__(self, url: str, expected: int, sha256: str | None, policy: FetchPolicy, events: Counter):
        self.url, self.expected, self.sha256, self.policy, self.events = url, expected, sha256, policy, events
        self._samples = None
        self._stream = None
        self._index = -1  # index of the last sample drawn
        self.failed = False

    def _open(self) -> None:
        counters: dict = {}
        try:
            self._stream = fetch(self.url, self.sha256, self.policy, counters)
        finally:
            for key, value in counters.items():
                self.events[key] += value
        self._samples = group_by_keys(tar_file_expander([{"url": self.url, "stream": self._stream}]))

    def get(self, r: int):
        """Record r as a Crystal, or None if the shard failed before it (warned once)."""
        if self.failed:
            return None
        try:
            if self._samples is None:
                self._open()
            while self._index < r:
                sample = next(self._samples, None)
                if sample is None:
                    raise EOFError(f"shard ends after {self._index + 1} of {self.expected} records")
                self._index += 1
            return decode_record(sample)
        except ShardUnavailable as exc:
            self.failed = True
            self.events["unreachable_shards" if exc.kind == "unreachable" else "checksum_failures"] += 1
            log.warning("skipping shard %s; its %d records are counted as missing", exc, self.expected)
            return None
        except Exception as exc:  # noqa: BLE001 -- any failure of a shard skips the rest of it
            self.failed = True
            log.warning("skipping the rest of corrupt or truncated shard %s (%s: %s)", self.url,
                        type(exc).__name__, exc)
            return None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _EpochDataset(torch.utils.data.IterableDataset):
    """One rank's batches of one epoch, from position `start`; yields (Batch, events)."""

    def __init__(self, plan: EpochPlan, sources: list[SourceSizes], names: list[str], rank: int,
                 start: int, cutoff: float, max_atoms: int, max_edges: int | None, dtype: torch.dtype,
                 policy: FetchPolicy, cache: GraphCache | None = None):
        super().__init__()
        self.plan, self.rank, self.start, self.policy, self.cache = plan, rank, start, policy, cache
        self.urls = [s.shards for s in sources]
        self.digests = [s.sha256 or (None,) * len(s.shards) for s in sources]
        self.counts = [[len(a) for a in s.n_atoms] for s in sources]
        self.names, self.cutoff, self.dtype = names, cutoff, dtype
        self.max_atoms, self.max_edges = max_atoms, max_edges

    def __iter__(self) -> Iterator[tuple[Any, dict]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ids = np.asarray(worker_batches(self.plan, self.rank, worker, n_workers, self.start), dtype=np.int64)
        padding = np.asarray(self.plan.padding[self.rank], dtype=bool)[ids] if len(ids) else np.zeros(0, bool)
        return self._iterate(ids, padding)

    def _iterate(self, ids: np.ndarray, padding: np.ndarray):
        """The worker's batches `ids` in order, read window by window (`packing.worker_windows`):
        in each, the items in plan order (each shard front to back, once over the epoch), the
        batches filled as their records arrive and emitted in order. The bookkeeping is numpy
        arrays of one window's items (a few bytes per record, not Python objects per record),
        so a worker's memory does not grow with the epoch."""
        cuts, keys, last = worker_windows(self.plan, self.rank, ids)
        release_free_memory()
        state = {"readers": {}, "previous": None, "pending": 0}
        events: Counter = Counter()
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            flat, sizes = self.plan.rank_batches[self.rank].take(ids[a:b])
            yield from self._window(flat, sizes, padding[a:b], keys, last, state, events)
        if state["pending"]:
            raise RuntimeError(f"rank {self.rank}: every record of this worker's {state['pending']} batch(es) is "
                               "unreadable (see the warnings about corrupt shards above)")

    def _window(self, flat, sizes, padding, keys, last, state: dict, events: Counter):
        p, readers = self.plan, state["readers"]
        n_batches = len(sizes)
        batch_of = np.repeat(np.arange(n_batches, dtype=np.int32), sizes)
        pos_of = (np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)).astype(np.int32)
        order = np.argsort(flat, kind="stable").astype(np.int32)  # slots of `flat`, by item (an item may fill several)
        items = flat[order]
        del flat
        starts = (np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.zeros(0)).astype(np.int32)
        ends = np.r_[starts[1:], len(items)].astype(np.int32)
        unique = items[starts]
        del items
        # the reader of this item's shard is done after it (its last item for this worker)
        closes = unique == last[np.searchsorted(keys, reader_keys(p, unique))] if len(unique) else np.zeros(0, bool)
        filled: list[list | None] = [None] * n_batches
        left = sizes.tolist()
        emit = 0
        for u in range(len(unique)):
            g = int(unique[u])
            d, s = int(p.dataset[g]), int(p.shard[g])
            rkey = (d, int(p.occurrence[g]), s)
            if rkey not in readers:
                readers[rkey] = _ShardReader(self.urls[d][s], self.counts[d][s], self.digests[d][s], self.policy,
                                             events)
            reader = readers[rkey]
            graph = self._graph(reader, d, s, int(p.record[g]))
            slots = order[starts[u]:ends[u]]
            if graph is None:
                events["missing_records"] += len(slots)
            for slot in slots.tolist():
                b = int(batch_of[slot])
                if filled[b] is None:
                    filled[b] = [None] * int(sizes[b])
                filled[b][pos_of[slot]] = graph
                left[b] -= 1
            if closes[u]:
                if reader.failed:
                    events["corrupt_shards"] += 1
                    events[f"shard:{reader.url}"] += 1
                reader.close()
                del readers[rkey]
            while emit < n_batches and left[emit] == 0:
                batch = self._emit(filled[emit], bool(padding[emit]), events)
                filled[emit] = None
                emit += 1
                if batch is None:  # every record unreadable: repeat a good batch instead
                    events["replaced_batches"] += 1
                    if state["previous"] is None:
                        state["pending"] += 1
                        continue
                    batch = state["previous"]
                yield batch, dict(events)
                events.clear()
                state["previous"] = batch
                for _ in range(state["pending"]):  # empties before the first good batch of this worker
                    yield batch, {}
                state["pending"] = 0

    def _graph(self, reader: _ShardReader, d: int, s: int, record: int):
        """Record `record` of shard `s` of dataset `d` with its neighbour graph (from the cache
        where it is there), or None if unreadable."""
        key = (d, s, record)
        graph = self.cache.get(key) if self.cache is not None else None
        if graph is None:
            crystal = reader.get(record)
            if crystal is None:
                return None
            graph = neighbor_graph(crystal, self.cutoff, dataset=self.names[d])
            if self.cache is not None:
                self.cache.put(key, graph)
        return graph

    def _emit(self, members: list, padding: bool, events: Counter):
        """The collated batch of the readable members, or None when none is readable."""
        graphs = [g for g in members if g is not None]
        if not graphs:
            return None
        if len(graphs) == 1 and (graphs[0].n_atoms > self.max_atoms
                                 or (self.max_edges is not None and graphs[0].n_edges > self.max_edges)):
            c = graphs[0].crystal
            log.warning("%s has %d atoms and %d edges, over the batch budget (max_atoms=%d, max_edges=%s): "
                        "it gets a batch of its own", c.key, c.n_atoms, graphs[0].n_edges, self.max_atoms,
                        self.max_edges)
            events["oversize_batches"] += 1
        if padding:
            events["padding_batches"] += 1
        events["records"] += len(graphs)
        return collate(graphs, self.dtype)


class ShardLoader:
    """Batches of one split for one rank, epoch by epoch, with a resumable position.

    `len()` = batches per rank in the current epoch (equal on every rank). Iterating yields the
    batches from `position` to the end of the epoch; `set_epoch(e)` starts epoch e at 0.
    """

    def __init__(self, sources: list[SourceSizes], names: list[str], config: LoaderConfig, rank: int,
                 world_size: int, epoch: int, dtype: torch.dtype):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sources, self.names, self.config = sources, names, config
        self.rank, self.world_size, self.dtype = rank, world_size, dtype
        self.epoch, self.position = epoch, 0
        self.counters: Counter = Counter()  # records, missing_records, corrupt_shards, ...
        self.corrupt_shards: set[str] = set()
        self._plan: tuple[int, EpochPlan] | None = None
        self.cache = GraphCache(config.cache_mib * 2**20) if config.cache_mib else None

    @property
    def plan(self) -> EpochPlan:
        if self._plan is None or self._plan[0] != self.epoch:
            c = self.config
            self._plan = (self.epoch, plan_epoch(
                self.sources, epoch=self.epoch, seed=c.seed, world_size=self.world_size,
                n_workers=max(c.num_workers, 1), max_atoms=c.max_atoms, max_edges=c.max_edges,
                temperature=c.temperature, shuffle=c.shuffle, shuffle_buffer=c.shuffle_buffer,
                interleave=c.interleave))
            release_free_memory()
        return self._plan[1]

    def __len__(self) -> int:
        return self.plan.batches_per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = int(epoch), 0

    def batches(self, epoch: int, skip: int = 0) -> Iterator:
        """Epoch `epoch` from batch `skip` on: the `make(epoch, skip)` that
        `foundation.train.data.EpochStream` takes (`EpochStream(loader.batches)`)."""
        self.set_epoch(epoch)
        self.position = min(int(skip), len(self))
        return iter(self)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "world_size": self.world_size,
                "num_workers": self.config.num_workers, "seed": self.config.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at (epoch, position). Exact when world size, workers and seed are unchanged;
        otherwise the same fraction of the epoch is skipped (a warning says so)."""
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        same = (state.get("world_size", self.world_size) == self.world_size
                and state.get("num_workers", self.config.num_workers) == self.config.num_workers
                and state.get("seed", self.config.seed) == self.config.seed)
        if not same:
            old = plan_epoch(self.sources, epoch=self.epoch, seed=int(state.get("seed", self.config.seed)),
                             world_size=int(state["world_size"]), n_workers=max(int(state["num_workers"]), 1),
                             max_atoms=self.config.max_atoms, max_edges=self.config.max_edges,
                             temperature=self.config.temperature, shuffle=self.config.shuffle,
                             shuffle_buffer=self.config.shuffle_buffer, interleave=self.config.interleave)
            fraction = position / max(old.batches_per_rank, 1)
            position = int(round(fraction * len(self)))
            log.warning("data position of epoch %d saved with another world size, worker count or seed: "
                        "resuming at %.1f%% of the epoch (batch %d), not exactly", self.epoch,
                        100 * fraction, position)
        self.position = min(position, len(self))

    def __iter__(self) -> Iterator:
        c = self.config
        dataset = _EpochDataset(self.plan, self.sources, self.names, self.rank, self.position, c.cutoff,
                                c.max_atoms, c.max_edges, self.dtype, c.fetch_policy(), self.cache)
        if c.num_workers == 0:
            stream = iter(dataset)
        else:
            stream = iter(torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=c.num_workers, collate_fn=_identity,
                prefetch_factor=c.prefetch_factor, multiprocessing_context=c.multiprocessing_context))
        for batch, events in stream:
            for key, value in events.items():
                if key.startswith("shard:"):
                    self.corrupt_shards.add(key[len("shard:"):])
                else:
                    self.counters[key] += value
            self.position += 1
            yield batch


def build_loader(datasets: dict[str, str | list[str]], split: str, config: LoaderConfig, *, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, dtype: torch.dtype = torch.float32,
                 skip_batches: int = 0) -> ShardLoader:
    """A `ShardLoader` over `datasets` {name: shard directory, manifest URL, or tar URL list/brace
    pattern}. Each Batch's `datasets` entries are these names. `skip_batches`: batches of `epoch`
    already consumed by this rank (resume); they are not read, the plan says where they end."""
    position = int(skip_batches)
    if not datasets:
        raise ValueError("build_loader: no datasets given")
    if config.cutoff is None:
        raise ValueError("build_loader: the loader config has no cutoff (a training run sets the model's)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    names = list(datasets)
    sources = [resolve_sources(name, datasets[name], split, config.cutoff, config.max_edges is not None)
               for name in names]
    loader = ShardLoader(sources, names, config, rank, world_size, epoch, dtype)
    if position:
        loader.load_state_dict({"epoch": epoch, "position": position})
    return loader
