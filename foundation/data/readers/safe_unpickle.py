"""A restricted unpickler for the OC20/OC22 LMDB records (pickled torch_geometric `Data` objects).

A pickle can call any importable function; these records come from the internet, so they are read
by `RestrictedUnpickler`, whose `find_class` resolves only the globals that layout uses and raises
`RefusedGlobal` (a `pickle.UnpicklingError`) naming anything else (e.g. `posix.system`,
`builtins.eval`). Globals found in the real OC22 records (`pickletools.genops` over
`../shared/data/oc22/*.pkl`):

    torch_geometric.data.data.Data / DataEdgeAttr / DataTensorAttr, torch_geometric.data.storage
    .GlobalStorage, torch._utils._rebuild_tensor_v2, torch.storage._load_from_bytes,
    collections.OrderedDict (the empty backward-hooks dict of each tensor).

torch_geometric is not needed: its classes map onto `PygStandIn` subclasses that only collect the
attributes that `BUILD` sets (PyG >= 2 keeps them in `_store._mapping`; PyG 1.x, which the OC20
releases of 2020 used, in the `Data` instance `__dict__`; `data_attributes` handles both).

Tensors: pickling a torch tensor with plain `pickle` stores its storage as
`torch.storage._load_from_bytes(<legacy torch.save bytes>)`. torch's own `_load_from_bytes` calls
`torch.load(weights_only=False)`; it is replaced here by `_storage_from_bytes`, which calls
`torch.load(..., weights_only=True)`: torch's weights-only unpickler reads those legacy bytes
(storage classes and persistent ids only) and refuses anything else. numpy arrays and scalars
(some OC20 conversions store `y`/`sid` as numpy values) are allowed through their reconstructors;
their contents go through this same `find_class`.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections import OrderedDict

__all__ = [
    "RestrictedUnpickler", "RefusedGlobal", "safe_loads", "PygStandIn", "data_attributes",
    "ALLOWED_GLOBALS",
]


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list: the data is hostile or not this layout."""


class PygStandIn:
    """Collects the state `BUILD` gives a torch_geometric object; `native` is its class path."""

    native: tuple[str, str] = ("", "")  # re-pickled under this path (`oc20_lmdb.dumps_record`)


class Data(PygStandIn):
    native = ("torch_geometric.data.data", "Data")


class GlobalStorage(PygStandIn):
    native = ("torch_geometric.data.storage", "GlobalStorage")


class DataEdgeAttr(PygStandIn):
    native = ("torch_geometric.data.data", "DataEdgeAttr")


class DataTensorAttr(PygStandIn):
    native = ("torch_geometric.data.data", "DataTensorAttr")


def _storage_from_bytes(data: bytes):
    """Weights-only replacement of `torch.storage._load_from_bytes` (legacy torch.save bytes)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as error:
            # torch refuses a global with "Trying to load unsupported GLOBAL posix.system ...";
            # other UnpicklingErrors (corrupt bytes) stay ordinary errors.
            found = re.search(r"unsupported GLOBAL (\S+)", str(error), flags=re.IGNORECASE)
            if found is None:
                raise
            raise RefusedGlobal(
                f"refused global {found.group(1)} inside a tensor storage "
                "(torch weights-only loader)"
            ) from None


def _rebuild_tensor_v2(*args):
    from torch._utils import _rebuild_tensor_v2

    return _rebuild_tensor_v2(*args)


def _numpy_global(name: str):
    import numpy as np

    try:  # numpy >= 2 moved the reconstructors; pickles name either module
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
            "ndarray": np.ndarray, "dtype": np.dtype}[name]


_PYG = {cls.native: cls for cls in (Data, GlobalStorage, DataEdgeAttr, DataTensorAttr)}
_PYG[("torch_geometric.data.storage", "DataEdgeAttr")] = DataEdgeAttr  # older PyG module layout
_PYG[("torch_geometric.data.storage", "DataTensorAttr")] = DataTensorAttr
_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
}
_NUMPY = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}

ALLOWED_GLOBALS = sorted(f"{m}.{n}" for m, n in [*_PYG, *_FUNCTIONS, *_NUMPY])


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS`; persistent ids are refused."""

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _PYG:
            return _PYG[key]
        if key in _FUNCTIONS:
            return _FUNCTIONS[key]
        if key in _NUMPY:
            return _numpy_global(name)
        raise RefusedGlobal(f"refused global {module}.{name}: not in the OC20/OC22 LMDB allow-list")

    def persistent_load(self, pid):
        raise RefusedGlobal(f"refused persistent id {pid!r}")


def safe_loads(data: bytes):
    """Unpickle `data` through `RestrictedUnpickler` (raises `RefusedGlobal` if refused)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def data_attributes(obj) -> dict:
    """Attribute dict of an unpickled `Data` stand-in (PyG >= 2 `_store._mapping` or PyG 1.x)."""
    if not isinstance(obj, Data):
        raise TypeError(f"expected a torch_geometric Data record, got {type(obj).__name__}")
    store = obj.__dict__.get("_store")
    if isinstance(store, GlobalStorage):
        return dict(store.__dict__.get("_mapping", {}))
    return {k: v for k, v in obj.__dict__.items() if not k.startswith("_") and v is not None}
