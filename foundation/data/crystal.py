"""`Crystal`: the one in-memory record every reader yields and every later stage consumes.

Units are canonical everywhere in the project (see `foundation.data.targets`): lengths in Å,
energies in eV (total) or eV/atom (intensive), forces in eV/Å, stresses and moduli in GPa.
pymatgen and ASE are imported by the conversions that use them: importing pymatgen takes about a
second, and the training loop, which only decodes shards, never converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Crystal"]


@dataclass
class Crystal:
    """A periodic (or partly periodic) atomic structure with its labels.

    Attributes:
        numbers: `[n_atoms]` int64, atomic numbers.
        positions: `[n_atoms, 3]` float64, Cartesian positions in Å.
        cell: `[3, 3]` float64, lattice vectors as rows, Å. For non-periodic directions the
            row still spans the box (it may be zero for a molecule with `pbc` all False).
        pbc: `[3]` bool, periodicity per lattice direction.
        targets: label name -> float (structure level) or `[n_atoms, ...]`/`[k]` array, canonical units.
        id: identifier unique within `source` (e.g. "mp-149", "oqmd-1234", "random1000129:17").
        source: database / dataset name (e.g. "materials_project", "oqmd", "oc20").
        arrays: per-atom auxiliary arrays that are not labels, e.g. `tags` `[n_atoms]` int
            (OC20: 0 subsurface, 1 surface, 2 adsorbate) and `fixed` `[n_atoms]` bool.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    targets: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    source: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(self.pbc, dtype=bool)
        self.pbc = np.repeat(pbc, 3) if pbc.ndim == 0 else pbc.reshape(3)
        self.id = str(self.id)
        self.source = str(self.source)
        if len(self.numbers) != len(self.positions):
            raise ValueError(
                f"{self.source}:{self.id}: {len(self.numbers)} atomic numbers but "
                f"{len(self.positions)} positions"
            )
        self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}

    @property
    def n_atoms(self) -> int:
        return int(len(self.numbers))

    @property
    def volume(self) -> float:
        """Signed cell volume in Å^3 (det of the row-vector cell)."""
        return float(np.linalg.det(self.cell))

    @property
    def key(self) -> str:
        """Globally unique key `source:id`."""
        return f"{self.source}:{self.id}"

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_pymatgen(cls, structure, targets=None, id: str = "", source: str = "") -> "Crystal":
        """From a pymatgen `Structure` (3-D periodic) or `Molecule` (no periodicity)."""
        from pymatgen.core import Molecule

        if isinstance(structure, Molecule):
            return cls(
                numbers=[site.specie.Z for site in structure],
                positions=structure.cart_coords,
                cell=np.zeros((3, 3)),
                pbc=False,
                targets=dict(targets or {}),
                id=id,
                source=source,
            )
        lattice = structure.lattice
        pbc = getattr(lattice, "pbc", (True, True, True))
        return cls(
            numbers=list(structure.atomic_numbers),
            positions=structure.cart_coords,
            cell=lattice.matrix,
            pbc=pbc,
            targets=dict(targets or {}),
            id=id,
            source=source,
        )

    def to_pymatgen(self):
        """To a pymatgen `Structure` (Cartesian positions kept exactly, no wrapping)."""
        from pymatgen.core import Lattice, Structure

        lattice = Lattice(self.cell, pbc=tuple(bool(p) for p in self.pbc))
        return Structure(
            lattice,
            self.numbers.tolist(),
            self.positions,
            coords_are_cartesian=True,
            to_unit_cell=False,
        )

    @classmethod
    def from_ase(cls, atoms, targets=None, id: str = "", source: str = "") -> "Crystal":
        """From an ASE `Atoms`; `tags` and `FixAtoms` constraints become `arrays`."""
        arrays: dict[str, np.ndarray] = {}
        tags = atoms.get_tags()
        if np.any(tags != 0):
            arrays["tags"] = np.asarray(tags, dtype=np.int64)
        fixed = np.zeros(len(atoms), dtype=bool)
        for constraint in atoms.constraints:
            if type(constraint).__name__ == "FixAtoms":
                fixed[constraint.get_indices()] = True
        if fixed.any():
            arrays["fixed"] = fixed
        return cls(
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            targets=dict(targets or {}),
            id=id,
            source=source,
            arrays=arrays,
        )

    def to_ase(self):
        """To an ASE `Atoms` (tags and fixed atoms restored)."""
        from ase import Atoms
        from ase.constraints import FixAtoms

        atoms = Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )
        if "tags" in self.arrays:
            atoms.set_tags(self.arrays["tags"])
        if "fixed" in self.arrays and np.any(self.arrays["fixed"]):
            atoms.set_constraint(FixAtoms(mask=np.asarray(self.arrays["fixed"], dtype=bool)))
        return atoms

    @classmethod
    def from_any(cls, obj, id: str = "", source: str = "") -> "Crystal":
        """Accept a `Crystal`, pymatgen `Structure`/`Molecule` or ASE `Atoms`."""
        if isinstance(obj, Crystal):
            return obj
        module = type(obj).__module__
        if module.startswith("ase"):
            return cls.from_ase(obj, id=id, source=source)
        if module.startswith("pymatgen"):
            return cls.from_pymatgen(obj, id=id, source=source)
        raise TypeError(
            f"expected a Crystal, pymatgen Structure or ASE Atoms, got {type(obj).__name__}"
        )

    def replace(self, **changes) -> "Crystal":
        """A copy with some fields replaced (arrays are shared, not copied)."""
        fields = dict(
            numbers=self.numbers,
            positions=self.positions,
            cell=self.cell,
            pbc=self.pbc,
            targets=dict(self.targets),
            id=self.id,
            source=self.source,
            arrays=dict(self.arrays),
        )
        fields.update(changes)
        return Crystal(**fields)
