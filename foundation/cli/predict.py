"""`foundation predict CKPT FILES... --out predictions.csv`: every structure-level task of a
checkpoint for structure files, one CSV row per structure (classification: probability), and
'<task> true' where the files carry the label; atom-level tasks (forces) to .npz on request."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Predictor, load_model, progress_bar
from ..data.records import Reject
from ..model import TaskSpec
from ._structures import Record, chunks, common_args, formula, numeric, read_records, report, run_command


__all__ = ["parse_args", "cli_main"]


def _columns(name: str, spec: TaskSpec, unit: str) -> list[str]:
    label = unit or "-"
    if spec.dim == 1:
        return [f"{name} ({label})"]
    return [f"{name}[{k}] ({label})" for k in range(spec.dim)]


def _truth_columns(columns: list[str]) -> list[str]:
    """"band_gap (eV)" -> "band_gap true"."""
    return [c.rsplit(" (", 1)[0] + " true" for c in columns]


def _row(record: Record, predictor: Predictor, values: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    crystal = record.crystal
    row: dict[str, Any] = {"file": record.file, "id": crystal.id, "formula": formula(crystal.numbers),
                           "n_atoms": crystal.n_atoms}
    for name, spec in predictor.tasks.items():
        if spec.level != "structure":
            continue
        columns = _columns(name, spec, predictor.units[name])
        row.update(zip(columns, map(str, np.atleast_1d(values[name][i]))))  # float32: shortest repr
        label = numeric(crystal.targets.get(spec.target))
        if label is not None and label.size == spec.dim:
            row.update(zip(_truth_columns(columns), label.tolist()))
    return row


def _write_csv(rows: list[dict[str, Any]], predictor: Predictor, out: Path) -> None:
    header = ["file", "id", "formula", "n_atoms"]
    present = {key for row in rows for key in row}
    for name, spec in predictor.tasks.items():
        if spec.level == "structure":
            columns = _columns(name, spec, predictor.units[name])
            header += columns + [t for t in _truth_columns(columns) if t in present]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _predict_main(args: argparse.Namespace) -> int:
    predictor = load_model(args.checkpoint, args.device)
    atom_tasks = [n for n, s in predictor.tasks.items() if s.level == "atom"]
    names = [n for n in predictor.tasks if args.forces_out or n not in atom_tasks]  # forces cost gradients
    rejects: list[tuple[str, Reject]] = []
    rows: list[dict[str, Any]] = []
    atom_parts: dict[str, list[np.ndarray]] = {n: [] for n in atom_tasks}
    kept: list[Record] = []
    found = read_records(args.files, args.format, args.limit, predictor.model.config.max_atomic_number, rejects)
    with progress_bar(None, None, "predict") as bar:
        for chunk in chunks(found, args.batch_size):
            values = predictor.run([r.ready for r in chunk], args.batch_size, False, names)
            rows += [_row(record, predictor, values, i) for i, record in enumerate(chunk)]
            if args.forces_out:
                kept += chunk
                for name in atom_tasks:
                    atom_parts[name] += list(values[name])
            bar.update(len(chunk))
    report(len(rows), rejects)
    _write_csv(rows, predictor, args.out)
    print(f"wrote {len(rows)} prediction row(s) of {len(predictor.tasks) - len(atom_tasks)} structure-level "
          f"task(s) to {args.out}")
    if atom_tasks and args.forces_out:
        _write_atom_predictions(args.forces_out, kept, atom_parts)
        print(f"wrote atom-level task(s) {atom_tasks} to {args.forces_out}")
    elif atom_tasks:
        print(f"atom-level task(s) {atom_tasks} are not CSV columns; --forces-out FILE.npz writes them")
    return 0 if rows else 1


def _write_atom_predictions(out: Path, records: list[Record], parts: dict[str, list[np.ndarray]]) -> None:
    """npz: ids, files, n_atoms [n], offsets [n + 1] (rows of structure i: offsets[i]:offsets[i+1]),
    numbers [Σ n_i], and one [Σ n_i, dim] array per atom-level task."""
    n_atoms = np.array([r.crystal.n_atoms for r in records], dtype=np.int64)
    arrays = {name: np.concatenate(v) if v else np.zeros((0, 3)) for name, v in parts.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, ids=np.array([r.crystal.id for r in records], dtype=str),
             files=np.array([r.file for r in records], dtype=str), n_atoms=n_atoms,
             offsets=np.concatenate([[0], np.cumsum(n_atoms)]),
             numbers=np.concatenate([r.crystal.numbers for r in records]) if records else np.zeros(0, np.int64),
             **arrays)


def parse_args(argv: list[str], command: str = "predict") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0])
    common_args(parser)
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    parser.add_argument("--forces-out", type=Path, default=None, help="also write atom-level tasks (forces) to this .npz")
    return parser.parse_args(argv)


def cli_main(argv: list[str] | None = None, command: str = "predict") -> int:
    """`foundation predict ...`; returns the exit status."""
    return run_command(parse_args(argv, command), _predict_main, command)
