"""Early stopping: the Trainer's `on_eval` hook. It follows the monitored validation value, keeps a
CPU copy of the evaluated weights at the best evaluation, and says stop after `patience`
evaluations without an improvement larger than `min_delta`; disabled, it does nothing. `curve`
holds the monitored value of every evaluation (this process's: a resumed run starts it again), so a
run's summary shows where validation peaked and what came after.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..model.tasks import TaskSpec, TaskStats
from .config import EarlyStoppingConfig

__all__ = ["EarlyStopping"]

log = logging.getLogger("foundation.train")


class EarlyStopping:
    """`monitor: main`: the first task's validation MAE (1 − ROC-AUC for classification), on the
    datasets it is scored on; `loss`: the mean over tasks of MAE / the task's std (the normalised
    error the loss trains on) and 1 − ROC-AUC."""

    def __init__(self, cfg: EarlyStoppingConfig, enabled: bool, tasks: list[TaskSpec],
                 stats: Mapping[str, TaskStats], evaluated: Callable[[], torch.nn.Module]):
        self.cfg, self.enabled, self.tasks, self.stats = cfg, enabled, tasks, stats
        self.evaluated = evaluated
        self.best, self.best_step, self.best_state = math.inf, None, None
        self.bad, self.stopped = 0, False
        self.curve: list[tuple[int, float]] = []  # (step, monitored value) of every evaluation, in order

    def _error(self, task: TaskSpec, metrics: dict[str, Any], normalise: bool) -> float:
        scored = [m[task.name] for m in metrics.values() if task.name in m]
        if not scored:
            return math.nan
        if "mae" not in scored[0]:
            return 1.0 - sum(m["roc_auc"] for m in scored) / len(scored)
        if len(scored) == 1:
            mae = scored[0]["mae"]
        else:
            mae = sum(m["mae"] * m["n"] for m in scored) / sum(m["n"] for m in scored)
        std = self.stats[task.name].std[0] if normalise and task.name in self.stats else 1.0
        return mae / std

    def describe(self) -> str:
        """What is monitored, in words."""
        if self.cfg.monitor == "loss":
            return "mean normalised error of the tasks"
        main = self.tasks[0]
        return f"{main.name} " + ("1 - ROC-AUC" if main.kind == "classification" else "MAE")

    def value(self, metrics: dict[str, Any]) -> float:
        """The monitored value of the per-dataset validation metrics (lower is better; NaN when absent)."""
        if self.cfg.monitor == "main":
            return self._error(self.tasks[0], metrics, normalise=False)
        errors = [self._error(t, metrics, normalise=True) for t in self.tasks
                  if t.forces_of is None and t.labelled]
        return float(sum(errors) / len(errors))

    def __call__(self, step: int, metrics: dict[str, Any]) -> bool:
        if not self.enabled:  # pretraining: nothing to keep (a copy of the weights at every evaluation)
            return False
        value = self.value(metrics)
        self.curve.append((int(step), float(value)))
        if math.isfinite(value) and value < self.best - self.cfg.min_delta:
            self.best, self.best_step, self.bad = value, step, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.evaluated().state_dict().items()}
        else:
            self.bad += 1
        self.stopped = self.enabled and self.bad >= self.cfg.patience
        if self.stopped:
            log.info("early stopping at step %d: no improvement of the validation %s in %d evaluations "
                     "(best %.4g at step %s)", step, self.describe(), self.bad, self.best, self.best_step)
        return self.stopped
