"""Readers: every native database layout -> a stream of `Crystal`s (or `Reject`s).

`read(path, format=None, **options)` is the one entry point; `detect_format(path)` picks the
layout from the path and, for JSON/CSV files, a peek at the first record; `FORMATS` lists the
layouts. Heavy third-party libraries (pymatgen, ASE, lmdb) are imported by a reader when it runs. `read_structures` is the lenient front door for prediction:
any readable database file, or a single CIF/POSCAR/anything ASE can read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from foundation.data.crystal import Crystal
from foundation.data.readers._detect import detect_format
from foundation.data.readers.mp_summary import read_mp_summary
from foundation.data.readers.matbench import read_matbench
from foundation.data.readers.mp_elasticity import read_mp_elasticity
from foundation.data.readers.matminer_csv import read_matminer_csv
from foundation.data.readers.oqmd import read_oqmd
from foundation.data.readers.nomad import read_nomad
from foundation.data.readers.carolina import read_carolina
from foundation.data.readers.cif_csv import parse_cif, read_cif_csv
from foundation.data.readers.cse_json import read_cse_json
from foundation.data.readers.extxyz import read_extxyz
from foundation.data.readers.jarvis import read_jarvis
from foundation.data.readers.ase_db import read_ase
from foundation.data.readers.oc20_lmdb import read_oc20_lmdb
from foundation.data.records import Reject

__all__ = ["FORMATS", "read", "read_any", "read_single_structure", "detect_format", "read_structures"]

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
            reader = read_mp_summary
        case "matbench":
            reader = read_matbench
        case "mp_elasticity":
            reader = read_mp_elasticity
        case "matminer_csv":
            reader = read_matminer_csv
        case "oqmd":
            reader = read_oqmd
        case "nomad":
            reader = read_nomad
        case "carolina":
            reader = read_carolina
        case "cif_csv":
            reader = read_cif_csv
        case "cse_json":
            reader = read_cse_json
        case "extxyz":
            reader = read_extxyz
        case "jarvis":
            reader = read_jarvis
        case "ase":
            reader = read_ase
        case "oc20_lmdb":
            reader = read_oc20_lmdb
        case _:
            known = "\n".join(f"  {name}: {text}" for name, text in FORMATS.items())
            raise ValueError(f"unknown format {format!r}; known formats:\n{known}")
    return reader(path, **options)


def _error(exc: BaseException) -> str:
    """An exception as words: its message, or what its type means when it has none."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, StopIteration) or (isinstance(exc, (AssertionError, IndexError)) and not text):
        return "the file ends early or is malformed"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_single_structure(path: Path) -> Crystal:
    """One CIF/POSCAR/... file: pymatgen first (CIF, POSCAR, CONTCAR, cssr...), then `ase.io.read`.
    ValueError naming the file and what each library said when neither can read it."""
    import ase.io  # pymatgen and ASE load many submodules: only when a single file is read
    from pymatgen.core import Structure

    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read a structure (the file is empty)")
    try:
        if path.suffix.lower() == ".cif":
            structure = parse_cif(path.read_text())
        else:
            structure = Structure.from_file(path)
        return Crystal.from_pymatgen(structure, id=path.stem, source="user")
    except Exception as first:  # pymatgen does not know this format: ASE knows many more
        try:
            return Crystal.from_ase(ase.io.read(path), id=path.stem, source="user")
        except Exception as second:
            raise ValueError(f"{path}: cannot read a structure (pymatgen: {_error(first)}; "
                             f"ASE: {_error(second)})") from second


def read_any(path, format: str | None = None, limit: int | None = None, **options) -> Iterator[Crystal | Reject]:
    """Every record of one file, a Reject for each that cannot be used: a database file through
    `read` (its first `limit` records), otherwise one structure file (`read_single_structure`).
    A missing or unreadable file is one Reject naming the reason, so a caller reading many files
    reports it and goes on."""
    path = Path(path)
    if not path.exists():
        yield Reject("(file)", "", "no such file or directory", str(path))
        return
    try:
        format = format or detect_format(path)
    except ValueError:
        format = None
    try:
        if format is None:
            yield read_single_structure(path)
            return
        yield from itertools.islice(read(path, format, **options), limit)
    except Exception as exc:  # a whole file the readers cannot parse: report it, go on with the rest
        reason = str(exc).removeprefix(f"{path}: ") if isinstance(exc, ValueError) else _error(exc)
        yield Reject("(file)", "", reason if format is None else f"cannot read ({reason})", str(path))


def read_structures(path_or_paths, **options) -> Iterator[Crystal]:
    """Crystals from one path or many: database files via `read`, single structure files otherwise.

    Rejects of database files are skipped here (prediction has nothing to write for them); use
    `read` or `read_any` to see them. A single file that nothing can parse raises with the file named.
    """
    paths: Iterable = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else path_or_paths
    for path in map(Path, paths):
        for record in read_any(path, **options):
            if isinstance(record, Crystal):
                yield record
            elif record.id == "(file)":
                raise ValueError(f"{path}: {record.reason}")
