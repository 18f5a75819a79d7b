"""foundation: multi-task equivariant foundation models for crystalline materials."""

from .data.crystal import Crystal
from .nn.ewald import ewald_energy

__version__ = "0.1.0"

__all__ = ["Crystal", "ewald_energy", "load_model", "load_encoder", "__version__"]

_LAZY = {"load_model": "foundation.api", "load_encoder": "foundation.api"}


def __getattr__(name: str):
    # The checkpoint API imports the model and readers: only when first used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'foundation' has no attribute {name!r}")
