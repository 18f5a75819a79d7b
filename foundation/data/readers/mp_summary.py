"""Materials Project API summary documents (JSON lines, a JSON list, or the API's `{"data": [...]}`).

Each document's `structure` is a pymatgen `Structure.as_dict()`. Labels (as published, eV or eV/atom):
`formation_energy_per_atom`, `band_gap`, `energy_per_atom`, `efermi`, `is_metal`, `is_stable`,
`energy_above_hull` (API name) -> `e_above_hull`, `total_magnetization`.

`energy_per_atom` is MP's *corrected* energy of its GGA/GGA+U/r2SCAN mixing scheme, not one
functional: in the sample (`../shared/data/materials_project/summary.jsonl.gz`) 166 of 200
documents have values near -20 to -70 eV/atom (Ac: -68.6) while `uncorrected_energy_per_atom`
is -4.1; it is kept as published and is not comparable to PBE total energies of other databases.
The sample has no `material_id`, so ids fall back to the record position (`"#17"`).
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
    to_flag,
    to_float,
)
from foundation.data.records import Reject

__all__ = ["read_mp_summary", "MP_FIELDS", "MP_FLAGS"]

# MP API field -> canonical target name (regression labels).
MP_FIELDS = {
    "formation_energy_per_atom": "formation_energy_per_atom",
    "band_gap": "band_gap",
    "energy_per_atom": "energy_per_atom",
    "efermi": "efermi",
    "energy_above_hull": "e_above_hull",
    "e_above_hull": "e_above_hull",
    "total_magnetization": "total_magnetization",
}
MP_FLAGS = {"is_metal": "is_metal", "is_stable": "is_stable"}


def _record_id(index: int, record: dict) -> str:
    return str(record.get("material_id") or f"#{index}")


def mp_summary_crystal(record: dict, id: str, source: str) -> Crystal:
    """One summary document -> `Crystal` with the canonical labels it has."""
    targets: dict = {}
    for field, name in MP_FIELDS.items():
        put(targets, name, to_float(record.get(field), field))
    for field, name in MP_FLAGS.items():
        put(targets, name, to_flag(record.get(field), field))
    return crystal_from_pymatgen_dict(record["structure"], targets, id, source)


def read_mp_summary(path, source: str = "materials_project", require: Sequence[str] = (),
                    **options) -> Iterator[Crystal | Reject]:
    """Stream Materials Project summary documents as `Crystal`s (or `Reject`s).

    Args:
        path: `.jsonl`, `.json` (list or `{"data": [...]}`), optionally `.gz`/`.bz2`/`.xz`.
        source: dataset name written into each `Crystal`.
        require: target names a record must have to be kept.
    """
    if options:
        raise ValueError(f"read_mp_summary: unknown options {sorted(options)}")
    path = Path(path)
    yield from convert_records(
        iter_json_records(path),
        lambda index, record: mp_summary_crystal(record, _record_id(index, record), source),
        _record_id, source, path, require,
    )
