"""Labels of an ASE `Atoms` (calculator results, `info`, `arrays`) in canonical names and units.

Shared by the extended-XYZ and ASE database/trajectory readers. ASE keeps labels in three places:
a `SinglePointCalculator` (what `ase.io` makes of `energy=`, `forces`, `stress=`), `atoms.info`
(other per-frame keys, e.g. `REF_energy`) and `atoms.arrays` (other per-atom columns, e.g.
`REF_forces`). The first name found in the order calculator, info, arrays wins.

Stress: ASE stores it as Voigt `[6]` (xx, yy, zz, yz, xz, xy) in eV/Å^3 with positive = tensile
(ASE's sign, `stress = (1/V) dE/dε`); files may give 9 (3x3) or 6 values. Output is always a
`[3, 3]` tensor in GPa, ASE sign. A virial `W` (eV) becomes `stress = -W / V`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelConvention", "STRESS_UNITS_IN_GPA", "atoms_labels", "stress_to_gpa"]

# Factor that turns one unit of the native stress into GPa (1 eV/Å^3 = 160.21766 GPa).
STRESS_UNITS_IN_GPA = {"eV/A^3": 160.21766208, "GPa": 1.0, "kbar": 0.1, "bar": 1e-4}

ENERGY_KEYS = ("energy", "total_energy", "Energy", "REF_energy", "dft_energy", "DFT_energy")
FORCE_KEYS = ("forces", "force", "REF_forces", "dft_forces", "DFT_forces")
STRESS_KEYS = ("stress", "REF_stress", "dft_stress", "DFT_stress")
VIRIAL_KEYS = ("virial", "REF_virial", "dft_virial")


@dataclass(frozen=True)
class LabelConvention:
    """How a file's labels are written, so they can be converted to canonical units.

    energy: "total" (eV per cell) or "per_atom" (eV/atom; multiplied by n_atoms).
    stress_unit: a key of `STRESS_UNITS_IN_GPA`.
    stress_sign: "tensile" (ASE: positive = tensile) or "compressive" (VASP/pressure-like:
        positive = compressive; negated on reading).
    voigt_order: what the 6 entries of a Voigt stress mean; ASE's is "xx yy zz yz xz xy",
        VASP's OUTCAR order is "xx yy zz xy yz xz".
    """

    energy: str = "total"
    stress_unit: str = "eV/A^3"
    stress_sign: str = "tensile"
    voigt_order: str = "xx yy zz yz xz xy"

    def __post_init__(self) -> None:
        if self.energy not in ("total", "per_atom"):
            raise ValueError(f"energy must be 'total' or 'per_atom', got {self.energy!r}")
        if self.stress_unit not in STRESS_UNITS_IN_GPA:
            raise ValueError(
                f"stress_unit must be one of {sorted(STRESS_UNITS_IN_GPA)}, "
                f"got {self.stress_unit!r}"
            )
        if self.stress_sign not in ("tensile", "compressive"):
            raise ValueError(
                f"stress_sign must be 'tensile' or 'compressive', got {self.stress_sign!r}"
            )
        pairs = self.voigt_order.split()
        if sorted(pairs) != sorted(["xx", "yy", "zz", "yz", "xz", "xy"]):
            raise ValueError(
                f"voigt_order must name xx yy zz yz xz xy once each, got {self.voigt_order!r}"
            )


def _voigt_to_full(voigt: np.ndarray, order: str) -> np.ndarray:
    """`[6]` Voigt in the given component order -> symmetric `[3, 3]`."""
    axis = {"x": 0, "y": 1, "z": 2}
    full = np.zeros((3, 3))
    for value, (a, b) in zip(voigt, order.split()):
        full[axis[a], axis[b]] = full[axis[b], axis[a]] = value
    return full


def stress_to_gpa(value, convention: LabelConvention) -> np.ndarray:
    """Native stress (Voigt `[6]`, `[9]` or `[3, 3]`) -> `[3, 3]` GPa, ASE sign (tensile > 0)."""
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 6:
        full = _voigt_to_full(array, convention.voigt_order)
    elif array.size == 9:
        full = array.reshape(3, 3)
    else:
        raise ValueError(f"stress has {array.size} values; expected 6 (Voigt) or 9 (3x3)")
    sign = 1.0 if convention.stress_sign == "tensile" else -1.0
    return sign * STRESS_UNITS_IN_GPA[convention.stress_unit] * full  # [3, 3] GPa


def _lookup(atoms, keys, per_atom: bool):
    results = atoms.calc.results if atoms.calc is not None else {}
    for key in keys:
        if key in results:
            return results[key]
    for key in keys:
        if not per_atom and key in atoms.info:
            return atoms.info[key]
        if per_atom and key in atoms.arrays:
            return atoms.arrays[key]
    return None


def atoms_labels(atoms, convention: LabelConvention = LabelConvention()) -> dict:
    """Canonical `targets` of one frame: `energy` (eV), `forces` `[n_atoms, 3]` eV/Å, `stress` GPa.

    Raises ValueError with the reason when a label is present but malformed (wrong shape,
    not finite); a missing label is simply absent from the dict.
    """
    n_atoms = len(atoms)
    targets: dict = {}
    energy = _lookup(atoms, ENERGY_KEYS, per_atom=False)
    if energy is not None:
        energy = float(np.asarray(energy, dtype=np.float64).reshape(()))
        if not np.isfinite(energy):
            raise ValueError(f"energy is not finite ({energy})")
        targets["energy"] = energy * n_atoms if convention.energy == "per_atom" else energy
    forces = _lookup(atoms, FORCE_KEYS, per_atom=True)
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (n_atoms, 3):
            raise ValueError(f"forces have shape {forces.shape}, expected ({n_atoms}, 3)")
        if not np.all(np.isfinite(forces)):
            raise ValueError("forces contain non-finite values")
        targets["forces"] = forces  # [n_atoms, 3] eV/Å
    stress = _lookup(atoms, STRESS_KEYS, per_atom=False)
    if stress is not None:
        targets["stress"] = stress_to_gpa(stress, convention)
    else:
        virial = _lookup(atoms, VIRIAL_KEYS, per_atom=False)
        if virial is not None:
            # A virial is an energy (eV): stress = -W / V in eV/Å^3, whatever `stress_unit` says.
            volume = abs(atoms.get_volume())
            full = np.asarray(virial, dtype=np.float64).reshape(-1)
            ase_stress = -stress_to_gpa(full, LabelConvention(stress_unit="eV/A^3")) / volume
            targets["stress"] = ase_stress
    if "stress" in targets and not np.all(np.isfinite(targets["stress"])):
        raise ValueError("stress contains non-finite values")
    return targets
