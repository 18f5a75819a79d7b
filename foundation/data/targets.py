"""Canonical label names and units, shared by every reader, the shards, the heads and the CLI.

A reader maps its database's column names to these keys and converts to these units, so
"formation energy per atom" is the same key in OQMD, Materials Project and Carolina.
Readers may emit other keys (kept as-is); these are the ones the project knows the meaning of.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TargetInfo", "TARGETS", "LABEL_FREE", "target_info", "CSV_COLUMNS", "MATBENCH_COLUMNS", "KEY_ALIASES"]


@dataclass(frozen=True)
class TargetInfo:
    name: str
    unit: str
    level: str  # "structure" | "atom"
    kind: str  # "regression" | "classification"
    extensive: bool  # scales with the number of atoms (a 2x2x2 supercell is 8x larger)
    description: str


_ALL = [
    TargetInfo("energy", "eV", "structure", "regression", True, "total DFT energy of the cell"),
    TargetInfo("energy_total", "eV", "structure", "regression", True,
               "total DFT energy of the cell, kept where `energy` is referenced per system"),
    TargetInfo("potential", "eV", "structure", "regression", True,
               "an energy with no labels of its own, learned only through the forces that are its "
               "position gradient (a force task's `forces_of`: conservative forces that no energy "
               "label pulls)"),
    TargetInfo("energy_per_atom", "eV/atom", "structure", "regression", False, "total energy per atom"),
    TargetInfo("formation_energy_per_atom", "eV/atom", "structure", "regression", False,
               "formation energy per atom"),
    TargetInfo("formation_energy", "eV", "structure", "regression", True,
               "formation (heat of formation) energy of the whole cell"),
    TargetInfo("band_gap", "eV", "structure", "regression", False, "electronic band gap"),
    TargetInfo("direct_band_gap", "eV", "structure", "regression", False, "direct band gap"),
    TargetInfo("efermi", "eV", "structure", "regression", False, "Fermi level"),
    TargetInfo("e_above_hull", "eV/atom", "structure", "regression", False,
               "energy above the convex hull"),
    TargetInfo("total_magnetization", "muB", "structure", "regression", True,
               "total magnetic moment of the cell"),
    TargetInfo("is_metal", "", "structure", "classification", False, "1 if metallic (zero gap)"),
    TargetInfo("is_stable", "", "structure", "classification", False, "1 if on the convex hull"),
    TargetInfo("bulk_modulus", "GPa", "structure", "regression", False, "Voigt-Reuss-Hill bulk modulus"),
    TargetInfo("shear_modulus", "GPa", "structure", "regression", False, "Voigt-Reuss-Hill shear modulus"),
    TargetInfo("log10_bulk_modulus", "log10(GPa)", "structure", "regression", False,
               "log10 of the VRH bulk modulus (MatBench log_kvrh)"),
    TargetInfo("log10_shear_modulus", "log10(GPa)", "structure", "regression", False,
               "log10 of the VRH shear modulus (MatBench log_gvrh)"),
    TargetInfo("elastic_tensor", "GPa", "structure", "regression", False, "6x6 Voigt elastic tensor"),
    TargetInfo("forces", "eV/Å", "atom", "regression", False, "atomic forces"),
    TargetInfo("stress", "GPa", "structure", "regression", False,
               "3x3 stress tensor (positive = tensile, ASE sign convention)"),
]

TARGETS: dict[str, TargetInfo] = {t.name: t for t in _ALL}
# Targets that no record carries: a task with one is trained only through the tasks that read it.
LABEL_FREE = frozenset({"potential"})


def target_info(name: str) -> TargetInfo:
    """Known metadata for `name`, or a generic structure-level regression target (unit unknown)."""
    if name in TARGETS:
        return TARGETS[name]
    return TargetInfo(name, "", "structure", "regression", False, "user-defined target")


# -- native label names of the readers -> canonical targets ---------------------------------------
# CSV with CIF strings (cif_csv): the CDVAE benchmark columns.
CSV_COLUMNS = {
    "heat_all": "formation_energy",
    "ind_gap": "band_gap",
    "dir_gap": "direct_band_gap",
    "energy_per_atom": "energy_per_atom",
    "formation_energy_per_atom": "formation_energy_per_atom",
    "band_gap": "band_gap",
}
# MatBench column name -> canonical target name.
MATBENCH_COLUMNS = {
    "e_form": "formation_energy_per_atom",
    "gap pbe": "band_gap",
    "efermi": "efermi",
    "total_magnetization": "total_magnetization",
    "log10(K_VRH)": "log10_bulk_modulus",
    "log10(G_VRH)": "log10_shear_modulus",
    "is_metal": "is_metal",
    "e_above_hull": "e_above_hull",
}
# ASE database key_value_pairs names -> canonical target names.
KEY_ALIASES = {
    "gap": "band_gap", "bandgap": "band_gap", "band_gap": "band_gap",
    "efermi": "efermi", "fermi_level": "efermi",
    "formation_energy_per_atom": "formation_energy_per_atom", "hform": "formation_energy_per_atom",
    "e_above_hull": "e_above_hull", "ehull": "e_above_hull",
    "energy_per_atom": "energy_per_atom", "magmom": "total_magnetization",
    "bulk_modulus": "bulk_modulus", "shear_modulus": "shear_modulus",
}
