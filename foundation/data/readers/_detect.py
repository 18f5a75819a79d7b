"""`detect_format(path)`: the reader format of a file or directory, from its name and first record.

Names decide where they are unambiguous (`.extxyz`, `.traj`, `.lmdb`, a directory of them); JSON
and CSV files are told apart by a peek: the CSV header, or the first record of a JSON file (read
incrementally, so a 30 MB MatBench file is not parsed whole to find out it is MatBench).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from foundation.data.readers._common import iter_jsonl, open_text, strip_compression

__all__ = ["detect_format", "classify_record"]

_DECODER = json.JSONDecoder()


def classify_record(record) -> str:
    """The format a single JSON record belongs to, from its keys."""
    if not isinstance(record, dict):
        raise ValueError(f"first record is a {type(record).__name__}, not a JSON object")
    keys = set(record)
    atoms = record.get("atoms")
    if "bulk_modulus_vrh" in keys or "shear_modulus_vrh" in keys:
        return "mp_elasticity"
    if "lattice_mat" in keys or (isinstance(atoms, dict) and "lattice_mat" in atoms):
        return "jarvis"
    is_entry = "ComputedStructureEntry" in str(record.get("@class", ""))
    if is_entry or {"structure", "energy", "correction"} <= keys:
        return "cse_json"
    if {"unit_cell", "sites"} <= keys:
        return "oqmd"
    if "energies" in keys or {"material", "properties"} <= keys:
        return "nomad"
    if {"cart_coords", "_cell_length_a"} <= keys:
        return "carolina"
    if isinstance(record.get("structure"), dict):
        return "mp_summary"
    raise ValueError(f"no reader knows a JSON record with keys {sorted(keys)[:12]}")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i >= len(text):
        raise json.JSONDecodeError("incomplete", text, i)
    return i


def _head(text: str) -> tuple[str | None, object]:
    """`(None, first element)` of a top-level list, or `(first key, its value or first element)`."""
    i = _skip(text, 0)
    if text[i] == "[":
        return None, _DECODER.raw_decode(text, _skip(text, i + 1))[0]
    if text[i] != "{":
        raise ValueError("not a JSON list or object")
    key, i = _DECODER.raw_decode(text, _skip(text, i + 1))
    i = _skip(text, i)
    if text[i] != ":":
        raise ValueError("malformed JSON object")
    i = _skip(text, i + 1)
    if text[i] == "[":
        i = _skip(text, i + 1)
        if text[i] == "]":
            return key, None
    return key, _DECODER.raw_decode(text, i)[0]


def _peek_json(path: Path) -> tuple[str | None, object]:
    text = ""
    with open_text(path) as handle:
        while True:
            more = handle.read(max(1 << 16, len(text)))
            text += more
            try:
                return _head(text)
            except json.JSONDecodeError as error:
                if not more:
                    raise ValueError(f"{path}: not valid JSON ({error})") from None


def _json_format(path: Path) -> str:
    if strip_compression(path).suffix.lower() == ".jsonl":
        for _, record, reason in iter_jsonl(path):
            if record is None:
                raise ValueError(f"{path}: first line {reason}")
            return classify_record(record)
        raise ValueError(f"{path}: empty JSON-lines file")
    key, first = _peek_json(path)
    if key in ("index", "columns"):
        return "matbench"
    if key is not None and (key.isdigit() or key in ("ids", "nextid")):
        return "ase"  # ASE's JSON database: {"1": row, ..., "ids": [...], "nextid": n}
    if key in ("data", "entries"):
        if isinstance(first, list):
            return "matbench"  # MatBench rows are lists
        if first is None:
            raise ValueError(f"{path}: empty record list under {key!r}")
        return classify_record(first)
    if key is None:
        if first is None:
            raise ValueError(f"{path}: empty JSON list")
        return classify_record(first)
    with open_text(path) as handle:  # a single record: its keys decide
        return classify_record(json.load(handle))


def _csv_format(path: Path) -> str:
    with open_text(path, newline="") as handle:
        line = handle.readline()
        while line.startswith("#"):
            line = handle.readline()
    header = next(csv.reader([line]), [])
    if "cif" in header:
        return "cif_csv"
    if "elastic_tensor" in header or ({"K_VRH", "G_VRH"} <= set(header)) or "poscar" in header:
        return "matminer_csv"
    raise ValueError(f"{path}: a CSV without a 'cif' column (header {header[:10]}); "
                     f"for CIF strings in another column use format='cif_csv', cif_column=...")


def _dir_format(path: Path) -> str:
    names = [p.suffix for p in path.iterdir()]
    if ".traj" in names or ".db" in names:
        return "ase"
    if ".lmdb" in names:
        return "oc20_lmdb"
    raise ValueError(f"{path}: a directory without .traj, .db or .lmdb files")


def detect_format(path) -> str:
    """Name of the reader format for `path` (a key of `foundation.data.readers.FORMATS`).

    Raises ValueError when nothing matches (then pass `format=` to `read`).
    """
    path = Path(path)
    if path.is_dir():
        return _dir_format(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    suffix = strip_compression(path).suffix.lower()
    match suffix:
        case ".extxyz" | ".xyz":
            return "extxyz"
        case ".traj" | ".db":
            return "ase"
        case ".lmdb":
            return "oc20_lmdb"
        case ".csv":
            return _csv_format(path)
        case ".json" | ".jsonl":
            return _json_format(path)
        case _:
            raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass format=")
