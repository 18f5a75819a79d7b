"""OC20/OC22 LMDB reader (and a small writer for tests), without torch_geometric and without trust.

Layout of the public releases (fairchem `LmdbDataset`): one LMDB file per split chunk, opened with
`subdir=False` (`data.lmdb` + `data.lmdb-lock`); under the ASCII keys "0", "1", ... each value is
`pickle.dumps(data)` of one torch_geometric `Data`, and the key "length" holds the pickled record
count. Every value is unpickled by `safe_unpickle.RestrictedUnpickler` (an allow-list); a record
naming any other global raises `RefusedGlobal` naming the file and key: a file carrying code is
hostile, not merely damaged, so reading stops. A truncated or otherwise corrupt record becomes a
`Reject` and the next record is read.

Attributes of a record (OC22 S2EF, checked on `../shared/data/oc22/*.pkl`; OC20 S2EF/IS2RE the same):
    pos `[n, 3]` float32 Å, cell `[1, 3, 3]` float32 Å rows, atomic_numbers `[n]` float32,
    natoms int, tags `[n]` int64 (0 subsurface, 1 surface, 2 adsorbate), fixed `[n]` float32 0/1,
    force `[n, 3]` eV/Å, y float eV, sid int (system id), fid int (frame id); OC22 adds `oc22` = 1,
    `nads`, `id` ("0_0"); IS2RE adds y_init, y_relaxed, pos_relaxed.
Mapping: positions, cell, numbers, pbc all True (the DFT cells are periodic, with vacuum along z),
`arrays["tags"]`, `arrays["fixed"]` (bool), `targets["forces"]`, and `y`:
- OC22 records (`oc22` = 1, or `source="oc22"`): `y` is the DFT total energy -> `energy` (eV).
- OC20 records: the public OC20 LMDBs store *adsorption* energies in `y` (total energy minus the
  clean slab and gas-phase references; fairchem's MODELS.md says "All OC20 models are trained on
  adsorption energies"), which is not the canonical total `energy`; it goes to
  `adsorption_energy` unless `y_target="energy"` is passed (for LMDBs built from total energies).
Ids: "sid:fid" (S2EF), "sid" (IS2RE), else "<file stem>:<key>". Source: `source`, else "oc22" for
records flagged `oc22`, else "oc20".
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from foundation.data.crystal import Crystal
from foundation.data.readers.safe_unpickle import (
    Data,
    DataEdgeAttr,
    DataTensorAttr,
    GlobalStorage,
    PygStandIn,
    RefusedGlobal,
    data_attributes,
    safe_loads,
)
from foundation.data.records import Reject

__all__ = ["read_oc20_lmdb", "write_oc20_lmdb", "record_to_crystal", "dumps_record",
           "make_record"]

_LENGTH_KEY = b"length"


def _array(value, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"record has no {name!r}")
    return np.asarray(value)  # torch CPU tensors and numpy arrays alike


def _scalar(value) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(()))


def _record_id(attrs: dict, fallback: str) -> str:
    sid, fid = attrs.get("sid"), attrs.get("fid")
    if sid is None:
        return fallback
    sid = str(np.asarray(sid).reshape(()).item())
    return sid if fid is None else f"{sid}:{np.asarray(fid).reshape(()).item()}"


def record_to_crystal(attrs: dict, id: str, source: str, y_target: str,
                      keep: tuple[str, ...] = ()) -> Crystal:
    """The attribute dict of one `Data` record -> `Crystal` (ValueError naming what is wrong)."""
    positions = _array(attrs.get("pos"), "pos").astype(np.float64).reshape(-1, 3)  # [n, 3] Å
    n_atoms = len(positions)
    cell = _array(attrs.get("cell"), "cell").astype(np.float64)
    if cell.size != 9:
        raise ValueError(f"cell has shape {cell.shape}, expected (1, 3, 3)")
    raw_numbers = _array(attrs.get("atomic_numbers"), "atomic_numbers").reshape(-1)  # float32 in OC20
    numbers = np.rint(raw_numbers).astype(np.int64)
    if raw_numbers.shape != (n_atoms,) or np.any(numbers != raw_numbers) or np.any(numbers < 1):
        raise ValueError(f"atomic_numbers {raw_numbers.shape} are not {n_atoms} positive integers")
    if attrs.get("natoms") is not None and int(_scalar(attrs["natoms"])) != n_atoms:
        raise ValueError(f"natoms = {int(_scalar(attrs['natoms']))} but pos has {n_atoms} rows")
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in (("tags", np.int64), ("fixed", bool)):
        if attrs.get(name) is not None:
            values = np.asarray(attrs[name]).reshape(-1)
            if values.shape != (n_atoms,):
                raise ValueError(f"{name} has {values.size} entries for {n_atoms} atoms")
            arrays[name] = values.astype(dtype)
    targets: dict = {}
    if attrs.get("y") is not None:
        targets[y_target] = _scalar(attrs["y"])  # eV
    if attrs.get("force") is not None:
        forces = np.asarray(attrs["force"], dtype=np.float64)
        if forces.shape != (n_atoms, 3):
            raise ValueError(f"force has shape {forces.shape}, expected ({n_atoms}, 3)")
        targets["forces"] = forces  # [n_atoms, 3] eV/Å
    for name in keep:
        if attrs.get(name) is not None:
            targets[name] = _scalar(attrs[name])
    for name, value in targets.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} is not finite")
    return Crystal(numbers, positions, cell.reshape(3, 3), pbc=True, targets=targets, id=id,
                   source=source, arrays=arrays)


def _ordered_keys(txn) -> tuple[list[bytes], list[bytes]]:
    """(record keys present, in numeric order; keys that `length` promises but are absent)."""
    keys = [key for key, _ in txn.cursor() if key != _LENGTH_KEY]
    keys.sort(key=lambda k: (0, int(k)) if k.isdigit() else (1, k))
    raw_length = txn.get(_LENGTH_KEY)
    if raw_length is None:
        return keys, []
    length = int(safe_loads(raw_length))
    present = set(keys)
    missing = [str(i).encode("ascii") for i in range(length) if str(i).encode("ascii") not in present]
    return keys, missing


def _read_file(path: Path, source: str | None, y_target: str | None,
               keep: tuple[str, ...]) -> Iterator[Crystal | Reject]:
    import lmdb

    fallback_source = source or "oc20"
    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=1)
    except lmdb.Error as error:
        yield Reject(path.stem, fallback_source, f"cannot open LMDB: {error}", str(path))
        return
    with env, env.begin() as txn:
        try:
            keys, missing = _ordered_keys(txn)
        except RefusedGlobal as error:
            raise RefusedGlobal(f"{path} key 'length': {error}") from None
        for key in missing:
            yield Reject(f"{path.stem}:{key.decode()}", fallback_source,
                         f"key {key.decode()} is below the stored length but absent", str(path))
        for key in keys:
            name = key.decode("ascii", errors="replace")
            record_id, record_source = f"{path.stem}:{name}", fallback_source
            try:
                attrs = data_attributes(safe_loads(txn.get(key)))
                record_source = source or ("oc22" if attrs.get("oc22") else "oc20")
                target = y_target or ("energy" if record_source == "oc22" else "adsorption_energy")
                record_id = _record_id(attrs, record_id)
                yield record_to_crystal(attrs, record_id, record_source, target, keep)
            except RefusedGlobal as error:
                raise RefusedGlobal(f"{path} record key {name!r}: {error}") from None
            except Exception as error:  # a corrupt record must not end the file
                yield Reject(record_id, record_source, f"{type(error).__name__}: {error}",
                             str(path))


def read_oc20_lmdb(path, source: str | None = None, y_target: str | None = None,
                   keep: Iterable[str] = ()) -> Iterator[Crystal | Reject]:
    """Read one OC20/OC22 `.lmdb` file, or every `*.lmdb` in a directory (sorted), safely.

    Args:
        path: an LMDB file (`subdir=False` layout) or a directory of them.
        source: dataset name for every record; default "oc22" for records flagged `oc22`, else "oc20".
        y_target: target name for `y`; default "energy" for OC22, "adsorption_energy" for OC20
            (see the module docstring).
        keep: other scalar attributes to keep as targets under their own names (e.g. "y_relaxed").
    Raises:
        RefusedGlobal: a record names a global outside the allow-list (message names file and key).
    """
    path = Path(path)
    keep = tuple(keep)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".lmdb")
        if not files:
            raise ValueError(f"{path}: directory holds no .lmdb files")
    else:
        files = [path]
    for file in files:
        yield from _read_file(file, source, y_target, keep)


# ---------------------------------------------------------------------------------- writing
class _NativePickler(pickle._Pickler):
    """Pickles `PygStandIn` classes under their torch_geometric names (the pure-Python pickler is
    the one whose global writer can be overridden; torch_geometric itself is not importable)."""

    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, PygStandIn) and obj.native[0]:
            module, qualname = obj.native
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def make_record(attributes: dict) -> Data:
    """A `Data` stand-in laid out like PyG >= 2 (`_store` GlobalStorage with `_mapping`)."""
    import torch

    mapping = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in attributes.items()}
    record, store = Data(), GlobalStorage()
    store.__dict__.update(_mapping=mapping, _parent=record)
    record.__dict__.update(_edge_attr_cls=DataEdgeAttr, _tensor_attr_cls=DataTensorAttr,
                           _store=store)
    return record


def dumps_record(record) -> bytes:
    """Pickle a `Data` stand-in (or an attribute dict) as the release does: `pickle.dumps(data)`."""
    import io

    if isinstance(record, dict):
        record = make_record(record)
    buffer = io.BytesIO()
    _NativePickler(buffer, protocol=4).dump(record)
    return buffer.getvalue()


def write_oc20_lmdb(path, records: Iterable) -> int:
    """Write records (pickled bytes, stored as given, or `Data` stand-ins / attribute dicts)
    under keys "0".."n-1" plus "length", `subdir=False` as OC20 ships. Returns the count."""
    import lmdb

    values = [r if isinstance(r, bytes) else dumps_record(r) for r in records]
    map_size = 4 * sum(len(v) for v in values) + (16 << 20)
    env = lmdb.open(str(path), map_size=map_size, subdir=False, meminit=False, lock=True)
    with env, env.begin(write=True) as txn:
        for index, value in enumerate(values):
            txn.put(str(index).encode("ascii"), value)
        txn.put(_LENGTH_KEY, pickle.dumps(len(values), protocol=4))
    return len(values)
