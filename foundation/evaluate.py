"""Evaluate a checkpoint on a labelled file: `foundation evaluate CKPT --data FILE --target NAME`.

    foundation evaluate runs/ft/export --data perov5_val.csv --target heat_all --out eval/
        -> eval/report.json, eval/parity.png (roc.png for classification), eval/predictions.csv
    foundation evaluate runs/pretrain/export --data matbench_perovskites.json.gz --target e_form \
        --folds 5 --config configs/finetune/formation_energy.yaml max_steps=2000 --out eval/
        -> the MatBench protocol: 5 fine-tunes (eval/fold0 ... eval/fold4), out-of-fold metrics

Single evaluation: every record of the file is read (`foundation.data.readers`) and validated
(`foundation.data.validate`, defaults); rejected records are counted and listed with their reasons.
The checkpoint's task for the target (or `--task`) predicts every kept record; records without a
label are predicted but not scored (`missing_label`).

MatBench protocol (`--folds 5`): the labelled records, in file order, are split by
`sklearn.model_selection.KFold(5, shuffle=True, random_state=18012019)` as MatBench does. For
fold k the four other folds are fine-tuned on (`foundation.train.finetune.finetune` with a
`FoldSplit`), a seeded 10% of them held out for early stopping; the fine-tune computes its
normalisation from its own train split, so nothing of the test fold leaks into it. Its export then
predicts fold k. The report gives each fold's metrics, the mean ± std of MAE over folds and the
metrics of the pooled out-of-fold predictions (every record predicted exactly once).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import to_dict
from .data.crystal import Crystal
from .data.records import Reject
from .data.shards import sha256_file
from .data.targets import target_info

__all__ = [
    "regression_metrics", "classification_metrics", "LabelledData", "read_labelled", "select_task",
    "parity_plot", "roc_plot", "evaluate_checkpoint", "fold_indices", "FoldSplit", "fold_config", "evaluate_folds",
    "MATBENCH_RANDOM_STATE", "cli_main",
]

MATBENCH_RANDOM_STATE = 18012019  # sklearn KFold seed of every MatBench task
_SHOWN_REJECTS = 50  # rejects listed in report.json (all are counted)


# -- metrics ---------------------------------------------------------------------------------------
def _labelled(y_true, y_other) -> tuple[np.ndarray, np.ndarray, int]:
    """`(labels, predictions, n_missing)` with records whose label is NaN removed."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_other = np.asarray(y_other, dtype=np.float64).reshape(-1)
    if y_true.shape != y_other.shape:
        raise ValueError(f"{len(y_true)} labels but {len(y_other)} predictions")
    keep = ~np.isnan(y_true)
    if not keep.any():
        raise ValueError(f"no labelled record among {len(y_true)}: nothing to score")
    return y_true[keep], y_other[keep], int((~keep).sum())


def regression_metrics(y_true, y_pred) -> dict[str, float | int]:
    """MAE, RMSE, R² of `y_pred` against `y_true` (both `[n]`, same unit); NaN labels are skipped.

    `mean_baseline_mae` is the MAE of always predicting the mean of the scored labels (the number
    to beat); `r2` is NaN for fewer than two records."""
    from sklearn.metrics import r2_score

    y, p, missing = _labelled(y_true, y_pred)
    error = p - y
    return {
        "n": int(len(y)),
        "missing_label": missing,
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan"),
        "max_abs_error": float(np.max(np.abs(error))),
        "mean_baseline_mae": float(np.mean(np.abs(y - y.mean()))),
    }


def classification_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float | int]:
    """ROC-AUC, accuracy at `threshold`, log-loss of probabilities `prob` `[n]` in [0, 1] against
    labels `y_true` `[n]` in {0, 1}; NaN labels are skipped. `roc_auc` is NaN when only one class is
    present; `majority_baseline_accuracy` is the accuracy of always predicting the commoner class."""
    from sklearn.metrics import log_loss, roc_auc_score

    y, p, missing = _labelled(y_true, prob)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"classification labels must be 0 or 1, got {sorted(set(y.tolist()))[:5]}")
    if np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise ValueError("classification predictions must be probabilities in [0, 1]")
    both = len(np.unique(y)) == 2
    positive = float(y.mean())
    return {
        "n": int(len(y)),
        "missing_label": missing,
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "accuracy": float(np.mean((p >= threshold) == (y == 1))),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "positive_fraction": positive,
        "majority_baseline_accuracy": max(positive, 1 - positive),
    }


# -- data --------------------------------------------------------------------------------------------
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
    from .data import readers
    from .data.validate import validate
    from .train.finetune_data import derived_label

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
    from .train.finetune_config import target_aliases

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
    from .train.finetune_config import DataConfig, resolve_data

    file, fmt, options, _ = resolve_data(DataConfig(path=str(path), format=format, options=dict(options or {})))
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


# -- checkpoint tasks --------------------------------------------------------------------------------
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


def _predict(checkpoint: str | Path, crystals: Sequence[Crystal], target: str, aliases: Sequence[str],
             task: str | None, batch_size: int, device: str,
             among: Sequence[str] | None = None) -> tuple[Any, np.ndarray]:
    """`(TaskSpec, predictions [n])` of the checkpoint's task for `target` (chosen among the tasks
    named `among`, all when None) on `crystals`."""
    from .api import load_model

    predictor = load_model(checkpoint, device=device)
    tasks = {n: t for n, t in predictor.tasks.items() if among is None or n in among}
    spec = select_task(tasks, target, *aliases, task=task)
    out = predictor.predict(list(crystals), batch_size=batch_size, progress=True)
    return spec, np.asarray(out[spec.name], dtype=np.float64).reshape(len(crystals))


def _metrics(kind: str, labels: np.ndarray, preds: np.ndarray) -> dict[str, float | int]:
    if kind == "classification":
        return classification_metrics(labels, preds)
    return regression_metrics(labels, preds)


# -- plots -------------------------------------------------------------------------------------------
def _axes():
    """A 5 x 5 inch figure and its axes, drawn by matplotlib's Agg canvas (no pyplot, so the
    caller's backend and open figures are left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=120)
    return fig, fig.subplots()


def parity_plot(y_true, y_pred, path: str | Path, *, name: str, unit: str, title: str = "") -> Path:
    """Predicted against true (`[n]` each, NaN labels skipped) with the y = x line; MAE and R² in
    the title, `true/predicted name [unit]` on the axes. Written as PNG."""
    m = regression_metrics(y_true, y_pred)
    y, p, _ = _labelled(y_true, y_pred)
    label = f"{name} [{unit}]" if unit else name
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    lo, hi = lo - 0.03 * (hi - lo or 1.0), hi + 0.03 * (hi - lo or 1.0)
    fig, ax = _axes()
    ax.scatter(y, p, s=8, alpha=0.5, edgecolors="none")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"true {label}", ylabel=f"predicted {label}", aspect="equal")
    ax.set_title(f"{title}\nMAE {m['mae']:.4g} {unit}, R² {m['r2']:.3f}, n = {m['n']}".strip(), fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def roc_plot(y_true, prob, path: str | Path, *, name: str, title: str = "") -> Path:
    """ROC curve of probabilities `prob` `[n]` against 0/1 labels `y_true` `[n]`, AUC in the title.
    Written as PNG (the chance diagonal only when one class is present)."""
    from sklearn.metrics import roc_curve

    m = classification_metrics(y_true, prob)
    y, p, _ = _labelled(y_true, prob)
    fig, ax = _axes()
    if not np.isnan(m["roc_auc"]):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.5, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate", aspect="equal")
    ax.set_title(f"{title}\nROC-AUC {m['roc_auc']:.3f}, accuracy {m['accuracy']:.3f}, n = {m['n']}".strip(),
                 fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _plot(kind: str, labels, preds, out: Path, name: str, unit: str, title: str) -> Path:
    if kind == "classification":
        return roc_plot(labels, preds, out / "roc.png", name=name, title=title)
    return parity_plot(labels, preds, out / "parity.png", name=name, unit=unit, title=title)


# -- single evaluation -------------------------------------------------------------------------------
def _report_head(checkpoint: str | Path, data: LabelledData, requested: str) -> dict[str, Any]:
    from . import __version__

    return {
        "foundation_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": {"path": data.path, "file": str(Path(data.file).resolve()), "format": data.format,
                 "options": data.options, "derive": data.derive,
                 "sha256": sha256_file(data.file) if Path(data.file).is_file() else None},
        "target": requested,
        "label": data.target,
        "counts": {"read": data.read, "kept": len(data.crystals), "rejected": len(data.rejects),
                   "missing_label": int(np.isnan(data.labels).sum()), "scored": len(data.labelled)},
        "rejects": [{"id": r.id, "reason": r.reason} for r in data.rejects[:_SHOWN_REJECTS]],
    }


def _write_predictions(path: Path, data: LabelledData, preds: np.ndarray, fold: np.ndarray | None = None) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "true", "predicted"] + (["fold"] if fold is not None else []))
        for i, crystal in enumerate(data.crystals):
            if not np.isnan(preds[i]):
                row = [crystal.id, repr(float(data.labels[i])), repr(float(preds[i]))]
                writer.writerow(row + ([int(fold[i])] if fold is not None else []))


def evaluate_checkpoint(checkpoint: str | Path, data: LabelledData, out: str | Path, *, requested: str = "",
                        task: str | None = None, batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """Score `checkpoint`'s task for `data.target` on every record of `data`; write
    `out/report.json`, `out/predictions.csv` and `out/parity.png` (`out/roc.png` for
    classification). Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    requested = requested or data.target
    spec, preds = _predict(checkpoint, data.crystals, data.target, (requested,), task, batch_size, device)
    unit = spec.unit or target_info(data.target).unit
    report = _report_head(checkpoint, data, requested)
    report.update(task=spec.name, kind=spec.kind, unit=unit, metrics=_metrics(spec.kind, data.labels, preds))
    _write_predictions(out / "predictions.csv", data, preds)
    title = f"{spec.name} on {Path(data.file).name}"
    report["plot"] = _plot(spec.kind, data.labels, preds, out, requested, unit, title).name
    report["predictions"] = "predictions.csv"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# -- MatBench folds ----------------------------------------------------------------------------------
def fold_indices(n: int, n_folds: int = 5, random_state: int = MATBENCH_RANDOM_STATE,
                 val_fraction: float = 0.1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`[(train, val, test)]` positions into `range(n)` for each fold.

    test: the folds of `KFold(n_folds, shuffle=True, random_state)` on `range(n)` (MatBench's);
    val: a `val_fraction` of the other folds (at least one record), drawn with a generator seeded
    by `(random_state, fold)`; train: the rest. All three sorted."""
    from sklearn.model_selection import KFold

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2 * n_folds:
        raise ValueError(f"{n} labelled records are too few for {n_folds} folds (need at least {2 * n_folds})")
    splits = []
    for k, (rest, test) in enumerate(KFold(n_folds, shuffle=True, random_state=random_state).split(np.arange(n))):
        order = np.random.default_rng([random_state, k]).permutation(rest)
        n_val = max(1, round(val_fraction * len(rest)))
        splits.append((np.sort(order[n_val:]), np.sort(order[:n_val]), np.sort(test)))
    return splits


@dataclass(frozen=True)
class FoldSplit:
    """One fold's split for `finetune(cfg, split=...)`: `assign(crystal)` by record id."""

    roles: Mapping[str, str]  # record id -> "train" | "val" | "test"
    fold: int
    n_folds: int
    random_state: int
    val_fraction: float

    @classmethod
    def from_indices(cls, ids: Sequence[str], train, val, test, **fields) -> "FoldSplit":
        roles = {ids[i]: name for name, part in (("train", train), ("val", val), ("test", test)) for i in part}
        return cls(roles=roles, **fields)

    def assign(self, crystal: Crystal) -> str:
        try:
            return self.roles[crystal.id]
        except KeyError:
            raise ValueError(f"record {crystal.key!r} is not among the {len(self.roles)} records of the "
                             f"fold split (fold {self.fold} of {self.n_folds})") from None

    def to_json(self) -> dict[str, Any]:
        listing = "\n".join(f"{i}\t{r}" for i, r in sorted(self.roles.items()))
        counts = {s: sum(r == s for r in self.roles.values()) for s in ("train", "val", "test")}
        return {"protocol": "matbench_kfold", "n_folds": self.n_folds, "fold": self.fold,
                "random_state": self.random_state, "val_fraction": self.val_fraction, "records": counts,
                "roles_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _summary(values: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0))}


def fold_config(template: Any, checkpoint: str | Path, data: LabelledData, requested: str, run_dir: str | Path,
                limit: int | None = None) -> Any:
    """The FinetuneConfig of one fold: `template` (budget, optimiser, freezing, ...) on `data`'s file
    with its format, options and derived labels, from `checkpoint`, into `run_dir`. The template's
    tasks are kept when one of them predicts the target; otherwise one task for `requested`."""
    import dataclasses

    wanted = {requested, data.target}
    tasks = template.tasks
    if not any(t.get("target") in wanted or t.get("name") in wanted for t in tasks):
        tasks = [{"target": requested}]
    section = dataclasses.replace(template.data, path=data.path, format=data.format, options=dict(data.options),
                                  derive=dict(data.derive), limit=limit)
    return dataclasses.replace(template, checkpoint=str(checkpoint), data=section, tasks=tasks, run_dir=str(run_dir))


def evaluate_folds(checkpoint: str | Path, data: LabelledData, out: str | Path, template: Any, *,
                   requested: str = "", task: str | None = None, n_folds: int = 5,
                   random_state: int = MATBENCH_RANDOM_STATE, val_fraction: float = 0.1, limit: int | None = None,
                   batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """The MatBench protocol: for each fold k, fine-tune `checkpoint` with the `template`
    FinetuneConfig (`fold_config`, run dir `out/fold{k}`) on the other folds, then predict fold k
    with the fine-tuned export. `limit` must be the one `data` was read with (the fine-tunes read
    the same records). Writes `out/report.json` (per-fold and pooled out-of-fold metrics, mean ±
    std over folds), `out/predictions.csv` (out-of-fold, with the fold) and the pooled
    parity/ROC plot. Returns the report."""
    from .train.finetune import finetune

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    requested = requested or data.target
    scored = data.labelled
    ids = [data.crystals[i].id for i in scored]
    if len(set(ids)) < len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{data.path}: record ids repeat ({repeated[:5]}): the fold split needs unique ids")
    preds, fold_of = np.full(len(data.crystals), np.nan), np.full(len(data.crystals), -1)
    folds, spec = [], None
    for k, (train, val, test) in enumerate(fold_indices(len(scored), n_folds, random_state, val_fraction)):
        split = FoldSplit.from_indices(ids, train, val, test, fold=k, n_folds=n_folds,
                                       random_state=random_state, val_fraction=val_fraction)
        summary = finetune(fold_config(template, checkpoint, data, requested, out / f"fold{k}", limit), split=split)
        held_out = scored[test]
        spec, fold_preds = _predict(summary["export"], [data.crystals[i] for i in held_out], data.target,
                                    (requested,), task, batch_size, device, among=summary.get("tasks"))
        preds[held_out], fold_of[held_out] = fold_preds, k
        folds.append({"fold": k, "records": {"train": len(train), "val": len(val), "test": len(test)},
                      "metrics": _metrics(spec.kind, data.labels[held_out], fold_preds),
                      "best_step": summary.get("best_step"), "steps": summary.get("steps"),
                      "export": str(summary["export"]), "finetune_test": summary.get("test", {}).get(spec.name),
                      "split": split.to_json()})
    main = "roc_auc" if spec.kind == "classification" else "mae"
    report = _report_head(checkpoint, data, requested)
    report.update(task=spec.name, kind=spec.kind, unit=spec.unit or target_info(data.target).unit,
                  metrics=_metrics(spec.kind, data.labels, preds),
                  folds={"protocol": f"sklearn KFold(n_splits={n_folds}, shuffle=True, "
                                     f"random_state={random_state}) over the labelled records in file order",
                         "val_fraction": val_fraction, "finetune_config": to_dict(template),
                         main: _summary([f["metrics"][main] for f in folds]), "per_fold": folds})
    _write_predictions(out / "predictions.csv", data, preds, fold_of)
    title = f"{n_folds}-fold out-of-fold {spec.name} on {Path(data.file).name}"
    report["plot"] = _plot(spec.kind, data.labels, preds, out, requested, report["unit"], title).name
    report["predictions"] = "predictions.csv"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# -- command line ------------------------------------------------------------------------------------
def _table(report: dict[str, Any]) -> str:
    unit = report["unit"]
    counts = report["counts"]
    lines = [f"{report['task']} ({report['kind']}, target {report['target']}) on {report['data']['path']}",
             f"records: {counts['read']} read, {counts['rejected']} rejected, "
             f"{counts['missing_label']} without label, {counts['scored']} scored"]
    if "folds" in report:
        main = "roc_auc" if report["kind"] == "classification" else "mae"
        names = [m for m in ("mae", "rmse", "r2", "roc_auc", "accuracy") if m in report["metrics"]]
        lines.append(f"{'fold':>6} {'train':>6} {'val':>5} {'test':>5} " + " ".join(f"{m:>10}" for m in names))
        for f in report["folds"]["per_fold"]:
            r = f["records"]
            lines.append(f"{f['fold']:>6} {r['train']:>6} {r['val']:>5} {r['test']:>5} "
                         + " ".join(f"{f['metrics'][m]:>10.4g}" for m in names))
        s = report["folds"][main]
        lines.append(f"{main} over folds: {s['mean']:.4g} ± {s['std']:.4g} {unit if main == 'mae' else ''}".rstrip())
        lines.append("pooled out-of-fold:")
    for name, value in report["metrics"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        suffix = f" {unit}" if unit and name in ("mae", "rmse", "max_abs_error", "mean_baseline_mae") else ""
        lines.append(f"  {name:<28} {shown}{suffix}")
    return "\n".join(lines)


def parse_args(argv: list[str], command: str = "evaluate") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="export directory (or a run dir holding export/)")
    parser.add_argument("overrides", nargs="*", help="--folds only: finetune config key.path=value (YAML values)")
    parser.add_argument("--data", required=True, help="labelled structure file (any readers format, or ase:dcdft)")
    parser.add_argument("--target", required=True, help="label to score: canonical name or the file's column")
    parser.add_argument("--task", default=None, help="the checkpoint's task to use when several predict the target")
    parser.add_argument("--format", default=None, help="reader format (default: detected)")
    parser.add_argument("--limit", type=int, default=None, help="first N records of the file only")
    parser.add_argument("--derive", action="append", default=[], metavar="NAME=EXPR",
                        help="a label computed from the file's: 'key', 'log10(key)' or 'key <= 0' (repeatable)")
    parser.add_argument("--out", default="evaluation", help="output directory (default: ./evaluation)")
    parser.add_argument("--batch-size", type=int, default=64, help="structures per prediction batch")
    parser.add_argument("--device", default="cpu", help="torch device for prediction")
    parser.add_argument("--folds", type=int, default=None, help="MatBench protocol: fine-tune and score N folds")
    parser.add_argument("--config", default=None, help="--folds: configs/finetune/<name>.yaml (budget, optimiser, ...)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="--folds: part of the training folds held out for early stopping")
    parser.add_argument("--seed", type=int, default=MATBENCH_RANDOM_STATE, help="--folds: KFold random_state")
    args = parser.parse_intermixed_args(argv)
    if args.folds is None and (args.config or args.overrides):
        parser.error("--config and key=value overrides apply to --folds only")
    if args.folds is not None and args.folds < 2:
        parser.error("--folds needs N >= 2")
    if (args.limit is not None and args.limit < 1) or args.batch_size < 1:
        parser.error("--limit and --batch-size must be >= 1")
    bad = [d for d in args.derive if "=" not in d]
    if bad:
        parser.error(f"--derive takes NAME=EXPR, got {bad}")
    args.derive = dict(d.split("=", 1) for d in args.derive)
    return args


def _template(args: argparse.Namespace) -> Any:
    """The fold FinetuneConfig template, as `foundation finetune --config C --data FILE [k=v ...]`
    builds it (no config: one task for --target, 20 epochs unless the overrides set a budget)."""
    from .train.finetune import config_from_args

    flags = dict(config=args.config, checkpoint=args.checkpoint, freeze=None, lr_decay=None, keep_heads=None,
                 run_dir=None, data=args.data, format=args.format, task_name=None, kind=None,
                 target=None if args.config else args.target, overrides=args.overrides)
    return config_from_args(argparse.Namespace(**flags))


def cli_main(argv: list[str], command: str = "evaluate") -> int:
    from .model.export import ExportError

    args = parse_args(argv, command)
    try:
        if args.folds is None:
            data = read_labelled(args.data, args.target, args.format, limit=args.limit, derive=args.derive)
            report = evaluate_checkpoint(args.checkpoint, data, args.out, requested=args.target, task=args.task,
                                         batch_size=args.batch_size, device=args.device)
        else:
            template = _template(args)
            limit = args.limit if args.limit is not None else template.data.limit
            data = read_labelled(args.data, args.target, template.data.format, limit=limit,
                                 options=template.data.options, derive={**template.data.derive, **args.derive})
            report = evaluate_folds(args.checkpoint, data, args.out, template, requested=args.target, task=args.task,
                                    n_folds=args.folds, random_state=args.seed, val_fraction=args.val_fraction,
                                    limit=limit, batch_size=args.batch_size, device=args.device)
    except (ValueError, FileNotFoundError, ExportError) as exc:  # ConfigError is a ValueError
        print(f"foundation {command}: error: {exc}", file=sys.stderr)
        return 2
    print(_table(report))
    print(f"wrote {Path(args.out) / 'report.json'}, {Path(args.out) / report['plot']}, "
          f"{Path(args.out) / report['predictions']}")
    return 0
