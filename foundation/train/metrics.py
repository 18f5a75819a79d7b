"""Validation metrics per dataset and task, reduced across ranks (MAE/RMSE; ROC-AUC via sklearn).

`evaluate` makes every rank run the same number of collectives whatever its number of
validation batches: each iteration all-reduces "do I still have a batch"; a rank that ran out
either idles or (when its forward itself is collective, ZeRO-3) repeats its last batch with the
result discarded. No rank can wait forever on another after an evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .distributed import DistInfo, all_gather_rows, all_reduce

__all__ = ["MetricAccumulator", "evaluate", "label_mask", "summary_table"]


def label_mask(task: Any, batch) -> torch.Tensor:
    """[n_graphs] or [n_atoms] bool: where `task`'s label is present in `batch`; atoms held fixed
    in the DFT run (`batch.fixed`, OC20) carry no force label."""
    mask = batch.masks[task.target]
    if getattr(task, "level", "structure") == "atom" and batch.fixed is not None:
        mask = mask & ~batch.fixed
    return mask


class MetricAccumulator:
    """Sums |error|, error² and counts per (dataset, task) for regression; keeps (score, label)
    pairs for classification. `tasks` need `.name`, `.target`, `.kind`, `.unit` (`.datasets` and
    `.level` are honoured when present: a task restricted to other datasets is not scored)."""

    def __init__(self, datasets: list[str], tasks: list[Any]):
        self.datasets = list(datasets)
        self.tasks = list(tasks)
        n = len(self.datasets) * len(self.tasks)
        self._sums = torch.zeros(n, 3, dtype=torch.float64)  # [pairs, (abs, sq, count)]
        self._pairs: dict[int, list[torch.Tensor]] = {}

    def _index(self, dataset: str, t: int) -> int:
        return self.datasets.index(dataset) * len(self.tasks) + t

    @torch.no_grad()
    def add(self, dataset: str, preds: dict[str, torch.Tensor], batch) -> None:
        for t, task in enumerate(self.tasks):
            if task.name not in preds or task.target not in batch.targets:
                continue
            if getattr(task, "datasets", ()) and dataset not in task.datasets:
                continue  # this dataset's labels under that key belong to another task
            mask = label_mask(task, batch)
            if not bool(mask.any()):
                continue
            pred = preds[task.name].detach()[mask].to(torch.float64).cpu()
            true = batch.targets[task.target][mask].to(torch.float64).cpu()
            i = self._index(dataset, t)
            if task.kind == "classification":
                self._pairs.setdefault(i, []).append(torch.stack([pred.reshape(-1), true.reshape(-1)], 1))
            else:
                err = (pred.reshape(true.shape) - true).reshape(-1)
                self._sums[i] += torch.stack([err.abs().sum(), (err**2).sum(), torch.tensor(err.numel(), dtype=torch.float64)])

    def reduce(self, info: DistInfo) -> dict[str, dict[str, dict[str, float]]]:
        """Collective. {dataset: {task: {"mae", "rmse", "n"} or {"roc_auc", "n"}}}; tasks with no
        labels in a dataset's validation split are left out."""
        from sklearn.metrics import roc_auc_score

        sums = all_reduce(self._sums, info).cpu()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for d, dataset in enumerate(self.datasets):
            for t, task in enumerate(self.tasks):
                i = self._index(dataset, t)
                if task.kind == "classification":
                    local = torch.cat(self._pairs.get(i, [torch.zeros(0, 2, dtype=torch.float64)]))
                    rows = all_gather_rows(local, info).cpu().numpy()  # [n, (score, label)]
                    if len(rows) == 0:
                        continue
                    labels = rows[:, 1] > 0.5
                    auc = float(roc_auc_score(labels, rows[:, 0])) if 0 < labels.sum() < len(labels) else math.nan
                    out.setdefault(dataset, {})[task.name] = {"roc_auc": auc, "n": float(len(rows))}
                elif sums[i, 2] > 0:
                    n = float(sums[i, 2])
                    out.setdefault(dataset, {})[task.name] = {
                        "mae": float(sums[i, 0]) / n, "rmse": math.sqrt(float(sums[i, 1]) / n), "n": n,
                    }
        return out


def evaluate(
    forward: Callable[[Any], dict[str, torch.Tensor]],
    splits: dict[str, Callable[[], Iterable]],
    tasks: list[Any],
    info: DistInfo,
    prepare: Callable[[Any], Any],
    max_batches: int | None = None,
    collective_forward: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Collective. Run `forward` over each dataset's validation batches and reduce the metrics.

    `splits[name]()` yields that dataset's validation batches for this rank; `prepare` moves a
    batch to the device/dtype; `collective_forward` says the forward itself runs collectives.
    """
    acc = MetricAccumulator(list(splits), tasks)
    for name, make in splits.items():
        it, last, seen = iter(make()), None, 0
        while True:
            batch = None
            if max_batches is None or seen < max_batches:
                batch = next(it, None)
            more = all_reduce(torch.tensor([0.0 if batch is None else 1.0]), info, op="max")
            if float(more.item()) == 0.0:
                break
            if batch is None:
                if collective_forward and last is not None:
                    forward(last)  # keeps ZeRO-3 parameter gathers matched; result unused
                continue
            batch = prepare(batch)
            acc.add(name, forward(batch), batch)
            last, seen = batch, seen + 1
    return acc.reduce(info)


def flat_scalars(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """{"val/<dataset>/<task>/<metric>": value} for TensorBoard."""
    return {
        f"val/{d}/{t}/{m}": v
        for d, tasks in metrics.items()
        for t, ms in tasks.items()
        for m, v in ms.items()
        if m != "n"
    }


def summary_table(metrics: dict[str, dict[str, dict[str, float]]], units: dict[str, str],
                  initial: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """A fixed-width table: dataset, task, metric, value, unit, n (and the initial value, if given)."""
    header = ("dataset", "task", "metric", "value", "unit", "n") + (("initial",) if initial else ())
    rows = [header]
    for d, tasks in metrics.items():
        for t, ms in tasks.items():
            for m, v in ms.items():
                if m in ("n", "rmse"):
                    continue
                unit = "" if m == "roc_auc" else units.get(t, "")
                row = (d, t, m.upper() if m == "mae" else "ROC-AUC", f"{v:.4g}", unit, str(int(ms["n"])))
                if initial:
                    before = initial.get(d, {}).get(t, {}).get(m)
                    row += ("" if before is None else f"{before:.4g}",)
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

