"""foundation: multi-task equivariant foundation models for crystalline materials.

The public API, importable without DeepSpeed or the training code:

    foundation.Crystal                       the record every reader yields
    foundation.load_model(path).predict(s)   every task of an export, for Structures/Atoms/Crystals
    foundation.load_encoder(path).embed(s)   structure or atom features (numpy)
    foundation.predict(path, s), foundation.embed(path, s)   the same in one call
    foundation.ewald_energy(...)             the Ewald sum of point charges

Names are resolved when first used (`__getattr__` below, one plain mapping): importing torch and
the model takes seconds, and the command line (`foundation --help`) must not pay for it.
"""

from ._version import __version__

__all__ = ["Crystal", "ewald_energy", "load_model", "load_encoder", "predict", "embed", "__version__"]

_EXPORTS = {
    "Crystal": "foundation.data.crystal",
    "ewald_energy": "foundation.nn.ewald",
    "load_model": "foundation.api",
    "load_encoder": "foundation.api",
    "predict": "foundation.api",
    "embed": "foundation.api",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'foundation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
