"""Materials Project elastic moduli as a JSON list of `{mp_id, formula, structure, bulk_modulus_vrh,
shear_modulus_vrh}` (`../shared/data/elasticity/mp-binary-pbe-elasticity-2025.1.json.gz`).

The layout is described as published with `structure` a Python-repr string of a pymatgen dict
and the moduli as strings; the shared sample, inspected, holds the structure as a JSON object and
the moduli as numbers. Both are accepted: a string structure is parsed with `ast.literal_eval`
(literals only, never `eval`), string moduli with `float`.
Labels (GPa, Voigt-Reuss-Hill): `bulk_modulus`, `shear_modulus`, and `log10_bulk_modulus`,
`log10_shear_modulus` (the MatBench log_kvrh/log_gvrh targets) only where the modulus is
positive: a zero or negative VRH modulus (a mechanically unstable fit) has no logarithm, so
that record keeps the GPa value and simply lacks the log label. The sample has none (all > 0.16 GPa).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._common import (
    convert_records,
    crystal_from_pymatgen_dict,
    iter_json_records,
    put,
    to_float,
)
from foundation.data.records import Reject

__all__ = ["read_mp_elasticity", "moduli_targets", "literal_dict"]


def literal_dict(value, name: str) -> dict:
    """A dict given as a dict or as its Python repr (`ast.literal_eval`: literals only, no code)."""
    if isinstance(value, str):
        value = ast.literal_eval(value.strip())
    if not isinstance(value, dict):
        raise ValueError(f"{name!r} is not a dict (got {type(value).__name__})")
    return value


def moduli_targets(bulk, shear) -> dict:
    """`bulk_modulus`/`shear_modulus` (GPa) and their log10 where positive."""
    targets: dict = {}
    for name, value in (("bulk_modulus", bulk), ("shear_modulus", shear)):
        gpa = to_float(value, name)
        put(targets, name, gpa)
        if gpa is not None and gpa > 0:
            targets[f"log10_{name}"] = math.log10(gpa)
    return targets


def _record_id(index: int, record: dict) -> str:
    value = record.get("mp_id") or record.get("material_id")
    return str(value).strip("'\"") if value else f"#{index}"


def read_mp_elasticity(path, source: str = "mp_elasticity", require: Sequence[str] = (),
                       **options) -> Iterator[Crystal | Reject]:
    """Read the MP elasticity JSON list as `Crystal`s (or `Reject`s)."""
    if options:
        raise ValueError(f"read_mp_elasticity: unknown options {sorted(options)}")
    path = Path(path)

    def convert(index: int, record: dict) -> Crystal:
        targets = moduli_targets(record.get("bulk_modulus_vrh"), record.get("shear_modulus_vrh"))
        structure = literal_dict(record["structure"], "structure")
        return crystal_from_pymatgen_dict(structure, targets, _record_id(index, record), source)

    yield from convert_records(iter_json_records(path), convert, _record_id, source, path, require)
