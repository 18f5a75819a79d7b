"""foundation: multi-task equivariant foundation models for crystalline materials."""

from .data.crystal import Crystal

__version__ = "0.1.0"

__all__ = ["Crystal", "__version__"]
