"""The matminer `elastic_tensor_2015` CSV (de Jong et al., Sci. Data 2015, as matminer 0.4.0 shipped).

Layout (inspected, `../shared/data/elastic_tensor_2015/elastic_tensor.csv.gz`, 1,181 rows): a first
`# ref: ...` line, then a CSV header with `material_id`, `K_VRH`, `G_VRH` (and Voigt/Reuss bounds,
GPa), `elastic_tensor` (6x6 Python-repr list, GPa, rotated to the IEEE-standard frame),
`elastic_tensor_original` (the same tensor in the frame of the calculation), `poscar` (VASP text)
and `structure`, which in this file is CIF text (a Python-repr pymatgen dict in other matminer
dumps: both are accepted, the dict through `ast.literal_eval`).

Frames matter for a tensor label: the CIF loses the lattice orientation (pymatgen rebuilds it
from a, b, c, angles), while the POSCAR keeps the calculation's lattice matrix, the frame of
`elastic_tensor_original` (measured: rotating it to the IEEE frame with pymatgen's
`convert_to_ieee` on the POSCAR structure gives `elastic_tensor` in 17 of 20 rows that differ;
its Voigt bulk modulus equals `K_Voigt` to 5e-5 in all 1,181 rows; it is exactly symmetric).
So by default the structure is read from `poscar` and `elastic_tensor` (`[6, 6]` GPa) from
`elastic_tensor_original`; `structure_column="structure"` reads the other column (then pair it
with `tensor_column=None` unless its frame is known). Labels: `bulk_modulus`, `shear_modulus`
(VRH, GPa) and their log10 where positive, `elastic_tensor`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from foundation.data.crystal import Crystal
from foundation.data.readers._common import convert_records, crystal_from_pymatgen_dict
from foundation.data.readers.cif_csv import parse_cif, read_csv_rows
from foundation.data.readers.mp_elasticity import literal_dict, moduli_targets
from foundation.data.records import Reject

__all__ = ["read_matminer_csv", "parse_tensor"]


def parse_tensor(text: str) -> np.ndarray:
    """`[6, 6]` float64 from a Python-repr nested list (`ast.literal_eval`, literals only)."""
    tensor = np.asarray(ast.literal_eval(text.strip()), dtype=np.float64)
    if tensor.shape != (6, 6) or not np.all(np.isfinite(tensor)):
        raise ValueError(f"elastic_tensor is not a finite 6x6 matrix (shape {tensor.shape})")
    return tensor


def _structure(row: dict, column: str, id: str, source: str, targets: dict) -> Crystal:
    text = (row.get(column) or "").strip()
    if not text:
        raise ValueError(f"empty structure column {column!r}")
    if column == "poscar":
        from pymatgen.io.vasp import Poscar

        return Crystal.from_pymatgen(Poscar.from_str(text).structure, targets, id, source)
    if text.startswith("{"):
        return crystal_from_pymatgen_dict(literal_dict(text, column), targets, id, source)
    return Crystal.from_pymatgen(parse_cif(text), targets, id, source)


def read_matminer_csv(path, source: str = "matminer_elastic", structure_column: str = "poscar",
                      tensor_column: str | None = "elastic_tensor_original",
                      require: Sequence[str] = (), **options) -> Iterator[Crystal | Reject]:
    """Read the matminer elastic-tensor CSV as `Crystal`s (or `Reject`s).

    Args:
        structure_column: "poscar" (default, calculation frame), or "structure" (CIF or dict).
        tensor_column: column read into `elastic_tensor`, or None to leave the tensor out.
    """
    if options:
        raise ValueError(f"read_matminer_csv: unknown options {sorted(options)}")
    path = Path(path)
    header, rows = read_csv_rows(path)
    if tensor_column is not None and tensor_column not in header:
        raise ValueError(f"{path}: no tensor column {tensor_column!r} in {header}")
    if structure_column not in header:
        raise ValueError(f"{path}: no structure column {structure_column!r} in {header}")

    def record_id(index: int, row: dict) -> str:
        return row.get("material_id") or f"#{index}"

    def convert(index: int, row: dict) -> Crystal:
        targets = moduli_targets(row.get("K_VRH"), row.get("G_VRH"))
        if tensor_column is not None and row.get(tensor_column):
            targets["elastic_tensor"] = parse_tensor(row[tensor_column])
        crystal = _structure(row, structure_column, record_id(index, row), source, targets)
        if row.get("nsites") and int(row["nsites"]) != crystal.n_atoms:
            raise ValueError(f"nsites={row['nsites']} but the structure has {crystal.n_atoms} atoms")
        return crystal

    yield from convert_records(rows, convert, record_id, source, path, require)
