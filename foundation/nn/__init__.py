"""Neural-network building blocks (equivariant layers, long-range electrostatics)."""

from .ewald import COULOMB, LatentEwald, ewald_energy, ewald_sum
from .interaction import (
    InteractionBlock, check_irreps, gate_for, normalize_irreps, reachable_irreps,
)
from .radial import BesselBasis, PolynomialCutoff, RadialEmbedding

__all__ = [
    "COULOMB", "LatentEwald", "ewald_energy", "ewald_sum",
    "InteractionBlock", "check_irreps", "gate_for", "normalize_irreps", "reachable_irreps",
    "BesselBasis", "PolynomialCutoff", "RadialEmbedding",
]
