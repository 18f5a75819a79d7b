"""One checkpoint scored on one labelled file: `evaluate_checkpoint` writes report.json,
predictions.csv and the parity (or ROC) plot."""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..api import load_model
from ..data.crystal import Crystal
from ..data.shards import sha256_file
from ..data.targets import target_info
from ..metrics import classification_metrics, regression_metrics
from .labelled import LabelledData, select_task
from .plots import plot

__all__ = ["evaluate_checkpoint", "predict_task", "score", "report_head", "write_predictions", "report_table"]

_SHOWN_REJECTS = 50  # rejects listed in report.json (all are counted)


def predict_task(checkpoint: str | Path, crystals: Sequence[Crystal], target: str, aliases: Sequence[str],
             task: str | None, batch_size: int, device: str,
             among: Sequence[str] | None = None) -> tuple[Any, np.ndarray]:
    """`(TaskSpec, predictions [n])` of the checkpoint's task for `target` (chosen among the tasks
    named `among`, all when None) on `crystals`."""
    predictor = load_model(checkpoint, device=device)
    tasks = {n: t for n, t in predictor.tasks.items() if among is None or n in among}
    spec = select_task(tasks, target, *aliases, task=task)
    out = predictor.predict(list(crystals), batch_size=batch_size, progress=True)
    return spec, np.asarray(out[spec.name], dtype=np.float64).reshape(len(crystals))


def score(kind: str, labels: np.ndarray, preds: np.ndarray) -> dict[str, float | int]:
    if kind == "classification":
        return classification_metrics(labels, preds)
    return regression_metrics(labels, preds)


def report_head(checkpoint: str | Path, data: LabelledData, requested: str) -> dict[str, Any]:
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


def write_predictions(path: Path, data: LabelledData, preds: np.ndarray, fold: np.ndarray | None = None) -> None:
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
    spec, preds = predict_task(checkpoint, data.crystals, data.target, (requested,), task, batch_size, device)
    unit = spec.unit or target_info(data.target).unit
    report = report_head(checkpoint, data, requested)
    report.update(task=spec.name, kind=spec.kind, unit=unit, metrics=score(spec.kind, data.labels, preds))
    write_predictions(out / "predictions.csv", data, preds)
    title = f"{spec.name} on {Path(data.file).name}"
    report["plot"] = plot(spec.kind, data.labels, preds, out, requested, unit, title).name
    report["predictions"] = "predictions.csv"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def report_table(report: dict[str, Any]) -> str:
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
