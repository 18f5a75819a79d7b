"""Validation during training: metrics per dataset and task reduced across ranks, and the scores
of a finished model on a whole split.

`evaluate` makes every rank run the same number of collectives whatever its number of
validation batches: each iteration all-reduces "do I still have a batch"; a rank that ran out
either idles or (when its forward itself is collective, ZeRO-3) repeats its last batch with the
result discarded. No rank can wait forever on another after an evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from ..data.shards import build_loader, read_manifest
from ..metrics import classification_metrics, label_mask, regression_metrics
from .distributed import DistInfo, all_gather_rows, all_reduce

__all__ = ["MetricAccumulator", "evaluate", "split_metrics"]


class MetricAccumulator:
    """Sums |error|, error² and counts per (dataset, task) for regression; keeps (score, label)
    pairs for classification. `tasks` need `.name`, `.target`, `.kind`, `.unit` (`.datasets` and
    `.level` are honoured when present: a task restricted to other datasets is not scored).
    `baselines` ({task: (value, per_atom)}, `normalization.mean_predictors`): the mean predictor's
    MAE is kept beside each regression task's (`mean_mae`), the bar a head must clear."""

    def __init__(self, datasets: list[str], tasks: list[Any], baselines: dict[str, tuple[float, bool]] | None = None):
        self.datasets = list(datasets)
        self.tasks = list(tasks)
        self.baselines = dict(baselines or {})
        n = len(self.datasets) * len(self.tasks)
        self._sums = torch.zeros(n, 4, dtype=torch.float64)  # [pairs, (abs, sq, count, mean predictor's abs)]
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
                base = self._baseline_abs(task, batch, mask, true)
                self._sums[i] += torch.stack([err.abs().sum(), (err**2).sum(),
                                              torch.tensor(err.numel(), dtype=torch.float64), base])

    def _baseline_abs(self, task, batch, mask: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Σ |mean predictor − label| over the masked labels (NaN without a baseline)."""
        if task.name not in self.baselines:
            return torch.tensor(math.nan, dtype=torch.float64)
        value, per_atom = self.baselines[task.name]
        base = torch.full_like(true, value)
        if per_atom:
            base = base * batch.n_atoms[mask].to(torch.float64).cpu().reshape(true.shape)
        return (base - true).abs().sum()

    def reduce(self, info: DistInfo) -> dict[str, dict[str, dict[str, float]]]:
        """Collective. {dataset: {task: {"mae", "rmse", "n"} or {"roc_auc", "n"}}}; tasks with no
        labels in a dataset's validation split are left out."""
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
                    row = {"mae": float(sums[i, 0]) / n, "rmse": math.sqrt(float(sums[i, 1]) / n), "n": n}
                    if math.isfinite(float(sums[i, 3])):
                        row["mean_mae"] = float(sums[i, 3]) / n
                    out.setdefault(dataset, {})[task.name] = row
        return out


def evaluate(
    forward: Callable[[Any], dict[str, torch.Tensor]],
    splits: dict[str, Callable[[], Iterable]],
    tasks: list[Any],
    info: DistInfo,
    prepare: Callable[[Any], Any],
    max_batches: int | None = None,
    collective_forward: bool = False,
    baselines: dict[str, tuple[float, bool]] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Collective. Run `forward` over each dataset's validation batches and reduce the metrics.

    `splits[name]()` yields that dataset's validation batches for this rank; `prepare` moves a
    batch to the device/dtype; `collective_forward` says the forward itself runs collectives.
    """
    acc = MetricAccumulator(list(splits), tasks, baselines)
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


def split_metrics(model, tasks: list[Any], loader_cfg, shard_dirs: dict[str, str], split: str,
                  device) -> dict[str, Any] | None:
    """{task: regression_metrics | classification_metrics} of `model` on every record of `split`
    of the datasets (each task on the datasets it names); None when the split is empty. One
    process: each record exactly once."""
    chosen = {n: d for n, d in shard_dirs.items() if read_manifest(d)["counts"]["splits"][split]["records"]}
    if not chosen:
        return None
    cfg = dataclasses.replace(loader_cfg, shuffle=False, temperature=1.0, num_workers=0)
    rows: dict[str, tuple[list, list]] = {t.name: ([], []) for t in tasks}
    needs_grad = any(t.forces_of is not None for t in tasks)
    for name, where in chosen.items():
        for batch in build_loader({name: where}, split, cfg):
            batch = batch.to(device)
            with torch.set_grad_enabled(needs_grad):
                out = model(batch)
            for task in tasks:
                if task.target not in batch.targets or not task.uses(name):
                    continue
                mask = label_mask(task, batch)
                rows[task.name][0].append(out[task.name].detach()[mask].reshape(-1).double().cpu())
                rows[task.name][1].append(batch.targets[task.target][mask].reshape(-1).double().cpu())
    result = {}
    for task in tasks:
        preds, labels = rows[task.name]
        if not preds or not sum(len(p) for p in preds):
            continue
        p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        result[task.name] = (classification_metrics(y, torch.sigmoid(torch.from_numpy(p)).numpy())
                             if task.kind == "classification" else regression_metrics(y, p))
    return result
