"""Where a dataset's shards are, and the per-record sizes the epoch plan needs.

A dataset is given as
- a shard directory (or its manifest.json), local or a URL: the split's shards from the manifest;
- a list of tar URLs or one brace pattern (`https://host/mp/train-{000000..000009}.tar`): those
  shards, whatever the split; their sizes come from a manifest.json next to the first one if
  there is one, else from one pass over the shards (counted once, with a warning).
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

import numpy as np
from webdataset.tariterators import tarfile_samples

from .packing import SourceSizes, narrowest
from .format import decode_record, read_manifest, read_sizes, shard_location

__all__ = ["resolve_sources", "scan_shard", "edge_column"]

log = logging.getLogger("foundation.data")


def _expand(spec: str | list[str]) -> list[str] | None:
    """Tar URLs of an explicit list or brace pattern; None for a directory/manifest location."""
    if isinstance(spec, (list, tuple)):
        urls = [str(u) for u in spec]
    elif str(spec).endswith(".tar") or "{" in str(spec):
        import braceexpand

        urls = list(braceexpand.braceexpand(str(spec)))
    else:
        return None
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    return urls


def edge_column(manifest: dict, cutoff: float) -> int | None:
    """Column of the stored edge counts valid as an upper bound at `cutoff` (smallest stored
    cutoff >= it), or None when every stored cutoff is smaller."""
    cutoffs = manifest.get("sizes", {}).get("edge_cutoffs", [])
    fits = [k for k, c in enumerate(cutoffs) if c >= cutoff - 1e-9]
    return min(fits, key=lambda k: cutoffs[k]) if fits else None


def resolve_sources(name: str, spec: str | list[str], split: str, cutoff: float,
                    need_edges: bool) -> SourceSizes:
    """The shards of dataset `name` for `split`, with per-record atoms (and edges at `cutoff`)."""
    urls = _expand(spec)
    digests: dict[str, str | None] = {}
    if urls is None:
        try:
            manifest = read_manifest(spec)
        except OSError as exc:
            raise FileNotFoundError(f"dataset {name!r}: no shard manifest at {spec} ({exc})") from exc
        shards = manifest["shards"].get(split)
        if not shards:
            raise ValueError(f"dataset {name!r}: {manifest['base']} has no {split!r} shards "
                             f"(splits: {sorted(k for k, v in manifest['shards'].items() if v)})")
        urls = [shard_location(manifest["base"], s["file"]) for s in shards]
        digests = {s["file"]: s.get("sha256") for s in shards}
    else:
        manifest = _manifest_next_to(urls[0])
    if manifest is not None:
        sizes = read_sizes(manifest)
        column = edge_column(manifest, cutoff)
        if need_edges and column is None:
            raise ValueError(f"dataset {name!r}: edge counts stored for cutoffs "
                             f"{manifest['sizes'].get('edge_cutoffs')} Å, none >= the loader's {cutoff} Å; "
                             "re-shard with --edge-cutoffs or drop max_edges")
        files = [_file_name(u) for u in urls]
        missing = [f for f in files if f not in sizes]
        if not missing:
            # int16 where it holds (every real crystal): the plan keeps these for the whole run
            n_atoms = tuple(narrowest(sizes[f]["n_atoms"]) for f in files)
            n_edges = None if column is None or not need_edges else tuple(
                sizes[f]["n_edges"][:, column].astype(np.int32) for f in files)
            if not digests:  # tar URLs listed by hand: the manifest beside them has their sha256
                digests = {e["file"]: e.get("sha256") for es in manifest["shards"].values() for e in es}
            return SourceSizes(name, tuple(urls), n_atoms, n_edges, tuple(digests.get(f) for f in files))
        log.warning("dataset %r: shards %s are not in the manifest next to them; counting them", name, missing[:3])
    if need_edges:
        raise ValueError(f"dataset {name!r}: max_edges needs a manifest with edge counts for its shards")
    log.warning("dataset %r: no manifest for %d shard URL(s); reading them once to count records", name, len(urls))
    return SourceSizes(name, tuple(urls), tuple(scan_shard(u) for u in urls), None)


def _file_name(url: str) -> str:
    return posixpath.basename(url) if "://" in url else Path(url).name


def _manifest_next_to(url: str) -> dict | None:
    base = posixpath.dirname(url) if "://" in url else str(Path(url).parent)
    try:
        return read_manifest(base)
    except (OSError, ValueError) as exc:
        log.debug("no manifest next to %s: %s", url, exc)
        return None


def scan_shard(url: str) -> np.ndarray:
    """[n_records] atoms of each record of one shard, by reading it (no manifest)."""
    sizes = []
    try:
        for sample in tarfile_samples([{"url": url}]):
            sizes.append(len(decode_record(sample).numbers))
    except Exception as exc:  # noqa: BLE001 -- a corrupt shard counts what it has
        log.warning("shard %s is unreadable after %d records (%s: %s)", url, len(sizes), type(exc).__name__, exc)
    return np.asarray(sizes, dtype=np.int64)
