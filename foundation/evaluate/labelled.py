"""Labelled records of a file for `foundation evaluate`: read as `foundation finetune` reads its
data (path forms, reader options, native label names, derived labels), every record validated,
rejects counted with their reasons; and the checkpoint task that predicts a target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import readers
from ..data.crystal import Crystal
from ..data.labels import derived_label, target_aliases
from ..data.records import Reject
from ..data.validate import validate
from ..train.config import DatasetConfig
from ..train.resolve import resolve_dataset

__all__ = ["LabelledData", "read_labelled", "select_task"]


@dataclass
class LabelledData:
    """The kept records of a file with their labels for one target, and what was rejected."""

    path: str  # as given (a file, a directory, "ase:dcdft")
    file: str  # the file read
    format: str
    target: str  # canonical label key in `Crystal.targets` (e.g. heat_all -> formation_energy)
    crystals: list[Crystal]  # kept records, in file order
    labels: np.ndarray  # [n] float64, NaN where a record has no label
    rejects: list[Reject] = field(default_factory=list)
    read: int = 0  # records read = len(crystals) + len(rejects)
    options: dict[str, Any] = field(default_factory=dict)  # reader options used
    derive: dict[str, str] = field(default_factory=dict)  # derived labels (finetune's data.derive)

    @property
    def labelled(self) -> np.ndarray:
        """Indices `[m]` of the records that carry a label, in file order."""
        return np.flatnonzero(~np.isnan(self.labels))


def _read_records(path: str, fmt: str, options: Mapping[str, Any], limit: int | None,
                  derive: Mapping[str, str]) -> tuple[list[Crystal], list[Reject]]:
    """The first `limit` records, each validated (defaults) and given its `derive`d labels."""
    crystals, rejects = [], []
    for i, record in enumerate(readers.read(path, fmt, **options)):
        if limit is not None and i >= limit:
            break
        if isinstance(record, Crystal):
            for name, expr in derive.items():
                value = derived_label(expr, record.targets)
                if value is not None:
                    record.targets[name] = value
            record = validate(record, path=path)
        (crystals if isinstance(record, Crystal) else rejects).append(record)
    return crystals, rejects


def _resolve_target(name: str, present: set[str]) -> str | None:
    if name in present:
        return name
    alias = target_aliases().get(name)
    return alias if alias in present else None


def read_labelled(path: str | Path, target: str, format: str | None = None, *, limit: int | None = None,
                  options: Mapping[str, Any] | None = None, derive: Mapping[str, str] | None = None) -> LabelledData:
    """Read the first `limit` records (all: None) of `path` and the labels of `target`, as
    `foundation finetune` reads its data: the same path forms ("ase:dcdft" too), reader `options`,
    native label names (`heat_all`, `e_form`, `gap`) and `derive`d labels (`{"log10_k":
    "log10(bulk_modulus)"}`); a CSV column the reader does not map by default is read on request.
    Raises ValueError naming the file and listing the targets present when `target` is absent."""
    ds = resolve_dataset(DatasetConfig(path=str(path), format=format, options=dict(options or {})), "data")
    file, fmt, options = ds.path, ds.format, dict(ds.options)
    derive = dict(derive or {})
    crystals, rejects = _read_records(file, fmt, options, limit, derive)
    present = {k for c in crystals for k in c.targets}
    key = _resolve_target(target, present)
    if key is None and fmt == "cif_csv" and "targets" not in options:  # any CSV column may be a label
        try:
            crystals, rejects = _read_records(file, fmt, {**options, "targets": [target]}, limit, derive)
            key = _resolve_target(target, {k for c in crystals for k in c.targets})
        except ValueError:
            key = None
    if key is None:
        raise ValueError(f"{path}: no target {target!r} in this file ({fmt} format); "
                         f"targets present: {sorted(present) or 'none'}")
    labels = np.full(len(crystals), np.nan)
    for i, crystal in enumerate(crystals):
        value = crystal.targets.get(key)
        if value is not None and np.size(value) != 1:
            raise ValueError(f"{path}: record {crystal.id!r}: target {key!r} is not a scalar "
                             f"(shape {np.shape(value)}); evaluate scores scalar structure labels")
        labels[i] = np.nan if value is None else float(np.asarray(value).reshape(()))
    return LabelledData(str(path), file, fmt, key, crystals, labels, rejects, len(crystals) + len(rejects),
                        options, derive)


def select_task(tasks: Mapping[str, Any], target: str, *names: str, task: str | None = None):
    """The TaskSpec of `tasks` that predicts `target` (or any of the alias `names`), or `task` by name.

    Raises ValueError listing the tasks (name: target) when none or several match, or when the
    chosen task is not a structure-level task."""
    listing = ", ".join(f"{n} (target {t.target}, {t.level})" for n, t in tasks.items()) or "none"
    if task is not None:
        if task not in tasks:
            raise ValueError(f"the checkpoint has no task {task!r}; its tasks: {listing}")
        chosen = tasks[task]
    else:
        wanted = {target, *names}
        matches = [t for t in tasks.values() if t.target in wanted and t.level == "structure"]
        if not matches:
            raise ValueError(f"the checkpoint has no task for target {target!r}; its tasks: {listing}")
        if len(matches) > 1:
            raise ValueError(f"several tasks predict {target!r}: {[t.name for t in matches]}; "
                             "choose one with --task")
        chosen = matches[0]
    if chosen.level != "structure" or chosen.dim != 1:
        raise ValueError(f"task {chosen.name!r} is {chosen.level} level with dim {chosen.dim}: "
                         "evaluate scores scalar structure-level tasks")
    return chosen
