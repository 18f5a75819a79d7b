"""`GraphCache`: records with their neighbour graphs kept in memory across epochs by the loader
(`LoaderConfig.cache_mib`, `stream.py`), so that a set that fits in memory is read from its shards
and searched for neighbours once, not once per epoch."""

from __future__ import annotations

from typing import Any

__all__ = ["GraphCache"]


class GraphCache:
    """Neighbour graphs of records, by (dataset, shard, record), up to `max_bytes` (then full: no
    eviction, so with a shuffled order the hit rate is the cached fraction, never thrashing).
    Why our own: the graphs are numpy arrays built per record by the loader's own plan, and what
    is kept must be counted in bytes, which `functools.lru_cache` cannot do."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self.graphs: dict[tuple[int, int, int], Any] = {}
        self.hits = self.misses = 0

    @staticmethod
    def size(graph) -> int:
        c = graph.crystal
        arrays = [graph.edge_index, graph.edge_shift, c.positions, c.numbers, c.cell]
        labels = sum(int(getattr(v, "nbytes", 8)) + 64 for v in c.targets.values())
        return sum(int(a.nbytes) for a in arrays) + labels + 512  # + the objects themselves (approximate)

    def get(self, key: tuple[int, int, int]):
        graph = self.graphs.get(key)
        if graph is None:
            self.misses += 1
        else:
            self.hits += 1
        return graph

    def put(self, key: tuple[int, int, int], graph) -> None:
        size = self.size(graph)
        if self.bytes + size <= self.max_bytes and key not in self.graphs:
            self.graphs[key] = graph
            self.bytes += size
