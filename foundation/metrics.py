"""Metric definitions and tables, one module for every caller: the training loop's validation
(reduced over ranks in `foundation.train.validation`), fine-tuning's final scores, `foundation
evaluate` and the benchmarks.

    regression_metrics(y, p)        MAE, RMSE, R², max error, the mean predictor's MAE
    classification_metrics(y, prob) ROC-AUC, accuracy, log-loss, the majority class's accuracy
    label_mask(task, batch)         where a task's label counts (present, atom not held fixed)
    summary_table / metrics_table   fixed-width tables for logs; eval_log_line, flat_scalars
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, r2_score, roc_auc_score

__all__ = ["labelled_pairs", "regression_metrics", "classification_metrics", "label_mask", "flat_scalars", "summary_table", "head_verdict", "head_verdicts",
           "eval_log_line", "metrics_table"]


def labelled_pairs(y_true, y_other) -> tuple[np.ndarray, np.ndarray, int]:
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
    y, p, missing = labelled_pairs(y_true, y_pred)
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
    y, p, missing = labelled_pairs(y_true, prob)
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


def label_mask(task: Any, batch) -> torch.Tensor:
    """[n_graphs] or [n_atoms] bool: where `task`'s label is present in `batch`; atoms held fixed
    in the DFT run (`batch.fixed`, OC20) carry no force label."""
    mask = batch.masks[task.target]
    if getattr(task, "level", "structure") == "atom" and batch.fixed is not None:
        mask = mask & ~batch.fixed
    return mask


def flat_scalars(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """{"val/<dataset>/<task>/<metric>": value} for TensorBoard."""
    return {
        f"val/{d}/{t}/{m}": v
        for d, tasks in metrics.items()
        for t, ms in tasks.items()
        for m, v in ms.items()
        if m != "n"
    }


VERDICT_MARGIN = 0.01  # a head "learns" when it beats each bar by more than 1 %


def head_verdict(value: float, mean: float | None, initial: float | None, higher_is_better: bool = False) -> str:
    """"learns" when a head's final value beats both the mean predictor and its initial value by
    more than VERDICT_MARGIN (relative; a tie to the fourth digit is not learning); otherwise which
    bar it misses ("" when neither bar is known)."""
    if higher_is_better:
        def better(a, b):
            return a > b + VERDICT_MARGIN * abs(b)
    else:
        def better(a, b):
            return a < b - VERDICT_MARGIN * abs(b)
    misses = [name for name, bar in (("mean", mean), ("initial", initial)) if bar is not None and not better(value, bar)]
    if mean is None and initial is None:
        return ""
    return "learns" if not misses else "NOT: " + ", ".join(f"no better than {m}" for m in misses)


def head_verdicts(metrics: dict[str, dict[str, dict[str, float]]],
                  initial: dict[str, dict[str, dict[str, float]]] | None = None) -> dict[str, str]:
    """{"dataset/task": verdict} (`head_verdict`; bars: the mean predictor's MAE, or ROC-AUC 0.5, and
    the initial value): which heads learned, which did not."""
    out = {}
    for d, tasks in metrics.items():
        for t, ms in tasks.items():
            key = "roc_auc" if "roc_auc" in ms else "mae"
            mean = 0.5 if key == "roc_auc" else ms.get("mean_mae")
            before = (initial or {}).get(d, {}).get(t, {}).get(key)
            out[f"{d}/{t}"] = head_verdict(ms[key], mean, before, key == "roc_auc")
    return out


def summary_table(metrics: dict[str, dict[str, dict[str, float]]], units: dict[str, str],
                  initial: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """A fixed-width table: dataset, task, metric, value, unit, n, the mean predictor's value (where
    known), the initial value (if given) and the verdict: a head "learns" when it beats both."""
    header = ("dataset", "task", "metric", "value", "unit", "n", "mean pred.") + (("initial",) if initial else ()) + ("verdict",)
    rows = [header]
    verdicts = head_verdicts(metrics, initial)
    for d, tasks in metrics.items():
        for t, ms in tasks.items():
            for m, v in ms.items():
                if m in ("n", "rmse", "mean_mae"):
                    continue
                unit = "" if m == "roc_auc" else units.get(t, "")
                mean = 0.5 if m == "roc_auc" else ms.get("mean_mae")
                row = (d, t, m.upper() if m == "mae" else "ROC-AUC", f"{v:.4g}", unit, str(int(ms["n"])),
                       "" if mean is None else f"{mean:.4g}")
                if initial:
                    before = initial.get(d, {}).get(t, {}).get(m)
                    row += ("" if before is None else f"{before:.4g}",)
                row += (verdicts[f"{d}/{t}"],)
                rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_log_line(step: int, metrics: dict[str, dict[str, dict[str, float]]], units: dict[str, str]) -> str:
    parts = []
    for d, tasks in metrics.items():
        for t, ms in tasks.items():
            if "mae" in ms:
                parts.append(f"{d}/{t} MAE {ms['mae']:.4g} {units.get(t, '')}".rstrip())
            else:
                parts.append(f"{d}/{t} ROC-AUC {ms['roc_auc']:.3f}")
    return f"eval @ step {step}: " + (" | ".join(parts) if parts else "no labelled validation data")


def metrics_table(results: dict[str, dict[str, Any] | None], units: dict[str, str]) -> str:
    """Fixed-width table: split, task, n, MAE, RMSE, R2 (regression), ROC-AUC, accuracy, unit."""
    columns = ("mae", "rmse", "r2", "roc_auc", "accuracy")
    rows = [("split", "task", "n", "MAE", "RMSE", "R2", "ROC-AUC", "accuracy", "unit")]
    for split, tasks in results.items():
        for task, m in (tasks or {}).items():
            cells = [f"{m[c]:.4g}" if c in m else "" for c in columns]
            rows.append((split, task, str(m["n"]), *cells, units.get(task, "") if "mae" in m else ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
