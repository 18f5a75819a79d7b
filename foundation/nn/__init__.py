"""Neural-network building blocks (equivariant layers, long-range electrostatics)."""

from .ewald import COULOMB, LatentEwald, ewald_energy, ewald_sum

__all__ = ["COULOMB", "LatentEwald", "ewald_energy", "ewald_sum"]
