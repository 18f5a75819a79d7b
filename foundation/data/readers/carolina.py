"""Carolina Materials Database entries (JSON lines or a JSON list).

Each entry has CIF cell fields as strings (`_cell_length_a`... `_cell_angle_gamma`, degrees),
`atomic_numbers`, and `cart_coords`, which despite its name holds FRACTIONAL coordinates: in
`../shared/data/carolina/entries.jsonl.gz` every value lies in [0, 1], and the entry's own CIF
symmetry operations (`symmetry_dict`) map these coordinates onto themselves only when read as
fractional (tested). The lattice is built from the six parameters by pymatgen's
`Lattice.from_parameters` (pymatgen's standard orientation). `energy` is the published
formation energy -> `formation_energy_per_atom` (eV/atom).
Id: `origin_file` without `.cif` (e.g. "99"), else the record position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice

from foundation.data.crystal import Crystal
from foundation.data.readers._common import convert_records, iter_json_records, put, to_float
from foundation.data.records import Reject

__all__ = ["read_carolina", "carolina_cell"]

_CELL_FIELDS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
                "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")


def carolina_cell(record: dict) -> np.ndarray:
    """`[3, 3]` Å lattice rows from the CIF parameter strings."""
    values = [to_float(record[name], name) for name in _CELL_FIELDS]
    if any(v is None for v in values):
        raise ValueError("a cell parameter is empty")
    a, b, c, alpha, beta, gamma = values
    if min(a, b, c) <= 0:
        raise ValueError(f"non-positive cell length in {values}")
    return np.asarray(Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix)


def carolina_crystal(record: dict, id: str, source: str) -> Crystal:
    cell = carolina_cell(record)
    frac = np.asarray(record["cart_coords"], dtype=np.float64).reshape(-1, 3)  # fractional
    targets: dict = {}
    put(targets, "formation_energy_per_atom", to_float(record.get("energy"), "energy"))
    return Crystal(numbers=record["atomic_numbers"], positions=frac @ cell, cell=cell, pbc=True,
                   targets=targets, id=id, source=source)


def _record_id(index: int, record: dict) -> str:
    origin = record.get("origin_file")
    return str(origin).removesuffix(".cif") if origin else f"#{index}"


def read_carolina(path, source: str = "carolina", require: Sequence[str] = (),
                  **options) -> Iterator[Crystal | Reject]:
    """Stream Carolina Materials Database entries as `Crystal`s (or `Reject`s)."""
    if options:
        raise ValueError(f"read_carolina: unknown options {sorted(options)}")
    path = Path(path)
    yield from convert_records(
        iter_json_records(path),
        lambda index, record: carolina_crystal(record, _record_id(index, record), source),
        _record_id, source, path, require,
    )
