"""CSV files with one CIF string a row (CDVAE's perovskites and carbon24, or a user's own CSV).

Each CIF is parsed by pymatgen's `CifParser` (`primitive=False`: the cell as written, so a
perovskite keeps its 5 atoms), warnings silenced and errors raised so a bad CIF becomes a
`Reject`. Measured on the 2-core CPU: the 3,787 perovskites read in about 2.5 s.

Labels: `targets` chooses the label columns, as a list (names mapped by `CSV_COLUMNS` when known,
kept as-is otherwise) or a dict `{column: target name}`; by default every column of `CSV_COLUMNS`
present in the header. Known columns:
- perovskites (`perov5_*.csv`): `heat_all` -> `formation_energy` (eV per 5-atom cell, the
  matbench_perovskites target), `ind_gap` -> `band_gap`, `dir_gap` -> `direct_band_gap` (eV);
  `heat_ref` is not mapped (pass `targets=` to keep it).
- carbon24 (`carbon24_*.csv`): `energy_per_atom` (eV/atom as published by the AIRSS search; about
  -154 eV/atom, a CASTEP pseudopotential reference, not comparable with VASP energies).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._common import convert_records, open_text, put, to_float
from foundation.data.records import Reject
from foundation.data.targets import CSV_COLUMNS

__all__ = ["read_cif_csv", "CSV_COLUMNS", "parse_cif"]

# Default `source` by file-name prefix (the CDVAE benchmark files); otherwise the file stem.
_SOURCES = {"perov": "perovskites", "carbon": "carbon24"}


def default_source(path: Path) -> str:
    name = path.name.lower()
    return next((s for prefix, s in _SOURCES.items() if name.startswith(prefix)), path.name.split(".")[0])


def parse_cif(text: str):
    """The first structure of a CIF string as a pymatgen `Structure` (cell as written)."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns on every rounded occupancy / missing tag
        structures = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise ValueError("CIF holds no structure")
    return structures[0]


def _target_columns(header: list[str], targets) -> dict[str, str]:
    if targets is None:
        return {c: CSV_COLUMNS[c] for c in header if c in CSV_COLUMNS}
    if isinstance(targets, Mapping):
        chosen = dict(targets)
    else:
        chosen = {c: CSV_COLUMNS.get(c, c) for c in targets}
    missing = [c for c in chosen if c not in header]
    if missing:
        raise ValueError(f"target column(s) {missing} not in the CSV header {header}")
    return chosen


def read_csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict, str]]]:
    """Header and `(index, row dict, "")` of a CSV that may start with `#` comment lines."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # CIF/structure cells are large
    handle = open_text(path, newline="")
    position = handle.tell()
    while True:  # skip leading comment lines such as matminer's "# ref: ..."
        line = handle.readline()
        if not line.startswith("#"):
            break
        position = handle.tell()
    handle.seek(position)
    reader = csv.DictReader(handle)
    header = list(reader.fieldnames or [])

    def rows():
        with handle:
            for index, row in enumerate(reader):
                yield index, row, ""

    return header, rows()


def read_cif_csv(path, source: str | None = None, cif_column: str = "cif",
                 id_column: str | None = "material_id",
                 targets: Sequence[str] | Mapping[str, str] | None = None,
                 require: Sequence[str] = (), **options) -> Iterator[Crystal | Reject]:
    """Stream a CSV with a CIF string per row.

    Args:
        cif_column: the column holding the CIF text.
        id_column: the column holding the record id (None or absent: the row position "#17").
        targets: label columns (list, or dict column -> target name); default: known columns.
        require: target names a record must have to be kept.
    """
    if options:
        raise ValueError(f"read_cif_csv: unknown options {sorted(options)}")
    path = Path(path)
    source = source or default_source(path)
    header, rows = read_csv_rows(path)
    if cif_column not in header:
        raise ValueError(f"{path}: no CIF column {cif_column!r} in the header {header}")
    columns = _target_columns(header, targets)
    use_id = id_column is not None and id_column in header

    def record_id(index: int, row: dict) -> str:
        return str(row[id_column]) if use_id and row.get(id_column) else f"#{index}"

    def convert(index: int, row: dict) -> Crystal:
        labels: dict = {}
        for column, name in columns.items():
            put(labels, name, to_float(row.get(column), column))
        if not row.get(cif_column):
            raise ValueError(f"empty CIF in column {cif_column!r}")
        return Crystal.from_pymatgen(parse_cif(row[cif_column]), labels, record_id(index, row), source)

    yield from convert_records(rows, convert, record_id, source, path, require)
