"""JARVIS `Atoms` dict reader: the mlearn elemental sets as ALIGNN ships them (`id_prop.json.gz`).

Each record: `{"jid", "atoms": {"lattice_mat" (Å rows), "coords", "elements", "cartesian"},
"total_energy", "forces", "stresses"}` in a JSON list (optionally gzipped).

Units, measured on `../shared/data/mlearn/{Cu,Ge,Li,Mo,Ni,Si}` (the data README warns to check):
- `total_energy` is **eV per atom**, not per cell: it does not grow with the atom count (its
  correlation with n_atoms is -0.05 for Cu, 6-108 atoms), and its minima are the PBE ground-state
  energies per atom of these elements (Si -5.43, Mo -10.85, Ge -4.49, Ni -5.78, Li -1.90, Cu -4.10;
  medians -5.29, -10.67, -4.41, -5.71, -1.84, -4.05 for the MD/strained frames). It is multiplied
  by n_atoms to give the canonical total `energy` (eV).
- `forces` are eV/Å (they match the ColabFit copy of mlearn Cu to 1e-7).
- `stresses` are 6-vectors in **kbar with the VASP sign** (positive = compressive): over pairs of
  frames related by a small homogeneous strain (same fractional coordinates, |ε| ≤ 1.5%),
  n_atoms·Δe / (V σ:Δε) has median -6.8e-4 (Cu, 387 pairs) and -6.3e-4 (Ni, 419 pairs), against
  -1/1602 = -6.24e-4 expected for kbar, compressive (GPa would give 10x smaller, eV/Å^3 1600x).
  Converted to GPa (x0.1) with ASE's sign (negated).
- The order of the three shear entries differs between elements (two generations of the data):
  in frames whose cell is sheared in one plane only, the largest shear entry identifies it:
  Cu, Mo, Ni are (xx, yy, zz, xy, xz, yz) (e.g. Ni: yz shear -> entry 5 in 23 of 25 frames,
  xy -> 3 in 22/23, xz -> 4 in 19/21); Ge, Si, Li are VASP's (xx, yy, zz, xy, yz, xz)
  (Ge: yz -> 4 in 11/14, xz -> 5 in 11/11, xy -> 3 in 12/12). `MLEARN_VOIGT_ORDER` holds this;
  an unknown source uses VASP's order (option `voigt_order` overrides).
Output: `energy` (eV, total), `forces` `[n_atoms, 3]` eV/Å, `stress` `[3, 3]` GPa (ASE sign).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from foundation.data.crystal import Crystal
from foundation.data.readers.ase_labels import LabelConvention, stress_to_gpa
from foundation.data.records import Reject

__all__ = ["read_jarvis", "jarvis_atoms_to_crystal", "MLEARN_VOIGT_ORDER"]

VASP_ORDER = "xx yy zz xy yz xz"
MLEARN_VOIGT_ORDER = {
    "Cu": "xx yy zz xy xz yz", "Mo": "xx yy zz xy xz yz", "Ni": "xx yy zz xy xz yz",
    "Ge": VASP_ORDER, "Si": VASP_ORDER, "Li": VASP_ORDER,
}


def _open_json(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def jarvis_atoms_to_crystal(atoms: dict, targets: dict, id: str, source: str) -> Crystal:
    """JARVIS `Atoms` dict (`lattice_mat` Å rows, `coords`, `elements`, `cartesian`) -> Crystal."""
    cell = np.asarray(atoms["lattice_mat"], dtype=np.float64).reshape(3, 3)  # [3, 3] Å rows
    coords = np.asarray(atoms["coords"], dtype=np.float64).reshape(-1, 3)
    positions = coords if atoms.get("cartesian", False) else coords @ cell  # [n_atoms, 3] Å
    unknown = [el for el in atoms["elements"] if el not in atomic_numbers]
    if unknown:
        raise ValueError(f"unknown element symbols {sorted(set(unknown))}")
    numbers = [atomic_numbers[el] for el in atoms["elements"]]
    return Crystal(numbers, positions, cell, pbc=True, targets=targets, id=id, source=source)


def _labels(record: dict, n_atoms: int, convention: LabelConvention) -> dict:
    targets: dict = {}
    if record.get("total_energy") is not None:
        energy = float(record["total_energy"])
        if not np.isfinite(energy):
            raise ValueError(f"total_energy is not finite ({energy})")
        targets["energy"] = energy * n_atoms if convention.energy == "per_atom" else energy
    if record.get("forces") is not None:
        forces = np.asarray(record["forces"], dtype=np.float64)
        if forces.shape != (n_atoms, 3) or not np.all(np.isfinite(forces)):
            raise ValueError(
                f"forces have shape {forces.shape} (expected ({n_atoms}, 3)) or are not finite"
            )
        targets["forces"] = forces  # [n_atoms, 3] eV/Å
    if record.get("stresses") is not None:
        stress = stress_to_gpa(record["stresses"], convention)  # [3, 3] GPa
        if not np.all(np.isfinite(stress)):
            raise ValueError("stresses are not finite")
        targets["stress"] = stress
    return targets


def read_jarvis(path, source: str | None = None, **options) -> Iterator[Crystal | Reject]:
    """Read a JARVIS/mlearn `id_prop.json(.gz)` list as `Crystal`s (or `Reject`s).

    Args:
        path: the JSON (or gzipped JSON) file holding a list of records.
        source: default "mlearn_<El>" with <El> the parent folder's name (e.g. "mlearn_Cu").
        options: `energy` ("per_atom" default, or "total"), `stress_unit` ("kbar" default),
            `stress_sign` ("compressive" default), `voigt_order` (default from
            `MLEARN_VOIGT_ORDER` by folder name, else VASP's).
    Ids: the record's `jid`, else its position `#<index>`.
    """
    path = Path(path)
    element = path.parent.name
    source = source or f"mlearn_{element}"
    unknown = set(options) - {"energy", "stress_unit", "stress_sign", "voigt_order"}
    if unknown:
        raise ValueError(f"read_jarvis: unknown options {sorted(unknown)}")
    convention = LabelConvention(
        energy=options.get("energy", "per_atom"),
        stress_unit=options.get("stress_unit", "kbar"),
        stress_sign=options.get("stress_sign", "compressive"),
        voigt_order=options.get("voigt_order", MLEARN_VOIGT_ORDER.get(element, VASP_ORDER)),
    )
    records = _open_json(path)
    if isinstance(records, dict):  # a single record, or {"id": record}
        records = [records] if "atoms" in records else list(records.values())
    for index, record in enumerate(records):
        record_id = f"#{index}"
        try:
            record_id = str(record.get("jid", record.get("id", record_id)))
            atoms = record["atoms"]
            n_atoms = len(atoms["elements"])
            yield jarvis_atoms_to_crystal(
                atoms, _labels(record, n_atoms, convention), record_id, source
            )
        except Exception as error:  # one bad record must not end the file
            yield Reject(record_id, source, f"{type(error).__name__}: {error}", str(path))
