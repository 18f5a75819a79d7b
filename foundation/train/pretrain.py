"""Multi-dataset pretraining: `foundation pretrain --config X.yaml [a.b=value ...]`, the same run as
`launch/pretrain.py` under `deepspeed`, `torchrun` or one plain `python` process.

Order of events (why): the config is parsed and every field, task and path is checked first, so a
typo fails in a second with the field's name and no process group is ever started; then the
process group; then rank 0 builds any missing shards (others wait); then the model with
normalisation and element references from the shard manifests; then DeepSpeed; then the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .config import (CheckpointConfig, DistributedConfig, EMAConfig, EvalConfig, LogConfig,
                     OptimizerConfig, ScheduleConfig)

__all__ = ["DatasetConfig", "PretrainConfig", "Resolved", "load_config", "validate", "run", "cli_main"]

log = logging.getLogger("foundation.train")


@dataclass(frozen=True)
class DatasetConfig:
    """One database: a shard directory (or URL), or native file(s) sharded on first use."""

    shards: str | None = None  # directory holding manifest.json + *.tar, or a URL of one
    path: str | None = None  # native file (or directory), read with `format`, sharded into the cache
    lmdb_from_pickles: list[str] | None = None  # OC20/OC22 record pickles -> an LMDB as released -> shards
    format: str | None = None  # reader (foundation.data.readers.FORMATS)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (e.g. frames, every)
    limit: int | None = None  # first N records of each input only (quick runs)
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)  # train, val, test by record hash
    split_seed: int = 0
    group_by_prefix: bool = False  # split by the id before ':' (all frames of an OC20 system together)

    def __post_init__(self):
        given = [k for k in ("shards", "path", "lmdb_from_pickles") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'shards' (a shard directory), 'path' (+ 'format') "
                             f"or 'lmdb_from_pickles'; got {given or 'none'}")
        if self.shards is None and not self.format:
            raise ValueError("a native input needs 'format' (the reader of that file)")
        if self.lmdb_from_pickles is not None and self.format != "oc20_lmdb":
            raise ValueError("'lmdb_from_pickles' builds an LMDB: format must be 'oc20_lmdb'")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-9:
            raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {self.fractions}")


@dataclass(frozen=True)
class PretrainConfig:
    datasets: dict[str, DatasetConfig]
    tasks: list[dict[str, Any]]  # TaskSpec fields (foundation.model.TaskSpec), checked in validate()
    max_steps: int
    model: str | dict[str, Any] = "configs/model/tiny.yaml"  # ModelConfig file or mapping
    run_dir: str = "runs/pretrain"
    cache_dir: str = "work/shard_cache"  # shards built from native files (keyed by content)
    seed: int = 0
    loader: dict[str, Any] = field(default_factory=dict)  # foundation.data.stream loader config
    loss: Literal["uncertainty", "fixed"] = "uncertainty"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    export: bool = True  # write <run_dir>/export (EMA weights) at the end

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is needed")
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclass(frozen=True)
class Resolved:
    """A validated config with its typed parts built (no process group, no file written)."""

    config: PretrainConfig
    model: Any  # foundation.model.ModelConfig
    tasks: list[Any]  # [foundation.model.TaskSpec]
    loader: Any  # foundation.data.stream loader config


def load_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    """Read YAML, apply `a.b=value` overrides, check keys and types (ConfigError names the field)."""
    return from_dict(PretrainConfig, apply_overrides(load_yaml(path), list(overrides)))


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("pipe:")


def _check_paths(cfg: PretrainConfig) -> None:
    from ..data import readers

    for name, ds in cfg.datasets.items():
        if ds.shards is not None and not _is_url(ds.shards):
            shard_dir = Path(ds.shards)
            if not shard_dir.is_dir():
                raise ConfigError(f"datasets.{name}.shards: no such shard directory: {shard_dir}")
            if not (shard_dir / "manifest.json").is_file():
                raise ConfigError(f"datasets.{name}.shards: {shard_dir} has no manifest.json (not a shard directory)")
        for i, pkl in enumerate(ds.lmdb_from_pickles or []):
            if not Path(pkl).is_file():
                raise ConfigError(f"datasets.{name}.lmdb_from_pickles[{i}]: no such file: {pkl}")
        if ds.path is not None and not Path(ds.path).exists():
            raise ConfigError(f"datasets.{name}.path: no such file or directory: {ds.path}")
        if ds.shards is None:
            if ds.format not in readers.FORMATS:
                raise ConfigError(f"datasets.{name}.format: unknown format {ds.format!r} "
                                  f"(known: {', '.join(sorted(readers.FORMATS))})")


def _task(spec_cls, mapping: dict[str, Any], path: str):
    """A TaskSpec from YAML: level, kind, unit, loss, extensivity and dim default to what
    `foundation.data.targets` knows of the target (TaskSpec.for_target); given keys win."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: expected a mapping of TaskSpec fields, got {type(mapping).__name__}")
    target = mapping.get("target")
    if not isinstance(target, str):
        return from_dict(spec_cls, mapping, path)  # reports the missing/mistyped target
    try:
        base = spec_cls.for_target(target, name=mapping.get("name"), forces_of=mapping.get("forces_of"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(spec_cls, {**to_dict(base), **mapping}, path)


def validate(cfg: PretrainConfig) -> Resolved:
    """Every check that needs no process group: model config, task specs, loader config, paths,
    and precision vs device. Raises ConfigError naming the field or path."""
    from ..data.stream import LoaderConfig
    from ..model import ModelConfig, TaskSpec

    if isinstance(cfg.model, str):
        model_cfg = from_dict(ModelConfig, load_yaml(cfg.model), f"model ({cfg.model})")
    else:
        model_cfg = from_dict(ModelConfig, cfg.model, "model")
    tasks = [_task(TaskSpec, t, f"tasks[{i}]") for i, t in enumerate(cfg.tasks)]
    names = [t.name for t in tasks]
    for i, task in enumerate(tasks):
        if names.count(task.name) > 1:
            raise ConfigError(f"tasks[{i}].name: {task.name!r} is used by more than one task")
        unknown = [d for d in task.datasets if d not in cfg.datasets]
        if unknown:
            raise ConfigError(f"tasks[{i}].datasets: {unknown} not in datasets ({', '.join(cfg.datasets)})")
        if task.forces_of is not None and task.forces_of not in names:
            raise ConfigError(f"tasks[{i}].forces_of: no task named {task.forces_of!r}")
    loader = from_dict(LoaderConfig, {"cutoff": model_cfg.cutoff, **cfg.loader}, "loader")
    if abs(loader.cutoff - model_cfg.cutoff) > 1e-9:
        raise ConfigError(f"loader.cutoff: {loader.cutoff} Å differs from the model's cutoff {model_cfg.cutoff} Å "
                          "(leave it out to use the model's)")
    forces = [t.name for t in tasks if t.forces_of is not None]
    if cfg.distributed.zero_stage == 3 and forces:
        # Measured: ZeRO-3 frees each gathered weight after its forward, but the force loss
        # back-propagates through -dE/dx (a second derivative) and needs them again.
        raise ConfigError(f"distributed.zero_stage: ZeRO-3 cannot train force tasks ({', '.join(forces)}): "
                          "their loss needs second derivatives through weights ZeRO-3 has released; use 2")
    if cfg.distributed.precision == "fp16":
        import torch

        if cfg.distributed.device == "cpu" or not torch.cuda.is_available():
            raise ConfigError("distributed.precision: fp16 needs a CUDA device (DeepSpeed has no CPU fp16); "
                              "use bf16 or fp32")
    _check_paths(cfg)
    return Resolved(cfg, model_cfg, tasks, loader)


# -- the run -------------------------------------------------------------------------------------
def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True, stream=sys.stdout)


def _write_record(run_dir: Path, res: Resolved, ds_config: dict[str, Any], shard_dirs: dict[str, Path]) -> None:
    """The run's config, the generated DeepSpeed JSON and the resolved shard directories."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(res.config), sort_keys=False))
    (run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=1))
    (run_dir / "shards.json").write_text(json.dumps({k: str(v) for k, v in shard_dirs.items()}, indent=1))


def _export(engine, ema, out: Path, zero_stage: int, info, extra: dict[str, Any]) -> None:
    """Collective. The portable export (EMA weights when kept, else the trained ones, float32)."""
    import contextlib
    import copy

    from ..model import save_export
    from .distributed import barrier

    gather = contextlib.nullcontext()
    if ema is None and zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
    with gather:
        if info.is_main:
            model = ema.module.model if ema is not None else engine.module.model
            save_export(copy.deepcopy(model).float(), out, extra=extra)
            log.info("export (%s weights) written to %s", "EMA" if ema is not None else "trained", out)
    barrier(info)


def _objective(res: Resolved, shard_dirs: dict[str, str]):
    """Model + loss with normalisation and element references from the manifests (seeded, so
    every rank starts from the same weights)."""
    from ..model import FoundationModel
    from .datasets import task_statistics
    from .loop import Objective
    from .loss import MultiTaskLoss
    from .rng import seed_everything

    cfg = res.config
    normalization, element_refs = task_statistics(res.tasks, shard_dirs)
    seed_everything(cfg.seed)
    model = FoundationModel(res.model, res.tasks, normalization, element_refs)
    # Predictions only feed the loss and the per-dataset metrics, which read each force task on
    # its own datasets: one backward pass for all force tasks instead of one per task.
    model.forces_on_own_datasets = True
    loss = MultiTaskLoss(res.tasks, mode=cfg.loss, normalization=normalization)
    return Objective(model, loss, touch_all_parameters=cfg.distributed.zero_stage in (1, 2))


def _trainer(res: Resolved, engine, ema, shard_dirs: dict[str, str], info):
    """The loop with its data, TensorBoard writer (rank 0) and batch preparation."""
    from .datasets import make_stream, make_val_splits
    from .engine import compute_dtype
    from .loop import LoopSettings, Trainer

    cfg = res.config
    writer = None
    if info.is_main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard"))
    dtype = compute_dtype(engine)
    settings = LoopSettings(cfg.max_steps, cfg.optimizer, cfg.schedule, cfg.eval, cfg.checkpoint, cfg.log)
    return Trainer(engine, ema, make_stream(res.loader, shard_dirs, info),
                   make_val_splits(res.loader, shard_dirs, info), res.tasks, info, cfg.run_dir, settings,
                   lambda b: b.to(info.device, dtype), writer=writer, zero_stage=cfg.distributed.zero_stage)


def run(res: Resolved, local_rank: int | None = None) -> dict[str, Any]:
    """Collective: run the whole pretraining on this process; returns the summary."""
    from . import checkpoint as ck
    from .datasets import prepare_shards, resume_position
    from .distributed import barrier, setup, teardown
    from .ema import EMA
    from .engine import build_engine
    from .rng import seed_everything

    cfg = res.config
    info = setup(cfg.distributed.device, cfg.distributed.timeout_s, local_rank)
    _setup_logging(info.rank)
    run_dir = Path(cfg.run_dir)
    try:
        shard_dirs = prepare_shards(cfg, info)
        objective = _objective(res, shard_dirs)
        ema = EMA(objective, cfg.ema.decay) if cfg.ema.enabled else None
        plan = ck.plan_resume(run_dir / "checkpoints", cfg.checkpoint, info)
        engine, ds_config = build_engine(objective, cfg.distributed, cfg.optimizer, info,
                                         load_universal=plan.mode == "universal")
        if info.is_main:
            _write_record(run_dir, res, ds_config, shard_dirs)
        seed_everything(cfg.seed * 1000 + info.rank)  # per-rank randomness from here on
        trainer = _trainer(res, engine, ema, shard_dirs, info)
        train_state, data_state = ck.restore(engine, plan, ema, info)
        trainer.load_state(train_state, data_state)
        if plan.mode != "fresh" and data_state is None and "data" in train_state:
            resume_position(trainer.stream, train_state["data"])  # another world size: same epoch fraction
        if info.is_main:
            log.info("run %s: %d rank(s) on %s (%s), ZeRO %d, %s, resume: %s at step %d", run_dir,
                     info.world_size, info.device, info.backend, cfg.distributed.zero_stage,
                     cfg.distributed.precision, plan.mode, trainer.state.step)
        summary = trainer.run()
        if cfg.export:
            _export(engine, ema, run_dir / "export", cfg.distributed.zero_stage, info, {
                "run_dir": str(run_dir), "steps": summary["steps"], "weights": "ema" if ema is not None else "raw",
                "datasets": dict(shard_dirs), "validation": summary["validation"]})
        if trainer.writer is not None:
            trainer.writer.close()
        barrier(info)
        return summary
    finally:
        teardown()


# -- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str], command: str = "pretrain") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/pretrain/<name>.yaml")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; ignore")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print the DeepSpeed JSON, and exit")
    parser.add_argument("overrides", nargs="*", help="key.path=value (YAML values)")
    return parser.parse_intermixed_args(argv)


def cli_main(argv: list[str], command: str = "pretrain") -> int:
    args = parse_args(argv, command)
    try:
        res = validate(load_config(args.config, args.overrides))
    except ConfigError as exc:
        print(f"foundation {command}: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from .deepspeed_config import deepspeed_config

        print(json.dumps(deepspeed_config(res.config.distributed, res.config.optimizer), indent=1))
        return 0
    run(res, args.local_rank)
    return 0
