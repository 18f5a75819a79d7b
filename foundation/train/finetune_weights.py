"""Fine-tuning weights: which encoder parameters are frozen, their layer-wise learning rates, an
EMA that starts late, early stopping that keeps the best evaluated weights, and the exported model
(best weights + the kept pretrained heads).

Depth of an encoder parameter: 0 the species embedding and radial basis, k + 1 interaction block k
(and the Ewald block after it). `freeze first:K` freezes depths 0..K; layer-wise decay D gives
depth d the learning rate lr·D^(L + 1 − d): heads lr, last block lr·D, ..., embedding lr·D^(L+1).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from .ema import EMA
from .finetune_config import EarlyStoppingConfig

__all__ = ["encoder_depth", "freeze_encoder", "lr_scales", "DelayedEMA", "EarlyStopping", "export_model"]

log = logging.getLogger("foundation.train")


def encoder_depth(name: str) -> int | None:
    """Depth of a parameter named as in FoundationModel (or "model."-prefixed, as in Objective):
    0 the species embedding and radial basis, k + 1 interaction block k and the Ewald block after
    it; None outside the encoder (heads, loss)."""
    rest = name.removeprefix("model.")
    if not rest.startswith("encoder."):
        return None
    parts = rest.split(".")
    return int(parts[2]) + 1 if parts[1] in ("blocks", "ewald") else 0


def freeze_encoder(model, frozen_depth: int) -> list[str]:
    """Set requires_grad False on encoder parameters of depth <= `frozen_depth`; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        depth = encoder_depth(name)
        if depth is not None and depth <= frozen_depth:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def lr_scales(decay: float, n_layers: int) -> Callable[[str], float]:
    """name -> learning-rate factor: 1 for heads and loss, decay^(L + 1 − depth) in the encoder
    (last block `decay`, first block decay^L, embedding decay^(L+1))."""

    def scale(name: str) -> float:
        depth = encoder_depth(name)
        return 1.0 if depth is None else decay ** (n_layers + 1 - depth)

    return scale


class DelayedEMA(EMA):
    """EMA that copies the weights for its first `start` updates and averages from then on, so
    the average does not carry a new head's first random steps."""

    def __init__(self, model: torch.nn.Module, decay: float, start: int):
        super().__init__(model, decay)
        self.start, self.steps = int(start), 0

    @torch.no_grad()
    def update(self, params, buffers=()) -> None:
        self.steps += 1
        if self.steps > self.start:
            super().update(params, buffers)
            return
        own, own_buffers = dict(self.module.named_parameters()), dict(self.module.named_buffers())
        for name, p in params:
            own[name].copy_(p.detach())
        for name, b in buffers:
            own_buffers[name].copy_(b.detach())


class EarlyStopping:
    """The Trainer's on_eval: follows the monitored validation value, keeps a CPU copy of the
    evaluated weights at the best evaluation, and says stop after `patience` evaluations without
    an improvement larger than `min_delta` (only when `enabled`: else it just tracks)."""

    def __init__(self, cfg: EarlyStoppingConfig, enabled: bool, tasks: list[Any], dataset: str,
                 stds: dict[str, float], evaluated: Callable[[], torch.nn.Module]):
        self.cfg, self.enabled, self.tasks, self.dataset, self.stds = cfg, enabled, tasks, dataset, stds
        self.evaluated = evaluated
        self.best, self.best_step, self.best_state = math.inf, None, None
        self.bad, self.stopped = 0, False

    def _error(self, task, metrics: dict[str, Any], normalise: bool) -> float:
        m = metrics.get(self.dataset, {}).get(task.name)
        if m is None:
            return math.nan
        if "mae" in m:
            return m["mae"] / (self.stds.get(task.name, 1.0) if normalise else 1.0)
        return 1.0 - m["roc_auc"]

    def describe(self) -> str:
        """What is monitored, in words."""
        if self.cfg.monitor == "loss":
            return "mean normalised error of the tasks"
        main = self.tasks[0]
        return f"{main.name} " + ("1 - ROC-AUC" if main.kind == "classification" else "MAE")

    def value(self, metrics: dict[str, Any]) -> float:
        """The monitored value (lower is better; NaN when the metrics lack it)."""
        if self.cfg.monitor == "main":
            return self._error(self.tasks[0], metrics, normalise=False)
        errors = [self._error(t, metrics, normalise=True) for t in self.tasks if t.forces_of is None]
        return float(sum(errors) / len(errors))

    def __call__(self, step: int, metrics: dict[str, Any]) -> bool:
        value = self.value(metrics)
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


def export_model(res, evaluated: torch.nn.Module, stopper: EarlyStopping, last_step: int):
    """(model, best step): the evaluated weights of the best evaluation (last ones without early
    stopping), float32 on CPU, with the kept pretrained heads put back."""
    model = copy.deepcopy(evaluated).float().cpu().eval()
    best_step = last_step
    if stopper.enabled and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        best_step = stopper.best_step
    pretrained = res.pretrained
    for name in sorted(res.kept, key=lambda n: pretrained.tasks[n].forces_of is not None):
        model.add_task(pretrained.tasks[name])
        if name in pretrained.heads:
            model.heads[name].load_state_dict(pretrained.heads[name].state_dict())
    return model, best_step
