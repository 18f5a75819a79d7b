"""Element descriptors: what the periodic table knows about every species, as a fixed table.

CGCNN (its 92-value `atom_init.json`), MEGNet's and MODNet's element features give a model the
chemistry it cannot learn from a few thousand structures: a species seen ten times in training
still has a known electronegativity, radius and valence shell. `element_descriptors` reads them
from pymatgen's periodic table (a core dependency; no table is copied into this project):

    period and group, the block (s/p/d/f, one-hot), the valence electrons in s, p, d and f
    subshells (outside the noble-gas core), Pauling electronegativity, atomic and mean ionic
    radius (Å), log atomic mass, first ionisation energy and electron affinity (eV), Mendeleev
    number, log molar volume and melting point.

Values pymatgen lacks (electronegativity of the noble gases, most properties beyond Z ~ 100) are
the column's mean; every column is then standardised over Z = 1 .. `max_z`. Row 0 (no species) is
zero.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np

__all__ = ["element_descriptors", "element_volumes", "DESCRIPTOR_NAMES"]

_SCALARS = ("row", "group", "X", "atomic_radius", "average_ionic_radius", "atomic_mass", "ionization_energy",
            "electron_affinity", "mendeleev_no", "molar_volume", "melting_point")
_LOG = {"atomic_mass", "molar_volume"}
DESCRIPTOR_NAMES = (*_SCALARS, "block_s", "block_p", "block_d", "block_f",
                    "valence_s", "valence_p", "valence_d", "valence_f")


def _number(value) -> float:
    try:
        x = float(value)  # pymatgen's FloatWithUnit and plain numbers
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _property(element, name: str) -> float:
    """pymatgen's value of `name` for `element` as a float, NaN where it has none."""
    try:
        return _number(getattr(element, name))
    except (AttributeError, ValueError, KeyError):
        return math.nan


def _valence(structure: str) -> list[float]:
    """Electrons per subshell type outside the noble-gas core: "[Ar].3d6.4s2" -> s 2, p 0, d 6, f 0."""
    counts = dict.fromkeys("spdf", 0.0)
    for part in structure.split("."):
        if part.startswith("[") or len(part) < 3:
            continue
        counts[part[1]] += float(part[2:])
    return [counts[k] for k in "spdf"]


@lru_cache(maxsize=4)
def element_descriptors(max_z: int = 118) -> np.ndarray:
    """[max_z + 1, len(DESCRIPTOR_NAMES)] float64, standardised columns, row 0 zeros."""
    from pymatgen.core.periodic_table import Element  # pymatgen is heavy; only models that ask pay

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every property it lacks
        for z in range(1, max_z + 1):
            element = Element.from_Z(z)
            values = []
            for name in _SCALARS:
                x = _property(element, name)
                values.append(math.log(x) if name in _LOG and x > 0 else x)
            values += [float(element.block == b) for b in "spdf"]
            try:
                values += _valence(element.electronic_structure)
            except KeyError:  # pymatgen has no configuration for some of the heaviest elements
                values += [math.nan] * 4
            rows.append(values)
    table = np.asarray(rows, dtype=np.float64)
    mean = np.nanmean(table, axis=0)
    table = np.where(np.isnan(table), mean, table)
    std = table.std(axis=0)
    table = (table - table.mean(axis=0)) / np.where(std > 0, std, 1.0)
    table = np.concatenate([np.zeros((1, table.shape[1])), table])
    table.setflags(write=False)  # cached: shared by every caller
    return table


@lru_cache(maxsize=4)
def element_volumes(max_z: int = 118) -> np.ndarray:
    """[max_z + 1, 2] float64, Å^3 per atom: the sphere of each species' atomic radius and its
    element's solid (molar volume / Avogadro); pymatgen's values, missing ones the column's median.
    Row 0 (no species) is zero. For `foundation.nn.cell`'s packing descriptors."""
    from pymatgen.core.periodic_table import Element

    per_atom = 1e24 / 6.02214076e23  # cm^3/mol -> Å^3 per atom
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, max_z + 1):
            element = Element.from_Z(z)
            radius, molar = _property(element, "atomic_radius"), _property(element, "molar_volume")
            rows.append([4.0 / 3.0 * math.pi * radius**3, molar * per_atom])
    table = np.asarray(rows, dtype=np.float64)
    table = np.where(np.isnan(table) | (table <= 0), np.nanmedian(np.where(table > 0, table, np.nan), axis=0), table)
    table = np.concatenate([np.zeros((1, 2)), table])
    table.setflags(write=False)
    return table
