"""OQMD REST API `formationenergy` records (JSON lines, a JSON list, or the API's `{"data": [...]}`).

`unit_cell` holds the lattice vectors as rows (Å); each `sites` entry is `"El @ x y z"` with x, y,
z fractional in `unit_cell`. Labels: `delta_e` -> `formation_energy_per_atom` (eV/atom),
`band_gap` (eV), `stability` (eV/atom above the hull) -> `e_above_hull`.
Id: `entry_id` (one formation energy per entry in the API's default `fit=standard`);
`id_field="formationenergy_id"` when a file holds several fits of one entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from foundation.data.crystal import Crystal
from foundation.data.readers._common import convert_records, iter_json_records, put, to_float
from foundation.data.records import Reject

__all__ = ["read_oqmd", "parse_oqmd_sites"]

OQMD_FIELDS = {"delta_e": "formation_energy_per_atom", "band_gap": "band_gap",
               "stability": "e_above_hull"}


def parse_oqmd_sites(sites: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`["Mn @ 0.75 0.25 0.5", ...]` -> numbers `[n_atoms]`, fractional coordinates `[n_atoms, 3]`."""
    if not sites:
        raise ValueError("record has no sites")
    numbers, frac = [], []
    for site in sites:
        symbol, sep, coords = site.partition("@")
        symbol = symbol.strip()
        if not sep or symbol not in atomic_numbers:
            raise ValueError(f"site {site!r} is not 'El @ x y z' with a known element")
        xyz = [float(x) for x in coords.split()]
        if len(xyz) != 3:
            raise ValueError(f"site {site!r} does not have 3 coordinates")
        numbers.append(atomic_numbers[symbol])
        frac.append(xyz)
    return np.array(numbers, dtype=np.int64), np.array(frac, dtype=np.float64)


def oqmd_crystal(record: dict, id: str, source: str) -> Crystal:
    """One `formationenergy` record -> `Crystal`."""
    cell = np.asarray(record["unit_cell"], dtype=np.float64).reshape(3, 3)  # [3, 3] Å rows
    numbers, frac = parse_oqmd_sites(record["sites"])
    natoms = record.get("natoms")
    if natoms is not None and int(natoms) != len(numbers):
        raise ValueError(f"natoms={natoms} but {len(numbers)} sites")
    targets: dict = {}
    for field, name in OQMD_FIELDS.items():
        put(targets, name, to_float(record.get(field), field))
    return Crystal(numbers=numbers, positions=frac @ cell, cell=cell, pbc=True, targets=targets,
                   id=id, source=source)


def read_oqmd(path, source: str = "oqmd", id_field: str = "entry_id", require: Sequence[str] = (),
              **options) -> Iterator[Crystal | Reject]:
    """Stream OQMD `formationenergy` records as `Crystal`s (or `Reject`s)."""
    if options:
        raise ValueError(f"read_oqmd: unknown options {sorted(options)}")
    path = Path(path)

    def record_id(index: int, record: dict) -> str:
        value = record.get(id_field)
        return str(value) if value is not None else f"#{index}"

    yield from convert_records(
        iter_json_records(path),
        lambda index, record: oqmd_crystal(record, record_id(index, record), source),
        record_id, source, path, require,
    )
