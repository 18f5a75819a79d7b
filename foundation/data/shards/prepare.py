"""Per-record work of `foundation shard` that needs no shared state, optionally in worker processes:
validation, per-record edge counts at the manifest's cutoffs, and the duplicate fingerprint
(one vesin neighbour search, `PairSearch`, serves all three)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
from collections.abc import Iterable, Iterator

import numpy as np

from ..crystal import Crystal
from ..fingerprint import Fingerprint, fingerprint, fingerprint_reach
from ..graph import PairSearch
from ..records import Reject
from ..validate import SEARCH_CUTOFF, ValidationConfig, validate

__all__ = ["prepare", "prepare_records"]

Prepared = tuple[Crystal, list[int], Fingerprint | None, list[str]]  # crystal, edges, fingerprint, dropped labels


def prepare(item: Crystal | Reject, validation: ValidationConfig, edge_cutoffs: tuple[float, ...],
            dedup: bool) -> Prepared | Reject:
    """A Reject passes through; a Crystal is validated, then measured and fingerprinted."""
    if isinstance(item, Reject):
        return item
    if not isinstance(item, Crystal):
        raise TypeError(f"a reader must yield Crystal or Reject, got {type(item).__name__}")
    edges_reach = max(edge_cutoffs, default=0.0)
    search = PairSearch(item, lambda: max(SEARCH_CUTOFF, validation.min_distance, edges_reach,
                                         fingerprint_reach(item) if dedup else 0.0))
    checked = validate(item, validation, search=search)
    if isinstance(checked, Reject):
        return checked
    dropped = sorted(set(item.targets) - set(checked.targets))
    reach = max(edges_reach, fingerprint_reach(checked) if dedup else 0.0)
    distances = search.pairs(reach)[2] if reach > 0 else np.zeros(0)
    # each unordered pair (and atom-image pair) is listed once; the graph lists both directions
    edges = [2 * int(np.count_nonzero(distances < c)) for c in edge_cutoffs]
    fp = fingerprint(checked, distances) if dedup else None
    return checked, edges, fp, dropped


def _prepare_chunk(args) -> list[Prepared | Reject]:
    chunk, validation, edge_cutoffs, dedup = args
    return [prepare(item, validation, edge_cutoffs, dedup) for item in chunk]


def prepare_records(records: Iterable[Crystal | Reject], validation: ValidationConfig,
                    edge_cutoffs: tuple[float, ...], dedup: bool, workers: int = 1,
                    chunk: int = 64) -> Iterator[Prepared | Reject]:
    """`prepare` over `records` in input order, in `workers` processes when > 1."""
    if workers <= 1:
        for item in records:
            yield prepare(item, validation, edge_cutoffs, dedup)
        return
    iterator = iter(records)
    chunks = iter(lambda: list(itertools.islice(iterator, chunk)), [])
    with mp.get_context("fork").Pool(workers) as pool:
        for result in pool.imap(_prepare_chunk, ((c, validation, edge_cutoffs, dedup) for c in chunks)):
            yield from result
