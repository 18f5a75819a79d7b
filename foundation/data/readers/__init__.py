"""Readers: every native database layout -> a stream of `Crystal`s (or `Reject`s).

`read(path, format=None, **options)` is the one entry point; `detect_format(path)` picks the
layout from the path and, for JSON/CSV files, a peek at the first record; `FORMATS` lists the
layouts. Each reader module is imported only when its format is read (some need optional
dependencies such as lmdb). `read_structures` is the lenient front door for prediction:
any readable database file, or a single CIF/POSCAR/anything ASE can read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._detect import detect_format
from foundation.data.records import Reject

__all__ = ["FORMATS", "read", "detect_format", "read_structures"]

FORMATS: dict[str, str] = {
    "mp_summary": "Materials Project API summary documents, JSON lines/list (structure as pymatgen dict)",
    "matbench": "MatBench json(.gz): {index, columns, data} with pymatgen structure dicts",
    "mp_elasticity": "MP elasticity JSON list with Python-repr structure strings and string moduli",
    "matminer_csv": "matminer elastic_tensor_2015 CSV (# ref line, K_VRH/G_VRH, 6x6 tensor, structure)",
    "oqmd": "OQMD REST formationenergy records ('El @ x y z' sites in unit_cell)",
    "nomad": "raw NOMAD archive entries (SI units: J, m)",
    "carolina": "Carolina Materials DB entries (CIF cell strings + fractional 'cart_coords')",
    "cif_csv": "CSV with one CIF string a row (perovskites, carbon24, a user's CSV)",
    "cse_json": "pymatgen ComputedStructureEntry JSON (Alexandria dumps: {entries: [...]} or a list)",
    "extxyz": "extended XYZ frames (LiPS, ColabFit, OC20 S2EF layout)",
    "jarvis": "JARVIS/mlearn id_prop JSON list of Atoms dicts",
    "ase": "ASE database (.db/.json), trajectory (.traj), or a directory of .traj files",
    "oc20_lmdb": "OC20/OC22 LMDB of pickled graph records (restricted unpickler), file or directory",
}


def read(path, format: str | None = None, **options) -> Iterator[Crystal | Reject]:
    """Stream the records of `path` as `Crystal`s, with a `Reject` for each unreadable record.

    Args:
        path: a file (plain, .gz, .bz2 or .xz where the layout allows) or a directory (ase, oc20_lmdb).
        format: one of `FORMATS`; None: `detect_format(path)`.
        options: passed to the format's reader (e.g. `source=`, `targets=`, `require=`).
    """
    format = format or detect_format(path)
    match format:
        case "mp_summary":
            from foundation.data.readers.mp_summary import read_mp_summary as reader
        case "matbench":
            from foundation.data.readers.matbench import read_matbench as reader
        case "mp_elasticity":
            from foundation.data.readers.mp_elasticity import read_mp_elasticity as reader
        case "matminer_csv":
            from foundation.data.readers.matminer_csv import read_matminer_csv as reader
        case "oqmd":
            from foundation.data.readers.oqmd import read_oqmd as reader
        case "nomad":
            from foundation.data.readers.nomad import read_nomad as reader
        case "carolina":
            from foundation.data.readers.carolina import read_carolina as reader
        case "cif_csv":
            from foundation.data.readers.cif_csv import read_cif_csv as reader
        case "cse_json":
            from foundation.data.readers.cse_json import read_cse_json as reader
        case "extxyz":
            from foundation.data.readers.extxyz import read_extxyz as reader
        case "jarvis":
            from foundation.data.readers.jarvis import read_jarvis as reader
        case "ase":
            from foundation.data.readers.ase_db import read_ase as reader
        case "oc20_lmdb":
            from foundation.data.readers.oc20_lmdb import read_oc20_lmdb as reader
        case _:
            known = "\n".join(f"  {name}: {text}" for name, text in FORMATS.items())
            raise ValueError(f"unknown format {format!r}; known formats:\n{known}")
    return reader(path, **options)


def _read_single_structure(path: Path) -> Crystal:
    """One CIF/POSCAR/... file: pymatgen first (CIF, POSCAR, CONTCAR, cssr...), then `ase.io.read`."""
    from foundation.data.readers.cif_csv import parse_cif

    try:
        if path.suffix.lower() == ".cif":
            structure = parse_cif(path.read_text())
        else:
            from pymatgen.core import Structure

            structure = Structure.from_file(path)
        return Crystal.from_pymatgen(structure, id=path.stem, source="user")
    except Exception:  # pymatgen does not know this format: ASE knows many more
        import ase.io

        return Crystal.from_ase(ase.io.read(path), id=path.stem, source="user")


def read_structures(path_or_paths, **options) -> Iterator[Crystal]:
    """Crystals from one path or many: database files via `read`, single structure files otherwise.

    Rejects of database files are skipped here (prediction has nothing to write for them); use
    `read` to see them. A single file that nothing can parse raises with the file named.
    """
    paths: Iterable = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else path_or_paths
    for path in map(Path, paths):
        try:
            format = detect_format(path)
        except ValueError:
            format = None
        if format is None:
            try:
                yield _read_single_structure(path)
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                raise ValueError(f"{path}: cannot read a structure ({reason})") from error
            continue
        for record in read(path, format, **options):
            if isinstance(record, Crystal):
                yield record
