"""`RunConfig`: one typed config for every training run. Pretraining and fine-tuning are two
recipes of it, which differ only in their defaults (`RECIPE_DEFAULTS`) and in what initialises the
model:

    pretrain   a fresh model from `model` (a ModelConfig file or mapping); every dataset of
               `datasets`; uncertainty-weighted loss; checkpoints resumed
    finetune   the encoder of `checkpoint` (an export) with new heads, or a fresh model from
               `model` with `checkpoint: null`; one `data` file whose records keep only the tasks'
               labels; fixed loss weights; early stopping; the exported weights scored on the
               validation and test splits at the end (`final_eval`)

A YAML names its recipe (`recipe: finetune`) or takes the command's; the recipe's defaults sit
under the YAML, which sits under `key.path=value` overrides. Unknown keys and wrong types are a
ConfigError naming the dotted path.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, apply_overrides, from_dict, load_yaml
from ..data.shards.stream import LoaderConfig
from ..model.config import ModelConfig
from .config import (CheckpointConfig, DatasetConfig, DistributedConfig, EarlyStoppingConfig, EMAConfig,
                     EvalConfig, LogConfig, OptimizerConfig, ScheduleConfig, parse_duration)

__all__ = ["TaskConfig", "RunConfig", "RECIPES", "RECIPE_DEFAULTS", "load_config", "config_from_mapping"]

RECIPES = ("pretrain", "finetune")
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"run_dir": "runs/pretrain", "model": "configs/model/small.yaml", "loss": "uncertainty"},
    "finetune": {
        "run_dir": "runs/finetune", "checkpoint": "runs/sample/export", "loss": "fixed", "final_eval": True,
        "loader": {"max_atoms": 256},  # smaller batches than pretraining: more steps on small data
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "schedule": {"warmup_steps": 20, "min_lr_ratio": 0.05},
        "early_stopping": {"enabled": True},
        "eval": {"every": 25},
        "checkpoints": {"every": 1000, "keep": 1, "resume": False},  # a fresh fine-tune each time
    },
}
_DATA_DEFAULTS = {"fractions": [0.8, 0.1, 0.1], "keep_labels": "tasks"}  # the `data:` form


@dataclass(frozen=True)
class TaskConfig:
    """A task of the YAML: `target` and what differs from `TaskSpec.for_target(target)` (level,
    kind, unit, loss, extensivity and dim default to what `foundation.data.targets` knows). A
    native label name (`heat_all`, `e_form`) as target reads its canonical target and names the task."""

    target: str
    name: str | None = None
    datasets: tuple[str, ...] | None = None
    forces_of: str | None = None
    level: Literal["structure", "atom"] | None = None
    kind: Literal["regression", "classification"] | None = None
    unit: str | None = None
    loss: Literal["mae", "mse", "huber", "bce"] | None = None
    extensive: bool | None = None
    weight: float | None = None
    dim: int | None = None
    huber_delta: float | None = None
    pool: Literal["contributions", "features"] | None = None


@dataclass(frozen=True)
class RunConfig:
    tasks: list[TaskConfig]
    recipe: Literal["pretrain", "finetune"] = "pretrain"
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    data: DatasetConfig | None = None  # one dataset (fine-tuning's usual form), named by data.name or its stem
    model: str | ModelConfig | None = None  # a fresh model: ModelConfig YAML file or mapping
    checkpoint: str | None = None  # pretrained export (directory, run dir, or a file in it)
    from_scratch: bool = False  # with a checkpoint: its architecture, random encoder (a baseline)
    freeze: str = "none"  # "none" | "encoder" | "first:K" (embedding + first K interaction blocks)
    lr_decay: float = 1.0  # heads lr, last block lr·D, ..., embedding lr·D^(L+1)
    keep_heads: bool = False  # keep the checkpoint's other heads in the export (trained on nothing)
    # the encoder gets the element descriptors (ModelConfig.element_features) if it lacks them: a
    # checkpoint's, zero-initialised (it computes as pretrained until trained); a fresh model's, as if
    # its config said so. In a task config, every model compared on the task gets them.
    add_element_features: bool = False
    # the same for the cell descriptors (ModelConfig.cell_features: volume per atom, packing
    # fraction, volume against the elemental solids'; foundation/nn/cell.py)
    add_cell_features: bool = False
    # Å: the std of a Gaussian displacement added to every atom of every training batch (each
    # step draws anew; validation and test see the true positions). An augmentation for the small
    # structure-level property sets; refused with force or other atom-level tasks, whose labels
    # belong to the true positions. 0: none.
    position_noise: float = 0.0
    # train through torch.compile (dynamic shapes; bench/README.md, "Compiled training steps"):
    # faster steps after a first compile of ~15-30 s per process. Evaluation stays eager. Refused
    # with force tasks (a compiled graph has no double backward, which force training needs).
    compile: bool = False
    max_steps: int | None = None
    epochs: float | None = None  # passes over the train split; with max_steps, the smaller wins
    # wall-clock budget of the training loop: seconds or "10m", "1h"; the run stops there, keeps its
    # best validation weights (early stopping) and exports; the lr decays over whichever budget
    # is further along. Equal budgets are how models are compared (bench/).
    max_time: float | str | None = None
    loss: Literal["uncertainty", "fixed"] = "uncertainty"
    # uncertainty weights: the most weight a task may earn (a floor of -log(max) on s_t); None:
    # no cap. The weight's optimum is 1 / (the task's train loss), so a small set the model
    # memorises earns ever more weight without it (bench/README, issue 13 heads).
    max_task_weight: float | None = None
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(cutoff=None))  # cutoff: the model's
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)  # of this run
    eval: EvalConfig = field(default_factory=EvalConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run_dir: str = "runs/pretrain"
    cache_dir: str = "work/shard_cache"  # shards built from native files (keyed by their inputs)
    seed: int = 0
    export: bool = True  # write <run_dir>/export (EMA weights, or the best evaluated ones) at the end
    final_eval: bool = False  # score the exported weights on the validation and test splits

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed (or --target)")
        if (self.data is None) == (not self.datasets):
            raise ValueError("give 'datasets' (a mapping of named datasets) or 'data' (one dataset), not both")
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise ValueError("give max_steps, epochs or max_time (or several: the first one reached ends the run)")
        if self.max_time is not None:
            object.__setattr__(self, "max_time", parse_duration(self.max_time))
        if (self.max_steps is not None and self.max_steps < 1) or (self.epochs is not None and self.epochs <= 0):
            raise ValueError(f"max_steps must be >= 1 and epochs > 0, got {self.max_steps}, {self.epochs}")
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("give 'model' (a fresh model) or 'checkpoint' (a pretrained export), one of them")
        if self.max_task_weight is not None and not self.max_task_weight > 0:
            raise ValueError(f"max_task_weight must be > 0 (or null), got {self.max_task_weight}")
        if self.max_task_weight is not None and self.loss != "uncertainty":
            raise ValueError("max_task_weight caps the learned uncertainty weights: it needs loss 'uncertainty', "
                             f"got {self.loss!r} (fixed weights are each task's 'weight')")
        if not 0 <= self.position_noise < 0.5:
            raise ValueError(f"position_noise must be in [0, 0.5) Å, got {self.position_noise}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.freeze not in ("none", "encoder") and re.fullmatch(r"first:\d+", self.freeze) is None:
            raise ValueError(f"freeze must be 'none', 'encoder' or 'first:K', got {self.freeze!r}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (a mapping in both is merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_mapping(data: dict[str, Any], recipe: str | None = None) -> RunConfig:
    """A RunConfig from a YAML mapping: its `recipe` (or the given one, default pretrain) picks the
    defaults under it; a `data:` section gets fine-tuning's split and label defaults."""
    named = data.get("recipe")
    if named is not None and recipe is not None and named != recipe:
        raise ConfigError(f"recipe: the config is a {named!r} config, run by the {recipe!r} command")
    chosen = named or recipe or "pretrain"
    if chosen not in RECIPES:
        raise ConfigError(f"recipe: expected one of {list(RECIPES)}, got {chosen!r}")
    merged = _merge(RECIPE_DEFAULTS[chosen], {**data, "recipe": chosen})
    if "model" in data and "checkpoint" not in data:
        merged["checkpoint"] = None  # a model config alone: a fresh model of that architecture
    if "checkpoint" in data and "model" not in data:
        merged.pop("model", None)
    if isinstance(merged.get("data"), dict):
        merged["data"] = _merge(_DATA_DEFAULTS, merged["data"])
    return from_dict(RunConfig, merged)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), recipe: str | None = None) -> RunConfig:
    """Read YAML, apply `a.b=value` overrides, check keys and types (ConfigError names the field)."""
    return config_from_mapping(apply_overrides(load_yaml(path), list(overrides)), recipe)
