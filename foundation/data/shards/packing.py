"""The epoch plan: which records every rank and worker reads, and how they are packed into batches.

Every process computes the same plan from the manifests alone (per-shard record counts and
per-record atom/edge counts), so no collective is needed and every rank knows how many batches
every other rank gets:

1. each dataset's epoch stream: its shards in a seeded order (new each epoch), `interleave`
   shards read side by side, records of a shard in file order; repeated (a fresh shard order per
   pass) or cut to the dataset's share m_i of the epoch, m_i = N p_i with p_i ∝ n_i^(1/T) and
   N = Σ n_i (T = 1 keeps every record exactly once);
2. the datasets' streams interleaved in a seeded random order that keeps each stream's order;
3. a local shuffle: a random permutation within consecutive blocks of `shuffle_buffer` records,
   so a reader only ever holds about one block;
4. contiguous segments, one per rank, balanced by atom count; each rank's segment packed in order
   (next fit) into batches within `max_atoms` and `max_edges` (a record alone over the budget gets
   a batch of its own);
5. equal batch counts: every rank gets K = max over ranks of its batch count, a rank with fewer
   splitting its batches with the most records in two (budgets still hold, no record is lost or
   repeated); only a rank with fewer records than K (tiny data) repeats batches, flagged as padding;
6. a rank's K batches in `n_workers` contiguous chunks; DataLoader takes batches from its
   workers in turn, so output u of the epoch is batch `u // W` of chunk `u % W`.
"""

from __future__ import annotations

import ctypes
import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["SourceSizes", "EpochPlan", "plan_epoch", "mixture_counts", "worker_batches", "worker_windows", "reader_keys"]


@dataclass(frozen=True)
class SourceSizes:
    """One dataset's split as the plan sees it (from its manifest and sizes file)."""

    name: str
    shards: tuple[str, ...]  # shard paths or URLs
    n_atoms: tuple[np.ndarray, ...]  # per shard: [n_records] atoms of each record
    n_edges: tuple[np.ndarray, ...] | None = None  # per shard: [n_records] edges (upper bound), if known
    sha256: tuple[str | None, ...] | None = None  # per shard, from the manifest (checked on fetch)

    @property
    def n_records(self) -> int:
        return int(sum(len(a) for a in self.n_atoms))


@dataclass
class EpochPlan:
    """Item arrays [n_items] of the epoch (item g = one record drawn once) and each rank's batches."""

    dataset: np.ndarray  # [n_items] int: index into the sources
    shard: np.ndarray  # [n_items] int: shard index within the dataset
    record: np.ndarray  # [n_items] int: record index within the shard
    occurrence: np.ndarray  # [n_items] int: pass over the dataset (0 unless repeated by T > 1)
    atoms: np.ndarray  # [n_items] int
    rank_batches: list  # [world_size] Batches: [K] item indices of each batch
    padding: list[list[bool]]  # [world_size][K] True where a batch repeats records (tiny data only)
    n_workers: int

    @property
    def batches_per_rank(self) -> int:
        return len(self.rank_batches[0])


def mixture_counts(n: list[int], temperature: float) -> np.ndarray:
    """Records drawn from each dataset per epoch: N p_i, p_i ∝ n_i^(1/T), N = Σ n_i (T=1: n_i)."""
    n_arr = np.asarray(n, dtype=np.float64)
    if temperature == 1.0 or len(n) == 1:
        return n_arr.astype(np.int64)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = n_arr ** (1.0 / temperature)
    p = p / p.sum()
    return np.maximum(np.round(n_arr.sum() * p).astype(np.int64), (n_arr > 0).astype(np.int64))


def _dataset_stream(sizes: SourceSizes, count: int, rng: np.random.Generator, shuffle: bool,
                    interleave: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shard, record, occurrence) of the first `count` records of this epoch's stream."""
    lengths = np.array([len(a) for a in sizes.n_atoms], dtype=np.int64)
    parts, total, occurrence = [], 0, 0
    while total < count and lengths.sum() > 0:
        order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
        shard = np.repeat(order, lengths[order])  # [n] shard of each record, shard by shard
        record = np.concatenate([np.arange(lengths[s]) for s in order])
        group = np.repeat(np.arange(len(order)) // max(interleave, 1), lengths[order])
        slot = np.repeat(np.arange(len(order)), lengths[order])
        key = np.lexsort((slot, record, group))  # groups of `interleave` shards, round robin
        parts.append((shard[key], record[key], np.full(len(key), occurrence)))
        total += len(key)
        occurrence += 1
    shard, record, occ = (np.concatenate(x)[:count] for x in zip(*parts)) if parts else (np.zeros(0, np.int64),) * 3
    return shard, record, occ


def _pack(atoms: list[int], edges: list[int] | None, max_atoms: int, max_edges: int | None) -> list[int]:
    """Next fit: start index of each batch over a sequence of records."""
    starts, cur_a, cur_e = [], 0, 0
    for k, a in enumerate(atoms):
        e = edges[k] if edges is not None else 0
        over = cur_a + a > max_atoms or (max_edges is not None and cur_e + e > max_edges)
        if not starts or over:
            starts.append(k)
            cur_a, cur_e = 0, 0
        cur_a += a
        cur_e += e
    return starts


def _equalize(batches: list[np.ndarray], k: int) -> tuple[list[np.ndarray], list[bool]]:
    """Split the batches with the most records until there are k; pad by repeats if impossible."""
    heap = [(-len(b), i) for i, b in enumerate(batches)]
    heapq.heapify(heap)
    pieces: dict[int, list[np.ndarray]] = {i: [b] for i, b in enumerate(batches)}
    n = len(batches)
    while n < k and heap and -heap[0][0] > 1:
        size, i = heapq.heappop(heap)
        # the largest piece of batch i is split in two halves, kept in order
        j = max(range(len(pieces[i])), key=lambda t: len(pieces[i][t]))
        piece = pieces[i][j]
        half = len(piece) // 2
        pieces[i][j:j + 1] = [piece[:half], piece[half:]]
        n += 1
        biggest = max(len(p) for p in pieces[i])
        heapq.heappush(heap, (-biggest, i))
    out = [p for i in range(len(batches)) for p in pieces[i]]
    padding = [False] * len(out)
    if out:
        while len(out) < k:  # fewer records than batches: repeat, flagged
            out.append(out[len(out) % len(batches)])
            padding.append(True)
    return out, padding


def plan_epoch(sources: list[SourceSizes], *, epoch: int, seed: int, world_size: int, n_workers: int,
               max_atoms: int, max_edges: int | None = None, temperature: float = 1.0,
               shuffle: bool = True, shuffle_buffer: int = 1000, interleave: int = 4) -> EpochPlan:
    """The deterministic plan of one epoch (see the module docstring)."""
    counts = mixture_counts([s.n_records for s in sources], temperature)
    rng = np.random.default_rng([seed, epoch])
    streams = [_dataset_stream(s, int(c), np.random.default_rng([seed, epoch, i]), shuffle, interleave)
               for i, (s, c) in enumerate(zip(sources, counts))]
    labels = np.repeat(np.arange(len(sources)), counts)
    if shuffle:
        labels = rng.permutation(labels)
    order = np.argsort(labels, kind="stable")  # positions of dataset 0's items, then 1's, ...
    n_items = len(labels)
    dataset, shard, record, occ = (np.zeros(n_items, np.int64) for _ in range(4))
    dataset[order] = labels[order]
    start = 0
    for i, (sh, rec, oc) in enumerate(streams):
        where = order[start:start + len(sh)]
        shard[where], record[where], occ[where] = sh, rec, oc
        start += len(sh)
    atoms = _gather([s.n_atoms for s in sources], dataset, shard, record)
    edges = None
    if max_edges is not None:
        if any(s.n_edges is None for s in sources):
            raise ValueError("max_edges needs per-record edge counts from the shard manifests "
                             "(sizes.npz at a cutoff >= the loader's); use max_atoms only")
        edges = _gather([s.n_edges for s in sources], dataset, shard, record)
    sequence = np.arange(n_items)
    if shuffle and shuffle_buffer > 1:  # permutation inside consecutive blocks
        sequence = np.lexsort((rng.random(n_items), sequence // shuffle_buffer))
    rank_batches = _rank_batches(sequence, atoms, edges, world_size, max_atoms, max_edges)
    k = max(len(b) for b in rank_batches)
    equal = [_equalize(b, k) for b in rank_batches]
    if any(len(b) == 0 for b, _ in equal) and n_items:
        raise ValueError(f"{n_items} record(s) cannot give every one of {world_size} ranks a batch")
    # Kept for the whole epoch by every rank: the narrowest integers that hold the values and the
    # batches as slices of one array, so a million-record epoch costs ~15 MB, not ~150 MB of arrays
    # and per-batch objects (bench/corpus.py measures the loader's memory at 10^4 and 10^6 records).
    return EpochPlan(narrowest(dataset), narrowest(shard), narrowest(record), narrowest(occ),
                     narrowest(atoms), [Batches.of(b) for b, _ in equal], [p for _, p in equal],
                     max(n_workers, 1))


def release_free_memory() -> None:
    """Hand the heap pages freed by the planning back to the OS (glibc's `malloc_trim`; nothing
    elsewhere). Why: planning a million-record epoch allocates ~100 MB of temporaries; after they
    are freed glibc keeps the pages mapped (the heap top is pinned by the arrays kept), and the
    loader's resident memory would grow with the dataset although its live data does not."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 -- glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def narrowest(values: np.ndarray) -> np.ndarray:
    """`values` in the narrowest signed integer type that holds them (arrays kept for a whole run)."""
    top = int(values.max(initial=0))
    for dtype in (np.int8, np.int16, np.int32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.int64)


class Batches:
    """A rank's batches: `batches[k]` is the int32 item array of batch k (a view), `len`, iteration.
    One flat array and its bounds instead of one array object per batch."""

    def __init__(self, flat: np.ndarray, bounds: np.ndarray):
        self.flat, self.bounds = flat, bounds

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> "Batches":
        flat = np.concatenate(batches).astype(np.int32) if batches else np.zeros(0, np.int32)
        return cls(flat, np.cumsum([0] + [len(b) for b in batches]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k: int) -> np.ndarray:
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        return self.flat[self.bounds[k]:self.bounds[k + 1]]

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items of batches `ids` concatenated in that order, [len(ids)] their sizes), no per-batch objects."""
        ids = np.asarray(ids, dtype=np.int64)
        starts = self.bounds[ids]
        sizes = self.bounds[ids + 1] - starts
        offsets = np.cumsum(sizes) - sizes
        index = np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
        return self.flat[index], sizes


def _gather(per_shard: list[tuple[np.ndarray, ...]], dataset, shard, record) -> np.ndarray:
    """[n_items] per-record values (atoms or edges) of the items."""
    out = np.zeros(len(dataset), dtype=np.int64)
    for d, arrays in enumerate(per_shard):
        mask = dataset == d
        if not mask.any():
            continue
        flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])
        offset = np.concatenate([[0], np.cumsum([len(a) for a in arrays])[:-1]]).astype(np.int64)
        out[mask] = flat[offset[shard[mask]] + record[mask]]
    return out


def _rank_batches(sequence, atoms, edges, world_size, max_atoms, max_edges) -> list[list[np.ndarray]]:
    """Contiguous atom-balanced segments of `sequence`, one per rank, each packed in order."""
    cum = np.cumsum(atoms[sequence])
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0] + [int(np.searchsorted(cum, total * r / world_size, side="right")) for r in range(1, world_size)]
    cuts.append(len(sequence))
    if len(sequence) >= world_size:  # every rank at least one record
        for r in range(1, world_size):
            cuts[r] = min(max(cuts[r], cuts[r - 1] + 1), len(sequence) - (world_size - r))
    out = []
    for r in range(world_size):
        segment = sequence[cuts[r]:cuts[r + 1]]
        seg_atoms = atoms[segment].tolist()
        seg_edges = edges[segment].tolist() if edges is not None else None
        starts = _pack(seg_atoms, seg_edges, max_atoms, max_edges) + [len(segment)]
        del seg_atoms, seg_edges  # a million Python ints: gone before the long-lived views are made
        out.append([segment[a:b] for a, b in zip(starts[:-1], starts[1:])])
    return out


def worker_batches(plan: EpochPlan, rank: int, worker: int, n_workers: int, start: int = 0) -> list[int]:
    """Indices (into `plan.rank_batches[rank]`) this worker yields, in order, when the rank's
    first `start` batches of the epoch were already consumed. The rank's output u comes from
    chunk u % W, batch u // W of that chunk; after a resume, worker w serves outputs
    start + w, start + w + W, ..., which DataLoader's round robin hands out in order."""
    if n_workers != plan.n_workers:
        raise ValueError(f"plan made for {plan.n_workers} worker(s), asked for {n_workers}")
    k = plan.batches_per_rank
    sizes = [len(range(w, k, n_workers)) for w in range(n_workers)]
    chunk_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [int(chunk_start[u % n_workers] + u // n_workers) for u in range(start + worker, k, n_workers)]


# A worker keeps per-item bookkeeping for about this many items at a time (bench/corpus.py: the
# loader's memory at 10^6 records is within 10 % of that at 10^4).
WINDOW_ITEMS = 1 << 16
_SCAN_BATCHES = 4096


def reader_keys(plan: EpochPlan, items: np.ndarray) -> np.ndarray:
    """[n] int64: the shard reader of each item, (dataset, pass, shard) as one number."""
    occ, shards = int(plan.occurrence.max(initial=0)) + 1, int(plan.shard.max(initial=0)) + 1
    return ((plan.dataset[items].astype(np.int64) * occ + plan.occurrence[items]) * shards
            + plan.shard[items])


def worker_windows(plan: EpochPlan, rank: int, ids: np.ndarray, window_items: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cuts, keys, last) for a worker's batches `ids` (indices into the rank's batches, in order).

    `ids[cuts[j]:cuts[j + 1]]` is window j: at least `window_items` items where the data allow,
    cut only where every item of the earlier batches precedes every item of the later ones in the
    epoch stream, so the worker reads window after window and each shard still front to back. In
    a shuffled plan such a cut falls every ~20 shuffle blocks; where none falls, a window grows
    (in the worst case one window, the whole worker, as before windows). `keys` (sorted) and `last`:
    the last item each shard reader serves this worker, so a reader closes after it."""
    window_items = WINDOW_ITEMS if window_items is None else window_items
    batches = plan.rank_batches[rank]
    n = len(ids)
    lo_item, hi_item = np.zeros(n, np.int64), np.zeros(n, np.int64)
    counts = np.zeros(n, np.int64)
    last: dict[int, int] = {}
    for a in range(0, n, _SCAN_BATCHES):
        flat, sizes = batches.take(ids[a:a + _SCAN_BATCHES])
        starts = np.cumsum(sizes) - sizes
        lo_item[a:a + len(sizes)] = np.minimum.reduceat(flat, starts)
        hi_item[a:a + len(sizes)] = np.maximum.reduceat(flat, starts)
        counts[a:a + len(sizes)] = sizes
        key = reader_keys(plan, flat)
        order = np.lexsort((flat, key))
        ends = np.r_[np.flatnonzero(key[order][1:] != key[order][:-1]), len(order) - 1]
        for k, g in zip(key[order][ends].tolist(), flat[order][ends].tolist()):
            last[k] = max(last.get(k, -1), g)
    cuts = [0]
    if n:
        clean = np.flatnonzero(np.maximum.accumulate(hi_item)[:-1] < np.minimum.accumulate(lo_item[::-1])[::-1][1:]) + 1
        total = np.concatenate([[0], np.cumsum(counts)])
        while cuts[-1] < n:
            j = np.searchsorted(total[clean], total[cuts[-1]] + window_items)
            cuts.append(int(clean[j]) if j < len(clean) else n)
    keys = np.array(sorted(last), dtype=np.int64)
    return np.array(cuts, np.int64), keys, np.array([last[k] for k in keys.tolist()], dtype=np.int64)
