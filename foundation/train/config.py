"""Typed configs of a training run: the sections (optimiser, schedule, precision/ZeRO, EMA,
checkpoints, evaluation, logging, early stopping) and the datasets; `run_config.RunConfig` composes them.

Every value is checked once, when the YAML is read (`foundation.config.from_dict`): a bad value
raises there with the dotted field name, before any process group starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..data.labels import check_derive
from .preemption import check_signal_names

__all__ = [
    "OptimizerConfig",
    "ScheduleConfig",
    "DistributedConfig",
    "EMAConfig",
    "CheckpointConfig",
    "EvalConfig",
    "LogConfig",
    "EarlyStoppingConfig",
    "DatasetConfig",
    "parse_duration",
]


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number (seconds) or a string of numbers with units: "600", "10m", "1h30m", "90s"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d*)?)([hms]?)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"a duration is seconds or e.g. '10m', '1h30m', '90s'; got {value!r}")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"a duration must be > 0 seconds, got {value!r}")
    return seconds


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (decoupled weight decay). Biases, norms and loss log-variances get no decay."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    torch_adam: bool = True  # torch.optim.AdamW; False asks DeepSpeed for its fused CUDA Adam

    def __post_init__(self):
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(all(0 <= b < 1 for b in self.betas), f"betas must lie in [0, 1), got {self.betas}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup from 0 to `lr`, then cosine decay to `min_lr_ratio * lr` at the last step."""

    warmup_steps: int = 100
    min_lr_ratio: float = 0.01

    def __post_init__(self):
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class DistributedConfig:
    """What the DeepSpeed JSON is generated from (`deepspeed_config.py`)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    zero_stage: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1  # micro-batches per optimiser step on each rank
    grad_clip: float = 1.0  # global L2 norm; 0 disables
    fp16_initial_scale_power: int = 16  # dynamic loss scale starts at 2**this
    fp16_loss_scale_window: int = 1000
    timeout_s: int = 1800  # collective timeout (long: rank 0 may build shards while the others wait)
    # A rank whose heartbeat stops for this long (killed, its node lost) ends every other rank with
    # an error naming it, instead of a hang until `timeout_s` (watchdog.py); 0 disables.
    heartbeat_timeout_s: float = 60.0
    # Signals that mean "pre-empted": checkpoint at the end of the current step, exit 0 (preemption.py)
    preempt_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    # glibc's malloc kept from mapping, unmapping and trimming the step's large blocks on every
    # step (allocator.py: 1.2-1.3x training throughput on the 2-core VM); false: the system's defaults
    tune_host_allocator: bool = True

    def __post_init__(self):
        _require(self.zero_stage in (0, 1, 2, 3), f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        _require(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        _require(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        check_signal_names(self.preempt_signals)
        _require(self.heartbeat_timeout_s == 0 or self.heartbeat_timeout_s >= 1,
                 f"heartbeat_timeout_s must be 0 (off) or >= 1 s, got {self.heartbeat_timeout_s}")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the weights, used for evaluation and the export."""

    enabled: bool = True
    decay: float = 0.99
    start_step: int = 0  # the EMA copies the weights until this step, then averages

    def __post_init__(self):
        _require(0 < self.decay < 1, f"decay must lie in (0, 1), got {self.decay}")
        _require(self.start_step >= 0, f"start_step must be >= 0, got {self.start_step}")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100  # optimiser steps between checkpoints (and one at the end)
    keep: int = 3  # newest complete checkpoints kept on disk
    checksum: bool = True  # sha256 of every file in the `complete` marker (sizes always)
    resume: bool = True  # continue from the newest checkpoint of run_dir that verifies
    # A ZeRO-partitioned optimiser cannot be loaded by a different number of ranks as saved:
    # "universal" converts the checkpoint (DeepSpeed universal checkpoint), "weights_only"
    # loads the model and restarts the optimiser (with a warning).
    world_size_change: Literal["universal", "weights_only"] = "universal"

    def __post_init__(self):
        _require(self.every >= 1, f"every must be >= 1, got {self.every}")
        _require(self.keep >= 1, f"keep must be >= 1, got {self.keep}")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 100  # optimiser steps between evaluations (and one at the end)
    max_batches: int | None = None  # per dataset and rank; None = the whole validation split
    use_ema: bool = True  # evaluate the EMA weights (when EMA is enabled)
    at_start: bool = False  # also evaluate the initial weights (a baseline for the final table)

    def __post_init__(self):
        _require(self.every >= 1, f"every must be >= 1, got {self.every}")


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps between TensorBoard train scalars
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self):
        _require(self.every >= 1, f"every must be >= 1, got {self.every}")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = 5  # evaluations without improvement before the run stops
    # "main": the first task's validation MAE (1 − ROC-AUC for classification); "loss": the mean
    # over tasks of MAE / the task's train std (the normalised MAE the loss trains on) and 1 − ROC-AUC.
    monitor: Literal["main", "loss"] = "main"
    min_delta: float = 0.0  # an improvement must lower the monitored value by more than this

    def __post_init__(self):
        _require(self.patience >= 1 and self.min_delta >= 0,
                 f"patience must be >= 1 and min_delta >= 0, got {self.patience}, {self.min_delta}")


@dataclass(frozen=True)
class DatasetConfig:
    """One database: a shard directory (or URL), or native file(s) sharded into the cache on first use.

    `keep_labels`: "all" keeps every label the reader gives (pretraining); "tasks" keeps only the
    run's task targets and rejects a record that has none of them (fine-tuning on one property).
    `derive`: new labels from the reader's, {name: "key" | "log10(key)" | "key <op> number" (0/1)};
    a record whose key is missing (or not > 0 under log10) gets no such label.
    """

    shards: str | None = None  # directory holding manifest.json + *.tar, or a URL of one
    path: str | None = None  # native file, directory, or "ase:<collection>" (ase.collections)
    lmdb_from_pickles: list[str] | None = None  # OC20/OC22 record pickles -> an LMDB as released -> shards
    format: str | None = None  # reader (foundation.data.readers.FORMATS); None: detected from the file
    options: dict[str, Any] = field(default_factory=dict)  # reader options (e.g. frames, every)
    limit: int | None = None  # first N records of each input only (quick runs)
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train, val, test by record hash
    split_seed: int = 0
    group_by_prefix: bool = False  # split by the id before ':' (all frames of an OC20 system together)
    derive: dict[str, str] = field(default_factory=dict)
    keep_labels: Literal["all", "tasks"] = "all"
    # the first N training records only (val and test unchanged: learning curves share them)
    max_train: int | None = None
    name: str | None = None  # the `data:` form only: the dataset's name (default: the file's stem)

    def __post_init__(self):
        given = [k for k in ("shards", "path", "lmdb_from_pickles") if getattr(self, k) is not None]
        _require(len(given) == 1, "give exactly one of 'shards' (a shard directory), 'path' (+ 'format') "
                                  f"or 'lmdb_from_pickles'; got {given or 'none'}")
        _require(self.lmdb_from_pickles is None or self.format == "oc20_lmdb",
                 "'lmdb_from_pickles' builds an LMDB: format must be 'oc20_lmdb'")
        _require(self.shards is None or not (self.derive or self.keep_labels == "tasks"),
                 "'derive' and keep_labels 'tasks' apply to native inputs, not to built shards")
        _require(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")
        _require(self.max_train is None or self.max_train >= 1, f"max_train must be >= 1, got {self.max_train}")
        _require(self.shards is None or self.max_train is None, "'max_train' applies to native inputs, not to built shards")
        _require(min(self.fractions) >= 0 and abs(sum(self.fractions) - 1) <= 1e-9 and self.fractions[0] > 0,
                 f"fractions must be 3 non-negative numbers summing to 1 with a train part, got {self.fractions}")
        for name, expr in self.derive.items():
            check_derive(name, expr)
