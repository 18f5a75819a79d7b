"""Raw NOMAD archive entries (JSON lines or a JSON list), SI units converted to eV and Å.

Layout (inspected in `../shared/data/nomad/entries.jsonl.gz`, 200 entries): the structure that
was computed is `properties.structures.structure_original` (`lattice_vectors` rows and
`cartesian_site_positions` in metres, `species_at_sites` symbols, `dimension_types` 1 = periodic
per direction); `structure_primitive`/`structure_conventional` are symmetrised copies NOMAD adds
and do not match the energy's atom count. Energies are in joules: `energies.total.value` ->
`energy` (eV, total of the cell), `energies.fermi` -> `efermi` (eV), the band gap of
`properties.electronic.band_structure_electronic.band_gap` -> `band_gap` (eV; the smallest over
spin channels). Conversions use the exact SI constants of `scipy.constants` (`eV` = 1.602176634e-19
J, `angstrom` = 1e-10 m); the entries' own `relative_energy + reference_energy` (eV) agree with
`energies.total.value / e` to about 1e-8 relative (measured; 2.5e-7 eV on -20.8 eV).

Id: `entry_id` when the entry has one (NOMAD's archive id); the sample's entries carry only
`material.material_id`, shared by up to several calculations, so the id is then
`"<material_id>#<record index>"`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import constants
from ase.data import atomic_numbers

from foundation.data.crystal import Crystal
from foundation.data.readers._common import convert_records, iter_json_records, put, to_float
from foundation.data.records import Reject

__all__ = ["read_nomad", "nomad_crystal"]


def _joules_to_ev(value, name: str) -> float | None:
    number = to_float(value, name)
    return None if number is None else number / constants.eV


def _band_gap_ev(record: dict) -> float | None:
    electronic = record.get("properties", {}).get("electronic", {})
    gaps = electronic.get("band_structure_electronic", {}).get("band_gap") or []
    values = [_joules_to_ev(g.get("value"), "band_gap") for g in gaps]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def nomad_crystal(record: dict, id: str, source: str, structure: str = "structure_original") -> Crystal:
    """One archive entry -> `Crystal` in Å and eV."""
    struct = record["properties"]["structures"][structure]
    cell = np.asarray(struct["lattice_vectors"], dtype=np.float64).reshape(3, 3)
    cell = cell / constants.angstrom  # [3, 3] Å rows
    positions = np.asarray(struct["cartesian_site_positions"], dtype=np.float64).reshape(-1, 3)
    positions = positions / constants.angstrom  # [n_atoms, 3] Å
    symbols = struct["species_at_sites"]
    unknown = [s for s in symbols if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"unknown element(s) {unknown[:3]}")
    pbc = np.asarray(struct.get("dimension_types", (1, 1, 1)), dtype=np.int64).reshape(3) == 1
    energies = record.get("energies", {})
    targets: dict = {}
    put(targets, "energy", _joules_to_ev(energies.get("total", {}).get("value"), "energies.total"))
    put(targets, "efermi", _joules_to_ev(energies.get("fermi"), "energies.fermi"))
    put(targets, "band_gap", _band_gap_ev(record))
    return Crystal(numbers=[atomic_numbers[s] for s in symbols], positions=positions, cell=cell,
                   pbc=pbc, targets=targets, id=id, source=source)


def _record_id(index: int, record: dict) -> str:
    if record.get("entry_id"):
        return str(record["entry_id"])
    return f"{record['material']['material_id']}#{index}"


def read_nomad(path, source: str = "nomad", structure: str = "structure_original",
               require: Sequence[str] = (), **options) -> Iterator[Crystal | Reject]:
    """Stream NOMAD archive entries as `Crystal`s (or `Reject`s).

    Args:
        structure: which of `properties.structures` to use (the computed one by default).
    """
    if options:
        raise ValueError(f"read_nomad: unknown options {sorted(options)}")
    path = Path(path)
    yield from convert_records(
        iter_json_records(path),
        lambda index, record: nomad_crystal(record, _record_id(index, record), source, structure),
        _record_id, source, path, require,
    )
