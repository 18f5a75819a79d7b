"""The shard format: one record as webdataset tar members, the manifest, and where shards live.

A record with key K (a zero-padded running number within its split; the record's own id is in
`meta.json`, because webdataset keys may not hold dots or slashes) is the tar members

    K.numbers.npy    [n_atoms] int16            atomic numbers
    K.positions.npy  [n_atoms, 3] float64 Å     Cartesian positions
    K.cell.npy       [3, 3] float64 Å           lattice vectors as rows
    K.pbc.npy        [3] bool                   periodicity per direction
    K.meta.json      {"id", "source", "targets": {scalar labels}}
    K.t.<name>.npy   array-valued labels: forces [n_atoms, 3] eV/Å, stress [3, 3] GPa, ...
    K.a.<name>.npy   per-atom arrays that are not labels: tags [n_atoms] int64, fixed [n_atoms] bool

Only `.npy` (read with allow_pickle=False) and `.json`: nothing in a shard can run code.
Floats are stored as float64, so a round trip is exact.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.tariterators import tarfile_samples

from ..crystal import Crystal
from .remote import fetch

__all__ = ["FORMAT", "VERSION", "encode_record", "decode_record", "read_manifest", "read_split", "open_url",
           "is_url", "shard_location"]

FORMAT = "foundation-shards"
VERSION = 1
SPLITS = ("train", "val", "test")
_SUFFIXES = ("numbers.npy", "positions.npy", "cell.npy", "pbc.npy", "meta.json")


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return stream.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def encode_record(crystal: Crystal, key: str) -> dict[str, Any]:
    """The webdataset sample (member suffix -> bytes) of one validated crystal."""
    scalars, arrays = {}, {}
    for name, value in crystal.targets.items():
        if np.ndim(value) == 0:
            scalars[name] = value.item() if isinstance(value, np.generic) else value
        else:
            arrays[name] = np.asarray(value, dtype=np.float64)
    sample = {
        "__key__": key,
        "numbers.npy": _npy(crystal.numbers.astype(np.int16)),
        "positions.npy": _npy(crystal.positions),
        "cell.npy": _npy(crystal.cell),
        "pbc.npy": _npy(crystal.pbc.astype(bool)),
        "meta.json": json.dumps({"id": crystal.id, "source": crystal.source, "targets": scalars},
                                allow_nan=False).encode(),
    }
    for name, value in arrays.items():
        sample[f"t.{name}.npy"] = _npy(value)
    for name, value in crystal.arrays.items():
        sample[f"a.{name}.npy"] = _npy(np.asarray(value))
    return sample


def decode_record(sample: dict[str, Any]) -> Crystal:
    """The inverse of `encode_record` (keys without the leading dot, as webdataset groups them).
    Raises ValueError naming the sample when a member is missing or malformed."""
    key = sample.get("__key__", "?")
    missing = [s for s in _SUFFIXES if s not in sample]
    if missing:
        raise ValueError(f"shard record {key!r} lacks member(s) {missing} (from {sample.get('__url__', '?')})")
    meta = json.loads(sample["meta.json"])
    targets: dict[str, Any] = dict(meta.get("targets", {}))
    arrays: dict[str, np.ndarray] = {}
    for suffix, data in sample.items():
        if suffix.startswith("t.") and suffix.endswith(".npy"):
            targets[suffix[2:-4]] = _load_npy(data)
        elif suffix.startswith("a.") and suffix.endswith(".npy"):
            arrays[suffix[2:-4]] = _load_npy(data)
    return Crystal(
        numbers=_load_npy(sample["numbers.npy"]),
        positions=_load_npy(sample["positions.npy"]),
        cell=_load_npy(sample["cell.npy"]),
        pbc=_load_npy(sample["pbc.npy"]),
        targets=targets,
        id=meta["id"],
        source=meta["source"],
        arrays=arrays,
    )


# -- locations: a local directory or any URL webdataset's gopen accepts --------------------------
def is_url(text: str) -> bool:
    return "://" in text or text.startswith("pipe:")


def open_url(url: str):
    """A binary stream for a local path, file://, http(s)://, s3:// (fsspec) and pipe: URLs, fetched
    with retries (remote.py); an unreachable one raises remote.ShardUnavailable (an OSError)."""
    if not is_url(url):
        return open(url, "rb")
    return fetch(url)


def shard_location(base: str, name: str) -> str:
    """`name` next to `base` (a directory path or URL)."""
    if is_url(base):
        return posixpath.join(base.rstrip("/"), name)
    return str(Path(base) / name)


def read_manifest(location: str | Path) -> dict[str, Any]:
    """The manifest of a shard directory (path or URL; `.../manifest.json` itself also works).

    Element references come back with integer keys {target: {Z: ref}}; `base` holds where the
    shards are (a directory or URL prefix)."""
    location = str(location)
    base = location[: -len("/manifest.json")] if location.endswith("/manifest.json") else location
    if not is_url(base) and Path(base).name == "manifest.json":
        base = str(Path(base).parent)
    with open_url(shard_location(base, "manifest.json")) as stream:
        manifest = json.loads(stream.read())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{base}: manifest.json is not a {FORMAT} manifest (format={manifest.get('format')!r})")
    if int(manifest.get("version", 0)) > VERSION:
        raise ValueError(f"{base}: shard format version {manifest['version']} is newer than this code ({VERSION})")
    manifest["element_references"] = {
        target: {int(z): float(v) for z, v in refs.items()}
        for target, refs in manifest.get("element_references", {}).items()
    }
    manifest["base"] = base
    return manifest


def read_split(location: str | Path, split: str) -> Iterator[Crystal]:
    """Every record of `split` ("train", "val" or "test") of a shard directory or URL, decoded, in
    the manifest's shard order: a split read whole (evaluation, deduplication, benchmarks), where
    training streams it (`build_loader`)."""
    manifest = read_manifest(location)
    if split not in manifest["shards"]:
        raise ValueError(f"{manifest['base']}: no split {split!r} (the manifest has {sorted(manifest['shards'])})")
    for entry in manifest["shards"][split]:
        for sample in tarfile_samples([{"url": shard_location(manifest["base"], entry["file"])}]):
            yield decode_record(sample)


def read_sizes(manifest: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per-record sizes of every shard: {shard file: {"n_atoms": [n], "n_edges": [n, n_cutoffs]}}."""
    info = manifest["sizes"]
    with open_url(shard_location(manifest["base"], info["file"])) as stream:
        data = np.load(io.BytesIO(stream.read()), allow_pickle=False)
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in data.files:
            shard, field = name.rsplit("/", 1)
            out.setdefault(shard, {})[field] = data[name]
    return out
