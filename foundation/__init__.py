"""foundation: multi-task equivariant foundation models for crystalline materials."""

from .data.crystal import Crystal
from .nn.ewald import ewald_energy

__version__ = "0.1.0"

__all__ = ["Crystal", "ewald_energy", "__version__"]
