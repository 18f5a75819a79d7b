"""Shared helpers for the JSON/CSV readers: compressed files, JSON lines, pymatgen dicts, labels.

Every reader turns one native record into a `Crystal` or a `Reject`; `convert_records` is the one
loop that does this so a bad record (missing key, unparsable number, malformed structure) becomes a
`Reject` naming the record and the reason, and the next record is still read.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers as _SYMBOL_TO_Z

from foundation.data.crystal import Crystal
from foundation.data.records import Reject

__all__ = [
    "RECORD_ERRORS",
    "open_text",
    "strip_compression",
    "iter_jsonl",
    "load_json",
    "iter_json_records",
    "structure_from_pymatgen_dict",
    "crystal_from_pymatgen_dict",
    "to_float",
    "to_flag",
    "put",
    "convert_records",
]

# What a malformed record raises while it is converted; anything else is a bug and propagates.
RECORD_ERRORS = (KeyError, ValueError, TypeError, IndexError, AttributeError, SyntaxError,
                 ArithmeticError)
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def strip_compression(path) -> Path:
    """`a/b.json.gz` -> `a/b.json`: the path whose suffix names the layout."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in _COMPRESSED else path


def open_text(path, newline: str | None = None) -> io.TextIOBase:
    """Open a plain, .gz, .bz2 or .xz file as UTF-8 text (chosen by the suffix)."""
    path = Path(path)
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding="utf-8", newline=newline)
    return opener(path, mode="rt", encoding="utf-8", newline=newline)


def iter_jsonl(path) -> Iterator[tuple[int, Any, str]]:
    """Stream a JSON-lines file: `(line_index, record, "")`, or `(index, None, reason)` for a bad line.

    Blank lines are skipped without taking an index, so indices count records.
    """
    index = 0
    with open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield index, json.loads(line), ""
            except json.JSONDecodeError as error:
                yield index, None, f"line is not valid JSON: {error}"
            index += 1


def load_json(path) -> Any:
    """Load a whole (possibly compressed) JSON document."""
    with open_text(path) as handle:
        return json.load(handle)


def iter_json_records(path, list_keys: Sequence[str] = ("data", "entries"),
                      ) -> Iterator[tuple[int, Any, str]]:
    """Records of a JSON-lines file, a JSON list, or a dict wrapping a list under one of `list_keys`.

    `.jsonl` streams line by line; a JSON document is loaded whole (the JSON layouts here are one
    document). Yields `(index, record, "")` or `(index, None, reason)` like `iter_jsonl`.
    """
    if strip_compression(path).suffix.lower() == ".jsonl":
        yield from iter_jsonl(path)
        return
    document = load_json(path)
    if isinstance(document, dict):
        key = next((k for k in list_keys if isinstance(document.get(k), list)), None)
        if key is None:
            document = [document]  # a single record
        else:
            document = document[key]
    if not isinstance(document, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(document).__name__}")
    for index, record in enumerate(document):
        yield index, record, ""


def _site_number(site: dict) -> int:
    species = site["species"]
    if len(species) != 1 or float(species[0].get("occu", 1.0)) != 1.0:
        described = ", ".join(f"{s.get('element')}:{s.get('occu')}" for s in species)
        raise ValueError(f"disordered site ({described}): only ordered structures are supported")
    symbol = species[0]["element"]
    if symbol not in _SYMBOL_TO_Z:
        raise ValueError(f"unknown element {symbol!r}")
    return _SYMBOL_TO_Z[symbol]


def structure_from_pymatgen_dict(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a pymatgen `Structure.as_dict()` with numpy, without building a `Structure`.

    `Structure.from_dict` builds a `PeriodicSite`, `Species` and `Composition` per site: measured
    0.067 s against 0.006 s for 295 mp2018 structures (11x, 2-core CPU); the result is the same (tested): positions are the fractional `abc` times the
    lattice matrix, exactly as `PeriodicSite.from_dict` computes them (`xyz` is only a cache).

    Returns:
        numbers `[n_atoms]` int64, positions `[n_atoms, 3]` Å, cell `[3, 3]` Å (rows), pbc `[3]` bool.
    """
    lattice = d["lattice"]
    cell = np.asarray(lattice["matrix"], dtype=np.float64).reshape(3, 3)  # [3, 3] Å
    sites = d["sites"]
    if not sites:
        raise ValueError("structure has no sites")
    numbers = np.array([_site_number(site) for site in sites], dtype=np.int64)  # [n_atoms]
    frac = np.array([site["abc"] for site in sites], dtype=np.float64).reshape(-1, 3)
    positions = frac @ cell  # [n_atoms, 3] Å
    pbc = np.asarray(lattice.get("pbc", (True, True, True)), dtype=bool).reshape(3)
    return numbers, positions, cell, pbc


def crystal_from_pymatgen_dict(d: dict, targets: dict, id: str, source: str) -> Crystal:
    """`Crystal` from a pymatgen `Structure` dict (see `structure_from_pymatgen_dict`)."""
    numbers, positions, cell, pbc = structure_from_pymatgen_dict(d)
    return Crystal(numbers=numbers, positions=positions, cell=cell, pbc=pbc, targets=targets,
                   id=id, source=source)


def to_float(value, name: str) -> float | None:
    """A label as float: numbers, numeric strings ("53.357") and bools; None/""/NaN -> None (missing).

    Raises ValueError naming the label for anything else, so the record is rejected, not guessed.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip().strip("'\"")
        if value == "" or value.lower() in ("nan", "none", "null"):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label {name!r} is not a number: {value!r}") from None
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise ValueError(f"label {name!r} is infinite: {value!r}")
    return number


def to_flag(value, name: str) -> float | None:
    """A 0/1 classification label from a bool, 0/1 number or "True"/"False" string; None if missing."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return 1.0 if value.strip().lower() == "true" else 0.0
    number = to_float(value, name)
    if number is None:
        return None
    if number not in (0.0, 1.0):
        raise ValueError(f"label {name!r} should be 0/1 or a bool, got {value!r}")
    return number


def put(targets: dict, name: str, value) -> None:
    """Set `targets[name]` unless the value is missing (None): a missing label is simply absent."""
    if value is not None:
        targets[name] = value


def convert_records(
    records: Iterable[tuple[int, Any, str]],
    convert: Callable[[int, Any], Crystal],
    record_id: Callable[[int, Any], str],
    source: str,
    path,
    require: Sequence[str] = (),
) -> Iterator[Crystal | Reject]:
    """Turn `(index, record, reason)` triples into Crystals, or Rejects naming the id and the reason.

    `require`: target names every kept record must have; a record lacking one is rejected (by
    default a missing label is only absent from `targets`).
    """
    path = str(path)
    for index, record, reason in records:
        try:
            rid = record_id(index, record) if record is not None else f"#{index}"
        except RECORD_ERRORS:
            rid = f"#{index}"
        if record is None:
            yield Reject(rid, source, reason, path)
            continue
        try:
            crystal = convert(index, record)
        except KeyError as error:
            yield Reject(rid, source, f"missing field {error}", path)
            continue
        except RECORD_ERRORS as error:
            yield Reject(rid, source, f"{type(error).__name__}: {error}", path)
            continue
        missing = [name for name in require if name not in crystal.targets]
        if missing:
            yield Reject(rid, source, f"required target(s) missing: {', '.join(missing)}", path)
            continue
        yield crystal
