"""Fine-tuning configuration: `FinetuneConfig` (YAML in configs/finetune/), and `validate`, every
check that needs no process group (tasks, the checkpoint, freezing depth, loader, data path).

Fields that share a meaning with pretraining reuse `foundation/train/config.py`, with fine-tuning
defaults (a smaller learning rate, short warmup, frequent evaluation, no resume). A nested YAML
section overrides field by field; anything unknown or mistyped is a ConfigError naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError, apply_overrides, from_dict, load_yaml
from .config import (CheckpointConfig, DistributedConfig, EMAConfig, EvalConfig, LogConfig, OptimizerConfig,
                     ScheduleConfig)

__all__ = ["DataConfig", "EarlyStoppingConfig", "FinetuneConfig", "Resolved", "load_config", "validate",
           "LOADER_DEFAULTS", "DERIVE", "resolve_data", "target_aliases"]

LOADER_DEFAULTS = {"max_atoms": 256}  # smaller batches than pretraining: more steps on small data
# data.derive expressions: "key", "log10(key)", "key <op> number" (a 0/1 label)
DERIVE = re.compile(r"^\s*(?:log10\(\s*(?P<log>[^()\s]+)\s*\)|(?P<key>[^()\s<>=]+)"
                    r"(?:\s*(?P<op><=|>=|==|<|>)\s*(?P<value>[-+0-9.eE]+))?)\s*$")


@dataclass(frozen=True)
class DataConfig:
    """The data: one readable file or directory (any `foundation.data.readers` format)."""

    path: str  # file, directory, or "ase:<collection>" (ase.collections: dcdft)
    format: str | None = None  # reader; None: detected from the file (readers.detect_format)
    options: dict[str, Any] = field(default_factory=dict)  # reader options
    limit: int | None = None  # first N records only
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test by record hash
    split_seed: int = 0
    # New labels from the reader's: {name: "key" | "log10(key)" | "key <= 0.0" (0/1)}. A record
    # whose key is missing (or not > 0 for log10) gets no such label.
    derive: dict[str, str] = field(default_factory=dict)
    name: str | None = None  # dataset name in logs and metrics; default: the file's stem

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-9 or self.fractions[0] == 0:
            raise ValueError(f"fractions must be 3 non-negative numbers summing to 1 with a train part, "
                             f"got {self.fractions}")
        for name, expr in self.derive.items():
            if DERIVE.match(expr) is None:
                raise ValueError(f"derive.{name}: {expr!r} is not 'key', 'log10(key)' or 'key <op> number'")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = True
    patience: int = 5  # evaluations without improvement before the run stops
    # "main": the first task's validation MAE (1 − ROC-AUC for classification); "loss": the mean
    # over tasks of MAE / the task's train std (the normalised MAE the loss trains on) and 1 − ROC-AUC.
    monitor: Literal["main", "loss"] = "main"
    min_delta: float = 0.0  # an improvement must lower the monitored value by more than this

    def __post_init__(self):
        if self.patience < 1 or self.min_delta < 0:
            raise ValueError(f"patience must be >= 1 and min_delta >= 0, got {self.patience}, {self.min_delta}")


# Fine-tuning defaults of the shared training configs (a YAML section overrides field by field).
@dataclass(frozen=True)
class FinetuneOptimizerConfig(OptimizerConfig):
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass(frozen=True)
class FinetuneScheduleConfig(ScheduleConfig):
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05


@dataclass(frozen=True)
class FinetuneEMAConfig(EMAConfig):
    start_step: int = 0  # the EMA copies the weights until this step, then averages

    def __post_init__(self):
        super().__post_init__()
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")


@dataclass(frozen=True)
class FinetuneEvalConfig(EvalConfig):
    every: int = 25


@dataclass(frozen=True)
class FinetuneCheckpointConfig(CheckpointConfig):
    every: int = 1000
    keep: int = 1
    resume: bool = False  # a fresh fine-tune each time (an earlier run's checkpoints are removed)


@dataclass(frozen=True)
class FinetuneConfig:
    data: DataConfig
    tasks: list[dict[str, Any]]  # TaskSpec fields; level, kind, unit, loss from the target
    checkpoint: str = "runs/sample/export"  # pretrained export (directory, run dir, or a file in it)
    from_scratch: bool = False  # the checkpoint's architecture, random encoder (a baseline)
    freeze: str = "none"  # "none" | "encoder" | "first:K" (embedding + first K interaction blocks)
    lr_decay: float = 1.0  # heads lr, last block lr·D, ..., embedding lr·D^(L+1)
    keep_heads: bool = False  # keep the checkpoint's other heads in the export (trained on nothing)
    max_steps: int | None = None
    epochs: float | None = None  # passes over the train split; with max_steps, the smaller wins
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    loss: Literal["uncertainty", "fixed"] = "fixed"
    loader: dict[str, Any] = field(default_factory=dict)  # LoaderConfig fields over LOADER_DEFAULTS
    optimizer: FinetuneOptimizerConfig = field(default_factory=FinetuneOptimizerConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    ema: FinetuneEMAConfig = field(default_factory=FinetuneEMAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoints: FinetuneCheckpointConfig = field(default_factory=FinetuneCheckpointConfig)  # of this run
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run_dir: str = "runs/finetune"
    cache_dir: str = "work/shard_cache"
    seed: int = 0

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed (or --target)")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give max_steps or epochs (or both: the smaller budget wins)")
        if (self.max_steps is not None and self.max_steps < 1) or (self.epochs is not None and self.epochs <= 0):
            raise ValueError(f"max_steps must be >= 1 and epochs > 0, got {self.max_steps}, {self.epochs}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.freeze not in ("none", "encoder") and re.fullmatch(r"first:\d+", self.freeze) is None:
            raise ValueError(f"freeze must be 'none', 'encoder' or 'first:K', got {self.freeze!r}")


@dataclass(frozen=True)
class Resolved:
    """A checked config with its parts built (no process group, nothing written)."""

    config: FinetuneConfig
    checkpoint: str  # the export directory read
    pretrained: Any  # foundation.model.FoundationModel (CPU, eval)
    tasks: list[Any]  # [TaskSpec] of the new heads
    kept: list[str]  # pretrained tasks kept in the export (keep_heads)
    replaced: list[str]  # pretrained tasks whose name a new task takes
    frozen_depth: int  # encoder parameters of depth <= this are frozen (-1: none)
    loader: Any  # foundation.data.stream.LoaderConfig
    data_path: str
    data_format: str
    data_options: dict[str, Any]
    data_name: str


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Read YAML, apply `a.b=value` overrides, check keys and types (ConfigError names the field)."""
    return from_dict(FinetuneConfig, apply_overrides(load_yaml(path), list(overrides)))


# -- validation (no process group) ----------------------------------------------------------------
def resolve_data(data: DataConfig) -> tuple[str, str, dict[str, Any], str]:
    """(path, format, reader options, dataset name); "ase:<name>" is an ase.collections database."""
    from ..data.readers import FORMATS, detect_format

    options = dict(data.options)
    if data.path.startswith("ase:"):
        import ase.collections

        name = data.path[4:]
        collection = getattr(ase.collections, name, None)
        if not isinstance(collection, ase.collections.Collection):
            raise ConfigError(f"data.path: ase.collections has no collection {name!r} (dcdft, g2, s22)")
        options.setdefault("source", name)
        return collection.filename, data.format or "ase", options, data.name or name
    path = Path(data.path)
    if not path.exists():
        raise ConfigError(f"data.path: no such file or directory: {path}")
    fmt = data.format
    if fmt is None:
        try:
            fmt = detect_format(path)
        except ValueError as exc:
            raise ConfigError(f"data.format: cannot tell the format of {path} ({exc}); give --format") from exc
    if fmt not in FORMATS:
        raise ConfigError(f"data.format: unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    stem = path.name.split(".")[0] if path.is_file() else path.name
    return str(path), fmt, options, data.name or stem


def _csv_columns(path: str, fmt: str, options: dict[str, Any], tasks: list[Any]) -> dict[str, Any]:
    """Reader options that also read a task's CSV column: cif_csv reads only the label columns it
    knows by default (CSV_COLUMNS), so a task naming another column (heat_ref) asks for it."""
    if fmt != "cif_csv" or "targets" in options:
        return options
    from ..data.readers.cif_csv import CSV_COLUMNS, read_csv_rows

    header, rows = read_csv_rows(Path(path))
    next(rows, None)
    rows.close()  # closes the file
    extra = [t.target for t in tasks if t.target in header and t.target not in CSV_COLUMNS]
    return {**options, "targets": [c for c in header if c in CSV_COLUMNS] + extra} if extra else options


def target_aliases() -> dict[str, str]:
    """Native label names the readers map to canonical targets (heat_all, e_form, gap pbe, gap)."""
    from ..data.readers.ase_db import KEY_ALIASES
    from ..data.readers.cif_csv import CSV_COLUMNS
    from ..data.readers.matbench import MATBENCH_COLUMNS

    return {**KEY_ALIASES, **CSV_COLUMNS, **MATBENCH_COLUMNS}


def _task_specs(cfg: FinetuneConfig) -> list[Any]:
    """TaskSpecs of the new heads: a native label name (heat_all) reads its canonical target and
    names the task; a given kind brings its loss (bce for classification) unless one is given."""
    from ..data.targets import TARGETS
    from ..model import TaskSpec
    from .pretrain import _task

    aliases, specs = target_aliases(), []
    for i, mapping in enumerate(cfg.tasks):
        if not isinstance(mapping, dict):
            raise ConfigError(f"tasks[{i}]: expected a mapping of TaskSpec fields, got {type(mapping).__name__}")
        mapping = dict(mapping)
        target = mapping.get("target")
        if isinstance(target, str) and target not in TARGETS and target not in cfg.data.derive and target in aliases:
            mapping.setdefault("name", target)
            mapping["target"] = aliases[target]
        if "kind" in mapping and "loss" not in mapping:
            mapping["loss"] = "bce" if mapping["kind"] == "classification" else "mae"
        specs.append(_task(TaskSpec, mapping, f"tasks[{i}]"))
    names = [s.name for s in specs]
    for i, spec in enumerate(specs):
        if names.count(spec.name) > 1:
            raise ConfigError(f"tasks[{i}].name: {spec.name!r} is used by more than one task")
        if spec.forces_of is not None and spec.forces_of not in names:
            raise ConfigError(f"tasks[{i}].forces_of: no new task named {spec.forces_of!r}")
    return specs


def _frozen_depth(freeze: str, n_layers: int) -> int:
    match freeze:
        case "none":
            return -1
        case "encoder":
            return n_layers
    k = int(freeze.split(":")[1])
    if k > n_layers:
        raise ConfigError(f"freeze: first:{k} but the checkpoint's encoder has {n_layers} interaction blocks")
    return k


def _load_pretrained(path: str) -> tuple[Any, str]:
    """(model, export directory) of the checkpoint; ConfigError naming it when it is not one."""
    from ..model.export import ExportError, load_export, resolve_export

    try:
        return load_export(path), str(resolve_export(path))
    except ExportError as exc:
        raise ConfigError(f"checkpoint: {exc}") from exc


def _head_plan(pretrained, tasks: list[Any], keep: bool) -> tuple[list[str], list[str]]:
    """(kept, replaced) pretrained task names; a force task goes with its replaced energy."""
    new = {t.name for t in tasks}
    replaced = [n for n in pretrained.tasks if n in new]
    if not keep:
        return [], replaced
    kept = [n for n, t in pretrained.tasks.items() if n not in new and t.forces_of not in new]
    return kept, replaced


def validate(cfg: FinetuneConfig) -> Resolved:
    """Every check that needs no process group: tasks, checkpoint (loaded), freeze depth, loader,
    data path and format, precision. Raises ConfigError naming the field."""
    from ..data.stream import LoaderConfig

    tasks = _task_specs(cfg)
    pretrained, where = _load_pretrained(cfg.checkpoint)
    model_cfg = pretrained.config
    loader = from_dict(LoaderConfig, {"cutoff": model_cfg.cutoff, **LOADER_DEFAULTS, **cfg.loader}, "loader")
    if abs(loader.cutoff - model_cfg.cutoff) > 1e-9:
        raise ConfigError(f"loader.cutoff: {loader.cutoff} Å differs from the checkpoint's cutoff "
                          f"{model_cfg.cutoff} Å (leave it out)")
    if cfg.distributed.zero_stage == 3 and not (cfg.ema.enabled and cfg.eval.use_ema):
        raise ConfigError("distributed.zero_stage: ZeRO-3 fine-tuning keeps its best weights from the EMA "
                          "(whole on every rank): set ema.enabled and eval.use_ema true, or use ZeRO 0-2")
    if cfg.distributed.precision == "fp16" and (cfg.distributed.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("distributed.precision: fp16 needs a CUDA device; use bf16 or fp32")
    path, fmt, options, name = resolve_data(cfg.data)
    for i, task in enumerate(tasks):
        if task.datasets and task.datasets != (name,):
            raise ConfigError(f"tasks[{i}].datasets: a fine-tune reads one dataset, {name!r}; leave datasets out")
    options = _csv_columns(path, fmt, options, tasks)
    kept, replaced = _head_plan(pretrained, tasks, cfg.keep_heads)
    return Resolved(cfg, where, pretrained, tasks, kept, replaced, _frozen_depth(cfg.freeze, model_cfg.n_layers),
                    loader, path, fmt, options, name)
