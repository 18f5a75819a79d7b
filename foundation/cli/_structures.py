"""What `foundation predict` and `foundation embed` share: the checkpoint and files arguments, the
records of many files with their rejects (a file or record that cannot be used is reported and
counted, the others go on), batching, and the report of what was used."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from ase.formula import Formula

from ..api import model_input
from ..data.crystal import Crystal
from ..data.readers import read_any
from ..data.records import Reject
from ..model.export import ExportError

__all__ = ["Record", "common_args", "read_records", "chunks", "report", "formula", "numeric", "labels", "run_command"]


@dataclass
class Record:
    file: str
    crystal: Crystal  # as read, labels included
    ready: Crystal  # model input


def read_records(paths: list[Path], format: str | None, limit: int | None, max_z: int,
            rejects: list[tuple[str, Reject]]) -> Iterator[Record]:
    """Usable records of every file, in file order; rejects (reader's or validation's) are appended."""
    for path in paths:
        for record in read_any(path, format, limit):
            if isinstance(record, Reject):
                rejects.append((str(path), record))
                continue
            ready = model_input(record, max_z)
            if isinstance(ready, str):
                rejects.append((str(path), Reject(record.id, record.source, ready, str(path))))
            else:
                yield Record(str(path), record, ready)


def chunks(items: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def formula(numbers: np.ndarray) -> str:
    return Formula.from_list([chemical_symbols[z] for z in numbers]).format("metal")


def report(n_ok: int, rejects: list[tuple[str, Reject]], shown: int = 20) -> None:
    print(f"read {n_ok + len(rejects)} structure(s): {n_ok} used, {len(rejects)} rejected")
    for file, reject in rejects[:shown]:
        print(f"  rejected {file}: {reject.id}: {reject.reason}")
    if len(rejects) > shown:
        reasons = Counter(r.reason.split(" (")[0] for _, r in rejects[shown:])
        print(f"  ... and {len(rejects) - shown} more: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(5)))


def numeric(label: Any) -> np.ndarray | None:
    """A label as a flat float array, or None when it is missing, not numeric or not finite."""
    try:
        value = np.asarray(label, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return value if label is not None and value.size and np.isfinite(value).all() else None


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="export directory, run directory holding export/, its config.json, "
                        "or the name of a shipped model (foundation.pretrained.available())")
    parser.add_argument("files", nargs="+", type=Path,
                        help="structure files: any database file foundation reads, or single CIF/POSCAR/... files")
    parser.add_argument("--format", default=None, help="reader format for every file (default: detected per file)")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per model batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--limit", type=int, default=None, help="read at most N records of each file")


def labels(records: list[Record]) -> dict[str, np.ndarray]:
    """{"label_<name>": [n] float, NaN where missing} for every scalar numeric label of the records."""
    def scalar(value: Any) -> float:
        number = numeric(value) if np.ndim(value) == 0 else None
        return float(number[0]) if number is not None else np.nan

    names = sorted({k for r in records for k, v in r.crystal.targets.items() if np.isfinite(scalar(v))})
    return {f"label_{name}": np.array([scalar(r.crystal.targets.get(name)) for r in records]) for name in names}


def run_command(args: argparse.Namespace, main: Callable[[argparse.Namespace], int], command: str) -> int:
    """`main(args)` after the shared argument checks; a checkpoint that is not an export is one
    line on stderr and exit status 2."""
    if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
        print(f"foundation {command}: --batch-size must be >= 1 and --limit >= 0", file=sys.stderr)
        return 2
    try:
        return main(args)
    except ExportError as exc:
        print(f"foundation {command}: {exc}", file=sys.stderr)
        return 2
