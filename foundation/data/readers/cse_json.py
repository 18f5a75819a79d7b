"""pymatgen `ComputedStructureEntry` JSON (Alexandria's dumps), optionally .gz/.bz2/.xz.

The document is `{"entries": [entry dict, ...]}` (Alexandria) or a plain list of entry dicts
(`ComputedStructureEntry.as_dict()`), loaded whole. Labels:
- `energy`: the entry's `energy` field, which `as_dict` writes as the *uncorrected* DFT total
  energy (eV, cell); MP-style corrections (`correction`, `energy_adjustments`) are not applied,
  so it is consistent with the raw total energies of other databases.
- `energy_per_atom`: that energy over the atom count.
- from `data` (`CSE_DATA_FIELDS`): `e_form` -> `formation_energy_per_atom`, `band_gap_ind`/
  `band_gap` -> `band_gap`, `band_gap_dir` -> `direct_band_gap`, `e_above_hull`,
  `total_mag` -> `total_magnetization`.
Id: `entry_id`, else `data.mat_id` (Alexandria's "agm..." ids), else the position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._common import (
    convert_records,
    crystal_from_pymatgen_dict,
    iter_json_records,
    put,
    to_float,
)
from foundation.data.records import Reject

__all__ = ["read_cse_json", "CSE_DATA_FIELDS"]

CSE_DATA_FIELDS = {
    "e_form": "formation_energy_per_atom",
    "band_gap": "band_gap",
    "band_gap_ind": "band_gap",
    "band_gap_dir": "direct_band_gap",
    "e_above_hull": "e_above_hull",
    "total_mag": "total_magnetization",
}


def _record_id(index: int, entry: dict) -> str:
    value = entry.get("entry_id") or (entry.get("data") or {}).get("mat_id")
    return str(value) if value else f"#{index}"


def cse_crystal(entry: dict, id: str, source: str) -> Crystal:
    """One `ComputedStructureEntry` dict -> `Crystal`."""
    targets: dict = {}
    for field, name in CSE_DATA_FIELDS.items():
        put(targets, name, to_float((entry.get("data") or {}).get(field), field))
    crystal = crystal_from_pymatgen_dict(entry["structure"], targets, id, source)
    energy = to_float(entry.get("energy"), "energy")
    if energy is not None:
        targets["energy"] = energy
        targets["energy_per_atom"] = energy / crystal.n_atoms
    return crystal


def read_cse_json(path, source: str = "alexandria", require: Sequence[str] = (),
                  **options) -> Iterator[Crystal | Reject]:
    """Read `ComputedStructureEntry` dicts as `Crystal`s (or `Reject`s)."""
    if options:
        raise ValueError(f"read_cse_json: unknown options {sorted(options)}")
    path = Path(path)
    yield from convert_records(
        iter_json_records(path, list_keys=("entries", "data")),
        lambda index, entry: cse_crystal(entry, _record_id(index, entry), source),
        _record_id, source, path, require,
    )
