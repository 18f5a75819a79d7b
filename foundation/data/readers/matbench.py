"""MatBench `json.gz` layout: `{"index": [ids], "columns": [...], "data": [[structure, ...], ...]}`.

Structures are pymatgen `Structure.as_dict()`s, parsed with numpy
(`_common.structure_from_pymatgen_dict`, tested equal to `Structure.from_dict`). Known MatBench
columns map to canonical names (`MATBENCH_COLUMNS`); any other column is kept under its own name.
A missing (null/NaN) label is only absent from that record's targets; the record is rejected for
it only if the caller lists it in `require`.

`e_form` means eV/atom in `matbench_mp_e_form` and in the mp2018 snapshot, but eV per 5-atom
cell in `matbench_perovskites`: pass `column_map={"e_form": "formation_energy"}` for that task.
Speed (2-core CPU, shared): all 29,492 mp2018 records in 8.4 s, most of it `json.load`; the
structure conversion is ~0.6 s (`Structure.from_dict` would be ~7 s).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._common import (
    convert_records,
    crystal_from_pymatgen_dict,
    load_json,
    put,
    to_flag,
    to_float,
)
from foundation.data.records import Reject
from foundation.data.targets import MATBENCH_COLUMNS

__all__ = ["read_matbench", "MATBENCH_COLUMNS"]

_FLAG_TARGETS = {"is_metal", "is_stable"}


def _columns(columns: list, targets: Sequence[str] | None, column_map: Mapping[str, str]):
    """`(structure column index, [(column index, raw name, target name)])` for the chosen targets."""
    if "structure" not in columns:
        raise ValueError(f"MatBench file has no 'structure' column (columns: {columns})")
    chosen = []
    for i, column in enumerate(columns):
        if column == "structure":
            continue
        name = column_map.get(column, column)
        if targets is None or column in targets or name in targets:
            chosen.append((i, column, name))
    if targets is not None:
        found = {c for _, c, _ in chosen} | {n for _, _, n in chosen}
        unknown = [t for t in targets if t not in found]
        if unknown:
            raise ValueError(f"target(s) {unknown} not among the MatBench columns {columns}")
    return columns.index("structure"), chosen


def read_matbench(path, source: str = "matbench", targets: Sequence[str] | None = None,
                  column_map: Mapping[str, str] | None = None, require: Sequence[str] = (),
                  **options) -> Iterator[Crystal | Reject]:
    """Read a MatBench json(.gz) file.

    Args:
        targets: raw or canonical column names to keep (default: every non-structure column).
        column_map: overrides/additions to `MATBENCH_COLUMNS` (raw column -> target name).
        require: target names a record must have to be kept.
    """
    if options:
        raise ValueError(f"read_matbench: unknown options {sorted(options)}")
    path = Path(path)
    document = load_json(path)
    if not isinstance(document, dict) or not {"index", "columns", "data"} <= set(document):
        raise ValueError(f"{path}: not the MatBench layout (expected keys index, columns, data)")
    mapping = {**MATBENCH_COLUMNS, **(column_map or {})}
    s_col, chosen = _columns(list(document["columns"]), targets, mapping)
    ids = document["index"]
    if len(ids) != len(document["data"]):
        raise ValueError(f"{path}: {len(ids)} ids but {len(document['data'])} data rows")

    def convert(index: int, row: list) -> Crystal:
        labels: dict = {}
        for i, column, name in chosen:
            parse = to_flag if name in _FLAG_TARGETS else to_float
            put(labels, name, parse(row[i], column))
        return crystal_from_pymatgen_dict(row[s_col], labels, str(ids[index]), source)

    rows = ((i, row, "") for i, row in enumerate(document["data"]))
    yield from convert_records(rows, convert, lambda i, _: str(ids[i]), source, path, require)
