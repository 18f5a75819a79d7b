"""OC20/OC22 LMDB reader and writer (the S2EF/IS2RE layout of the public releases).

Layout: one LMDB environment per `.lmdb` file (`subdir=False`), keys `b"0"`, `b"1"`, ... each
holding one pickled torch_geometric `Data` record, plus a `b"length"` key (a pickled int). Every
record is unpickled through `safe_unpickle.RestrictedUnpickler` (an allow-list, never a plain
`pickle.load`), so neither torch_geometric nor trust in the file is needed. A record the
allow-list refuses, or one that is truncated or malformed, becomes a `Reject` naming the key.

Record fields -> `Crystal`: `pos` `[n_atoms, 3]` Å, `cell` `[1, 3, 3]` Å rows (pbc all True),
`atomic_numbers`, `tags` (0 subsurface, 1 surface, 2 adsorbate) and `fixed` (1 = fixed) ->
`arrays`, `y` -> `energy` (eV, total; OC22 `y` is the total DFT energy, OC20 S2EF `y` is the
adsorption-referenced energy as released), `force` -> `forces` (eV/Å), id `"<sid>:<fid>"`
(or `sid`, or the key, when `fid` is absent).

Writing (`write_oc20_lmdb`) stores given record bytes under `b"0"`... and `b"length"`, as the
releases do. `dumps_record` re-pickles a safely loaded record as the releases store it: the stand-in
classes are written under their torch_geometric class paths (`torch_geometric.data.data.Data`, ...)
by a pickler whose `save_global` names `PygStandIn.native`, and tensors pickle as torch pickles
them (`_rebuild_tensor_v2` + `_load_from_bytes`), so the bytes hold the same globals as the
originals and any PyG-based loader can read them.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from foundation.data.crystal import Crystal
from foundation.data.readers.safe_unpickle import PygStandIn, data_attributes, safe_loads
from foundation.data.records import Reject

__all__ = ["read_oc20_lmdb", "write_oc20_lmdb", "dumps_record", "oc22_pkl_to_lmdb",
           "record_to_crystal"]


def _array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if value is None:
        raise ValueError(f"field {name!r} is missing")
    return np.asarray(value)


def _scalar(value, name: str):
    array = _array(value, name).reshape(-1)
    if array.size != 1:
        raise ValueError(f"field {name!r} has {array.size} values, expected one")
    return array[0].item()


def record_to_crystal(attributes: dict, key: str, source: str) -> Crystal:
    """One record's attribute dict -> `Crystal` (ValueError naming the field on bad content)."""
    positions = _array(attributes.get("pos"), "pos").astype(np.float64).reshape(-1, 3)
    numbers = _array(attributes.get("atomic_numbers"), "atomic_numbers").astype(np.int64)
    numbers = numbers.reshape(-1)
    cell = _array(attributes.get("cell"), "cell").astype(np.float64).reshape(3, 3)  # from [1, 3, 3]
    n_atoms = len(numbers)
    targets: dict = {}
    if attributes.get("y") is not None:
        energy = float(_scalar(attributes["y"], "y"))
        if not np.isfinite(energy):
            raise ValueError(f"y is not finite ({energy})")
        targets["energy"] = energy  # eV
    if attributes.get("force") is not None:
        forces = _array(attributes["force"], "force").astype(np.float64)
        if forces.shape != (n_atoms, 3):
            raise ValueError(f"force has shape {forces.shape}, expected ({n_atoms}, 3)")
        targets["forces"] = forces  # [n_atoms, 3] eV/Å
    arrays = {}
    if attributes.get("tags") is not None:
        arrays["tags"] = _array(attributes["tags"], "tags").astype(np.int64).reshape(n_atoms)
    if attributes.get("fixed") is not None:
        arrays["fixed"] = _array(attributes["fixed"], "fixed").astype(bool).reshape(n_atoms)
    sid, fid = attributes.get("sid"), attributes.get("fid")
    if sid is not None:
        sid = _scalar(sid, "sid")
        key = f"{sid}:{_scalar(fid, 'fid')}" if fid is not None else str(sid)
    return Crystal(numbers, positions, cell, pbc=True, targets=targets, id=key, source=source,
                   arrays=arrays)


def _lmdb_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.lmdb"))
        if not files:
            raise ValueError(f"{path}: directory holds no .lmdb files")
        return files
    return [path]


def _read_one(path: Path, source: str) -> Iterator[Crystal | Reject]:
    import lmdb

    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False,
                    meminit=False, max_readers=1)
    try:
        with env.begin() as txn:
            for raw_key, value in txn.cursor():
                key = raw_key.decode("ascii", errors="replace")
                if key == "length":
                    continue  # the record count, not a record
                where = f"{path.name}[{key}]"
                try:
                    record = data_attributes(safe_loads(value))
                    yield record_to_crystal(record, key, source)
                except Exception as error:  # refused, truncated or malformed: one Reject
                    yield Reject(key, source, f"record {where}: {type(error).__name__}: {error}",
                                 str(path))
    finally:
        env.close()


def read_oc20_lmdb(path, source: str | None = "oc20", **options) -> Iterator[Crystal | Reject]:
    """Read one OC20/OC22 `.lmdb` file, or every `*.lmdb` in a directory, as `Crystal`s / `Reject`s.

    Records are visited in LMDB key order (byte order of the keys: "0", "1", "10", ...).
    `source`: "oc20" (default) or "oc22" or any dataset name.
    """
    if options:
        raise ValueError(f"read_oc20_lmdb: unknown options {sorted(options)}")
    source = source or "oc20"
    for file in _lmdb_files(Path(path)):
        yield from _read_one(file, source)


class _NativePickler(pickle._Pickler):
    """Pure-Python pickler that writes the stand-in classes under their torch_geometric paths."""

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, PygStandIn) and obj.native[0]:
            module, qualname = obj.native
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dumps_record(record) -> bytes:
    """Pickle a safely loaded record (a `Data` stand-in) as the releases store it (module doc)."""
    import io

    buffer = io.BytesIO()
    _NativePickler(buffer, protocol=4).dump(record)
    return buffer.getvalue()


def write_oc20_lmdb(path, records: list[bytes]) -> Path:
    """Write pickled records under keys `b"0"`..., their count under `b"length"` (subdir=False)."""
    import lmdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(1 << 20, 4 * sum(len(r) for r in records) + (1 << 20))
    env = lmdb.open(str(path), subdir=False, map_size=size, meminit=False, lock=False)
    try:
        with env.begin(write=True) as txn:
            for index, record in enumerate(records):
                txn.put(str(index).encode("ascii"), bytes(record))
            txn.put(b"length", pickle.dumps(len(records), protocol=4))
        env.sync()
    finally:
        env.close()
    return path


def oc22_pkl_to_lmdb(pkl_path, lmdb_path) -> Path:
    """Build an OC22 LMDB from a pickled list of records (`../shared/data/oc22/*.pkl`).

    The list is loaded through the restricted unpickler and each record re-pickled with
    `dumps_record`, so the LMDB holds what the public release holds: one `Data` pickle per key.
    """
    records = safe_loads(Path(pkl_path).read_bytes())
    if not isinstance(records, list):
        records = [records]
    return write_oc20_lmdb(lmdb_path, [dumps_record(record) for record in records])
