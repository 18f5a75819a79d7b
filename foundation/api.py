"""Using a checkpoint: predictions (`load_model`), frozen encoder features (`load_encoder`), and
the `foundation predict` / `foundation embed` commands.

    predictor = foundation.load_model("runs/sample")     # run dir, export dir, or a file inside it
    predictor.units                                      # {"band_gap": "eV", "is_metal": "probability", ...}
    out = predictor.predict([structure, atoms, crystal])
    # {"band_gap": [3] eV, "is_metal": [3] probability, "lips_forces": object [3] of [n_i, 3] eV/Å, ...}
    features = foundation.load_encoder("runs/sample").embed(structures)          # [n, F]
    per_atom = foundation.load_encoder("runs/sample").embed(structures, "atom")  # [Σ n_i, F]

Inputs are pymatgen `Structure`s, ASE `Atoms` or `Crystal`s, in any mix; every one is checked with
`foundation.data.validate` (atoms present, finite coordinates and cell, known elements, no two atoms
closer than 0.5 Å) and a bad one raises naming its position and id. Results keep the input order
and do not depend on `batch_size`: structures are disjoint graphs in a batch.

Encoder features are the encoder's per-atom invariants (`node_invariants`, the 0e channels after
the last block); the structure-level feature is their mean over the structure's atoms (the
encoder's `graph_features`), so it is invariant to rotation, translation, atom order and the
choice of periodic cell (a supercell gives the same features).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.crystal import Crystal
from .data.graph import Batch, collate, neighbor_graph
from .data.records import Reject
from .data.validate import validate
from .model import FoundationModel, TaskSpec, load_export
from .model.encoder import Encoder
from .model.export import ExportError

__all__ = ["Predictor", "Embedder", "load_model", "load_encoder", "as_crystals", "cli_main"]


# -- inputs ---------------------------------------------------------------------------------------
def as_crystals(items: Iterable[Any]) -> list[Crystal]:
    """Each item (pymatgen Structure/Molecule, ASE Atoms or Crystal) as a `Crystal`; items without an
    id of their own get their position, "#3". Raises TypeError naming the position of anything else."""
    crystals = []
    for index, item in enumerate(items):
        try:
            crystals.append(Crystal.from_any(item, id=f"#{index}"))
        except TypeError as exc:
            raise TypeError(f"structure {index}: {exc}") from None
    return crystals


def _model_input(crystal: Crystal, max_atomic_number: int) -> Crystal | str:
    """The crystal as the model takes it (labels dropped; a left-handed periodic cell replaced by
    the same lattice with every vector negated, positions unchanged), or why it cannot be used."""
    crystal = crystal.replace(targets={})
    if crystal.pbc.all() and np.isfinite(crystal.cell).all() and np.linalg.det(crystal.cell) < 0:
        crystal = crystal.replace(cell=-crystal.cell)
    checked = validate(crystal, allowed_elements=range(1, max_atomic_number + 1))
    return checked.reason if isinstance(checked, Reject) else checked


def _ready(crystals: list[Crystal], max_atomic_number: int) -> list[Crystal]:
    """`_model_input` of each crystal; raises ValueError naming the first one that fails."""
    ready = []
    for index, crystal in enumerate(crystals):
        checked = _model_input(crystal, max_atomic_number)
        if isinstance(checked, str):
            name = "" if crystal.id == f"#{index}" else f" (id {crystal.id!r})"
            raise ValueError(f"structure {index}{name} cannot be processed: {checked}")
        ready.append(checked)
    return ready


def _batches(crystals: list[Crystal], cutoff: float, dtype: torch.dtype, device: torch.device,
             batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of `batch_size` structures, in input order, on `device`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(crystals), batch_size):
        graphs = [neighbor_graph(c, cutoff) for c in crystals[start:start + batch_size]]
        yield collate(graphs, dtype=dtype).to(device)


def _np_dtype(dtype: torch.dtype) -> type:
    """The numpy dtype of `_numpy`'s results for a model in `dtype`."""
    return np.float64 if dtype == torch.float64 else np.float32


def _numpy(value: torch.Tensor) -> np.ndarray:
    value = value.detach().cpu()
    return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()


def _object_array(parts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        out[i] = part
    return out


def _progress(total: int | None, enabled: bool | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled if enabled is not None else None, unit="structure",
                desc=desc, dynamic_ncols=True)


# -- prediction -----------------------------------------------------------------------------------
@dataclass
class Predictor:
    """A loaded checkpoint in eval mode. `predict` returns every task, in physical units."""

    model: FoundationModel
    device: torch.device

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return dict(self.model.tasks)

    @property
    def units(self) -> dict[str, str]:
        """{task: unit of its predictions}; classification tasks give a "probability"."""
        return {name: "probability" if spec.kind == "classification" else spec.unit
                for name, spec in self.model.tasks.items()}

    def predict(self, structures: Iterable[Any], batch_size: int = 64, progress: bool = False,
                tasks: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """{task: predictions} for `structures`, in input order.

        Structure-level tasks give `[n]` (dim 1) or `[n, dim]`; atom-level tasks (forces, eV/Å)
        an object array of n arrays `[n_i, 3]` (`[n_i]` / `[n_i, dim]` for other atom tasks);
        classification tasks the probability of class 1 in [0, 1]. Arrays are in the model's dtype.
        `tasks` limits the output to those tasks (all by default); without force tasks no
        gradient is computed, which makes structure-level predictions several times faster.
        """
        crystals = _ready(as_crystals(structures), self.model.config.max_atomic_number)
        return self._run(crystals, batch_size, progress, self._selected(tasks))

    def _selected(self, tasks: Iterable[str] | None) -> list[str]:
        names = list(self.model.tasks) if tasks is None else list(tasks)
        unknown = [name for name in names if name not in self.model.tasks]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; this checkpoint has {list(self.model.tasks)}")
        return names

    def _forward(self, batch: Batch, names: list[str]) -> dict[str, torch.Tensor]:
        """Predictions of `names`; the whole model (forces need gradients) only when one is a force task."""
        if any(self.model.tasks[name].forces_of is not None for name in names):
            return self.model(batch)
        encoded = self.model.encoder(batch)
        return {name: self.model.heads[name](encoded, batch) for name in names}

    def _run(self, crystals: list[Crystal], batch_size: int, progress: bool | None,
             names: list[str]) -> dict[str, np.ndarray]:
        """`predict` of tasks `names` on crystals already through `_model_input`."""
        self.model.eval()
        dtype = next(self.model.parameters()).dtype
        specs = {name: self.model.tasks[name] for name in names}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with torch.no_grad(), _progress(len(crystals), progress, "predict") as bar:
            for batch in _batches(crystals, self.model.config.cutoff, dtype, self.device, batch_size):
                preds = self._forward(batch, names)
                splits = np.cumsum(_numpy(batch.n_atoms))[:-1]
                for name, spec in specs.items():
                    value = torch.sigmoid(preds[name]) if spec.kind == "classification" else preds[name]
                    value = _numpy(value)
                    parts[name].extend(np.split(value, splits) if spec.level == "atom" else [value])
                bar.update(batch.n_graphs)
        return {name: self._stack(parts[name], spec, dtype) for name, spec in specs.items()}

    @staticmethod
    def _stack(parts: list[np.ndarray], spec: TaskSpec, dtype: torch.dtype) -> np.ndarray:
        if spec.level == "atom":
            return _object_array(parts)
        if parts:
            return np.concatenate(parts)
        return np.zeros((0,) if spec.dim == 1 else (0, spec.dim), dtype=_np_dtype(dtype))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A `Predictor` for the export at `path`: an export directory, a run directory holding
    `export/`, or the `config.json` / `model.safetensors` inside an export. Anything else raises
    `ExportError` naming it; pickled checkpoints (`.pt`, `.ckpt`) are refused unopened."""
    device = torch.device(device)
    return Predictor(load_export(path, map_location=device), device)


# -- features -------------------------------------------------------------------------------------
@dataclass
class Embedder:
    """A checkpoint's encoder alone, in eval mode, for frozen features."""

    encoder: Encoder
    device: torch.device

    @property
    def n_features(self) -> int:
        """F: features per atom and per structure."""
        return self.encoder.n_invariants

    def embed(self, structures: Iterable[Any], level: str = "structure", batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """Encoder features of `structures`, in input order, in the model's dtype.

        level="structure": `[n, F]`, the mean of each structure's per-atom invariants;
        level="atom": `[Σ n_i, F]`, every structure's atoms in input order, one after another
        (rows of structure i start at the sum of the earlier structures' atom counts).
        """
        if level not in ("structure", "atom"):
            raise ValueError(f"level must be 'structure' or 'atom', got {level!r}")
        crystals = _ready(as_crystals(structures), self.encoder.config.max_atomic_number)
        return self._run(crystals, level, batch_size, progress)

    def _run(self, crystals: list[Crystal], level: str, batch_size: int, progress: bool | None) -> np.ndarray:
        """`embed` on crystals already through `_model_input`."""
        self.encoder.eval()
        dtype = next(self.encoder.parameters()).dtype
        key = "graph_features" if level == "structure" else "node_invariants"
        parts = []
        with torch.no_grad(), _progress(len(crystals), progress, "embed") as bar:
            for batch in _batches(crystals, self.encoder.config.cutoff, dtype, self.device, batch_size):
                parts.append(_numpy(self.encoder(batch)[key]))  # [n_graphs or n_atoms, F]
                bar.update(batch.n_graphs)
        if not parts:
            return np.zeros((0, self.n_features), dtype=_np_dtype(dtype))
        return np.concatenate(parts)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Embedder:
    """An `Embedder` for the encoder of the export at `path` (the path forms of `load_model`)."""
    device = torch.device(device)
    return Embedder(load_export(path, map_location=device).encoder.eval(), device)


# -- command line ---------------------------------------------------------------------------------
@dataclass
class _Record:
    file: str
    crystal: Crystal  # as read, labels included
    ready: Crystal  # model input


def _read_file(path: Path, format: str | None, limit: int | None) -> Iterator[Crystal | Reject]:
    """Records of one file: a database file through `foundation.data.readers.read`, otherwise a
    single CIF/POSCAR/extxyz/... structure (pymatgen, then ASE). Unreadable files become a Reject."""
    from .data.readers import _read_single_structure, detect_format, read

    if not path.exists():
        yield Reject("(file)", "", "no such file or directory", str(path))
        return
    try:
        format = format or detect_format(path)
    except ValueError:
        format = None
    try:
        if format is None:
            yield _read_single_structure(path)
            return
        yield from itertools.islice(read(path, format), limit)
    except Exception as exc:  # a whole file the readers cannot parse: report it, go on with the rest
        yield Reject("(file)", "", f"cannot read ({type(exc).__name__}: {exc})", str(path))


def _records(paths: list[Path], format: str | None, limit: int | None, max_z: int,
             rejects: list[tuple[str, Reject]]) -> Iterator[_Record]:
    """Usable records of every file, in file order; rejects (reader's or validation's) are appended."""
    for path in paths:
        for record in _read_file(path, format, limit):
            if isinstance(record, Reject):
                rejects.append((str(path), record))
                continue
            ready = _model_input(record, max_z)
            if isinstance(ready, str):
                rejects.append((str(path), Reject(record.id, record.source, ready, str(path))))
            else:
                yield _Record(str(path), record, ready)


def _chunks(records: Iterator[_Record], size: int) -> Iterator[list[_Record]]:
    while chunk := list(itertools.islice(records, size)):
        yield chunk


def _formula(numbers: np.ndarray) -> str:
    from ase.data import chemical_symbols
    from ase.formula import Formula

    return Formula.from_list([chemical_symbols[z] for z in numbers]).format("metal")


def _report(n_ok: int, rejects: list[tuple[str, Reject]], shown: int = 20) -> None:
    print(f"read {n_ok + len(rejects)} structure(s): {n_ok} used, {len(rejects)} rejected")
    for file, reject in rejects[:shown]:
        print(f"  rejected {file}: {reject.id}: {reject.reason}")
    if len(rejects) > shown:
        reasons = Counter(r.reason.split(" (")[0] for _, r in rejects[shown:])
        print(f"  ... and {len(rejects) - shown} more: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(5)))


def _columns(name: str, spec: TaskSpec, unit: str) -> list[str]:
    label = unit or "-"
    if spec.dim == 1:
        return [f"{name} ({label})"]
    return [f"{name}[{k}] ({label})" for k in range(spec.dim)]


def _truth_columns(columns: list[str]) -> list[str]:
    """"band_gap (eV)" -> "band_gap true"."""
    return [c.rsplit(" (", 1)[0] + " true" for c in columns]


def _numeric(label: Any) -> np.ndarray | None:
    """A label as a flat float array, or None when it is missing, not numeric or not finite."""
    try:
        value = np.asarray(label, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return value if label is not None and value.size and np.isfinite(value).all() else None


def _row(record: _Record, predictor: Predictor, values: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    crystal = record.crystal
    row: dict[str, Any] = {"file": record.file, "id": crystal.id, "formula": _formula(crystal.numbers),
                           "n_atoms": crystal.n_atoms}
    for name, spec in predictor.tasks.items():
        if spec.level != "structure":
            continue
        columns = _columns(name, spec, predictor.units[name])
        row.update(zip(columns, map(str, np.atleast_1d(values[name][i]))))  # float32: shortest repr
        label = _numeric(crystal.targets.get(spec.target))
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


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="export directory, run directory holding export/, or its config.json")
    parser.add_argument("files", nargs="+", type=Path,
                        help="structure files: any database file foundation reads, or single CIF/POSCAR/... files")
    parser.add_argument("--format", default=None, help="reader format for every file (default: detected per file)")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per model batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--limit", type=int, default=None, help="read at most N records of each file")


def _predict_main(args: argparse.Namespace) -> int:
    predictor = load_model(args.checkpoint, args.device)
    atom_tasks = [n for n, s in predictor.tasks.items() if s.level == "atom"]
    names = [n for n in predictor.tasks if args.forces_out or n not in atom_tasks]  # forces cost gradients
    rejects: list[tuple[str, Reject]] = []
    rows: list[dict[str, Any]] = []
    atom_parts: dict[str, list[np.ndarray]] = {n: [] for n in atom_tasks}
    kept: list[_Record] = []
    records = _records(args.files, args.format, args.limit, predictor.model.config.max_atomic_number, rejects)
    with _progress(None, None, "predict") as bar:
        for chunk in _chunks(records, args.batch_size):
            values = predictor._run([r.ready for r in chunk], args.batch_size, False, names)
            rows += [_row(record, predictor, values, i) for i, record in enumerate(chunk)]
            if args.forces_out:
                kept += chunk
                for name in atom_tasks:
                    atom_parts[name] += list(values[name])
            bar.update(len(chunk))
    _report(len(rows), rejects)
    _write_csv(rows, predictor, args.out)
    print(f"wrote {len(rows)} prediction row(s) of {len(predictor.tasks) - len(atom_tasks)} structure-level "
          f"task(s) to {args.out}")
    if atom_tasks and args.forces_out:
        _write_atom_predictions(args.forces_out, kept, atom_parts)
        print(f"wrote atom-level task(s) {atom_tasks} to {args.forces_out}")
    elif atom_tasks:
        print(f"atom-level task(s) {atom_tasks} are not CSV columns; --forces-out FILE.npz writes them")
    return 0 if rows else 1


def _write_atom_predictions(out: Path, records: list[_Record], parts: dict[str, list[np.ndarray]]) -> None:
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


def _labels(records: list[_Record]) -> dict[str, np.ndarray]:
    """{"label_<name>": [n] float, NaN where missing} for every scalar numeric label of the records."""
    def scalar(value: Any) -> float:
        number = _numeric(value) if np.ndim(value) == 0 else None
        return float(number[0]) if number is not None else np.nan

    names = sorted({k for r in records for k, v in r.crystal.targets.items() if np.isfinite(scalar(v))})
    return {f"label_{name}": np.array([scalar(r.crystal.targets.get(name)) for r in records]) for name in names}


def _embed_main(args: argparse.Namespace) -> int:
    embedder = load_encoder(args.checkpoint, args.device)
    rejects: list[tuple[str, Reject]] = []
    kept: list[_Record] = []
    parts: list[np.ndarray] = []
    records = _records(args.files, args.format, args.limit, embedder.encoder.config.max_atomic_number, rejects)
    with _progress(None, None, "embed") as bar:
        for chunk in _chunks(records, args.batch_size):
            parts.append(embedder._run([r.ready for r in chunk], args.level, args.batch_size, False))
            kept += chunk
            bar.update(len(chunk))
    _report(len(kept), rejects)
    n_atoms = np.array([r.crystal.n_atoms for r in kept], dtype=np.int64)
    features = np.concatenate(parts) if parts else np.zeros((0, embedder.n_features))
    extra = {}
    if args.level == "atom":
        extra = {"offsets": np.concatenate([[0], np.cumsum(n_atoms)]),
                 "numbers": np.concatenate([r.crystal.numbers for r in kept]) if kept else np.zeros(0, np.int64)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, features=features, level=np.array(args.level),
             ids=np.array([r.crystal.id for r in kept], dtype=str),
             files=np.array([r.file for r in kept], dtype=str), n_atoms=n_atoms, **extra, **_labels(kept))
    print(f"wrote {args.level}-level features {features.shape} to {args.out}")
    return 0 if kept else 1


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "predict":
        parser = argparse.ArgumentParser(
            prog="foundation predict", description="Predict every task of a checkpoint for structure files: "
            "one CSV row per structure, one column per structure-level task (classification: probability), "
            "and '<task> true' where the files carry the label.")
        _common_args(parser)
        parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
        parser.add_argument("--forces-out", type=Path, default=None,
                            help="also write atom-level tasks (forces) to this .npz")
        return parser
    if command == "embed":
        parser = argparse.ArgumentParser(
            prog="foundation embed", description="Frozen encoder features of structure files to .npz "
            "(features, ids, files, n_atoms, label_<name> for every label the files carry).")
        _common_args(parser)
        parser.add_argument("--out", type=Path, required=True, help=".npz to write")
        parser.add_argument("--level", choices=("structure", "atom"), default="structure",
                            help="structure: [n, F] means; atom: [Σ n_i, F] with offsets and numbers")
        return parser
    raise ValueError(f"foundation.api has no command {command!r}; it has predict and embed")


def cli_main(argv: list[str] | None = None, command: str = "predict") -> int:
    """`foundation predict ...` / `foundation embed ...`; returns the exit status."""
    args = _parser(command).parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
        print(f"foundation {command}: --batch-size must be >= 1 and --limit >= 0", file=sys.stderr)
        return 2
    try:
        return _predict_main(args) if command == "predict" else _embed_main(args)
    except ExportError as exc:
        print(f"foundation {command}: {exc}", file=sys.stderr)
        return 2
