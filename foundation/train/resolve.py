"""`validate(RunConfig) -> Resolved`: every check that needs no process group, in one place, before
any process group starts or DeepSpeed is imported. Raises ConfigError naming the field.

What it resolves: the model config (a fresh model's file or mapping, or the checkpoint's, whose
export is loaded), the task specs (native label names, target defaults, datasets, forces_of),
which pretrained heads are kept or replaced, the freezing depth, the loader (the model's
cutoff), every dataset's path and format (detected when not given; `ase:<name>` is an
`ase.collections` database), and precision/ZeRO against the device and the tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import ase.collections
import torch

from ..config import ConfigError, from_dict, load_yaml, to_dict
from ..data.labels import target_aliases
from ..data.readers import FORMATS, detect_format
from ..data.readers.cif_csv import read_csv_rows
from ..data.shards.stream import LoaderConfig
from ..data.targets import CSV_COLUMNS, TARGETS
from ..model import FoundationModel, ModelConfig, TaskSpec
from ..model.export import ExportError, load_export, resolve_export
from .config import DatasetConfig
from .run_config import RunConfig, TaskConfig

__all__ = ["Resolved", "validate", "task_specs", "resolve_dataset", "describe"]


@dataclass(frozen=True)
class Resolved:
    """A checked config with its typed parts built (no process group, nothing written)."""

    config: RunConfig
    model: ModelConfig
    tasks: list[TaskSpec]
    datasets: dict[str, DatasetConfig]  # with paths and formats resolved
    loader: LoaderConfig  # with the model's cutoff
    pretrained: FoundationModel | None  # the checkpoint's model (CPU, eval), None for a fresh model
    checkpoint: str | None  # the export directory read
    kept: list[str]  # pretrained tasks kept in the export (keep_heads)
    replaced: list[str]  # pretrained tasks whose name a new task takes
    frozen_depth: int  # encoder parameters of depth <= this are frozen (-1: none)

    @property
    def data_name(self) -> str:
        """The dataset's name when the run reads one (fine-tuning), else the first one's."""
        return next(iter(self.datasets))


def _task(mapping: TaskConfig, derived: dict[str, str], path: str) -> TaskSpec:
    """A TaskSpec: target defaults (TaskSpec.for_target), then the given fields; a native label
    name (heat_all) reads its canonical target and names the task; a given kind brings its loss."""
    given = {k: v for k, v in to_dict(mapping).items() if v is not None}
    aliases = target_aliases()
    target = given["target"]
    if target not in TARGETS and target not in derived and target in aliases:
        given.setdefault("name", target)
        given["target"] = aliases[target]
    if "kind" in given and "loss" not in given:
        given["loss"] = "bce" if given["kind"] == "classification" else "mae"
    try:
        base = TaskSpec.for_target(given["target"], name=given.get("name"), forces_of=given.get("forces_of"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(TaskSpec, {**to_dict(base), **given}, path)


def task_specs(cfg: RunConfig, datasets: dict[str, DatasetConfig]) -> list[TaskSpec]:
    derived = {k: v for ds in datasets.values() for k, v in ds.derive.items()}
    tasks = [_task(t, derived, f"tasks[{i}]") for i, t in enumerate(cfg.tasks)]
    names = [t.name for t in tasks]
    single = next(iter(datasets)) if cfg.data is not None else None
    for i, task in enumerate(tasks):
        if names.count(task.name) > 1:
            raise ConfigError(f"tasks[{i}].name: {task.name!r} is used by more than one task")
        if single is not None and task.datasets and task.datasets != (single,):
            raise ConfigError(f"tasks[{i}].datasets: this run reads one dataset, {single!r}; leave datasets out")
        unknown = [d for d in task.datasets if d not in datasets]
        if unknown:
            raise ConfigError(f"tasks[{i}].datasets: {unknown} not in datasets ({', '.join(datasets)})")
        if task.forces_of is not None and task.forces_of not in names:
            raise ConfigError(f"tasks[{i}].forces_of: no task named {task.forces_of!r}")
        if not task.labelled and not any(t.forces_of == task.name for t in tasks):
            raise ConfigError(f"tasks[{i}].target: {task.target!r} has no labels and no force task names "
                              f"{task.name!r} in forces_of, so nothing would train it")
    return tasks


def _collection(name: str, ds: DatasetConfig, where: str) -> DatasetConfig:
    collection = getattr(ase.collections, name, None)
    if not isinstance(collection, ase.collections.Collection):
        raise ConfigError(f"{where}.path: ase.collections has no collection {name!r} (dcdft, g2, s22)")
    return dataclasses.replace(ds, path=collection.filename, format=ds.format or "ase",
                               options={"source": name, **ds.options})


def resolve_dataset(ds: DatasetConfig, where: str = "data") -> DatasetConfig:
    """`ds` with its path checked and its format known (detected from the file when not given)."""
    if ds.shards is not None:
        if "://" not in ds.shards and not ds.shards.startswith("pipe:"):
            if not Path(ds.shards).is_dir():
                raise ConfigError(f"{where}.shards: no such shard directory: {ds.shards}")
            if not (Path(ds.shards) / "manifest.json").is_file():
                raise ConfigError(f"{where}.shards: {ds.shards} has no manifest.json (not a shard directory)")
        return ds
    for i, pkl in enumerate(ds.lmdb_from_pickles or []):
        if not Path(pkl).is_file():
            raise ConfigError(f"{where}.lmdb_from_pickles[{i}]: no such file: {pkl}")
    if ds.path is not None and ds.path.startswith("ase:"):
        return _collection(ds.path[4:], ds, where)
    if ds.path is not None and not Path(ds.path).exists():
        raise ConfigError(f"{where}.path: no such file or directory: {ds.path}")
    fmt = ds.format
    if fmt is None:
        try:
            fmt = detect_format(Path(ds.path))
        except ValueError as exc:
            raise ConfigError(f"{where}.format: cannot tell the format of {ds.path} ({exc}); give format") from exc
    if fmt not in FORMATS:
        raise ConfigError(f"{where}.format: unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    return dataclasses.replace(ds, format=fmt)


def _csv_columns(ds: DatasetConfig, targets: set[str]) -> DatasetConfig:
    """cif_csv reads only the label columns it knows by default (CSV_COLUMNS): a task naming
    another column of the file (heat_ref) asks for it."""
    if ds.format != "cif_csv" or "targets" in ds.options or ds.path is None:
        return ds
    header, rows = read_csv_rows(Path(ds.path))
    rows.close()  # closes the file
    extra = [t for t in sorted(targets) if t in header and t not in CSV_COLUMNS]
    if not extra:
        return ds
    return dataclasses.replace(ds, options={**ds.options, "targets": [c for c in header if c in CSV_COLUMNS] + extra})


def _datasets(cfg: RunConfig) -> dict[str, DatasetConfig]:
    if cfg.data is None:
        return {name: resolve_dataset(ds, f"datasets.{name}") for name, ds in cfg.datasets.items()}
    ds = resolve_dataset(cfg.data, "data")
    if cfg.data.name:
        name = cfg.data.name
    elif cfg.data.path is not None and cfg.data.path.startswith("ase:"):
        name = cfg.data.path[4:]
    else:
        source = Path(cfg.data.path or cfg.data.shards or cfg.data.lmdb_from_pickles[0])
        name = source.name.split(".")[0] if source.is_file() else source.name
    return {name: ds}


def _frozen_depth(freeze: str, n_layers: int) -> int:
    match freeze:
        case "none":
            return -1
        case "encoder":
            return n_layers
    k = int(freeze.split(":")[1])
    if k > n_layers:
        raise ConfigError(f"freeze: first:{k} but the encoder has {n_layers} interaction blocks")
    return k


def _model(cfg: RunConfig) -> tuple[ModelConfig, FoundationModel | None, str | None]:
    """(model config, the checkpoint's model or None, the export directory read or None)."""
    if cfg.checkpoint is not None:
        try:
            pretrained, where = load_export(cfg.checkpoint), str(resolve_export(cfg.checkpoint))
        except ExportError as exc:
            raise ConfigError(f"checkpoint: {exc}") from exc
        config = pretrained.config
    else:
        pretrained = where = None
        config = cfg.model
        if isinstance(config, str):
            config = from_dict(ModelConfig, load_yaml(config), f"model ({config})")
    if cfg.add_element_features:
        config = dataclasses.replace(config, element_features=True)
    if cfg.add_cell_features:
        config = dataclasses.replace(config, cell_features=True)
    return config, pretrained, where


def _head_plan(pretrained: FoundationModel | None, tasks: list[TaskSpec], keep: bool) -> tuple[list[str], list[str]]:
    """(kept, replaced) pretrained task names; a force task goes with its replaced energy."""
    if pretrained is None:
        return [], []
    new = {t.name for t in tasks}
    replaced = [n for n in pretrained.tasks if n in new]
    if not keep:
        return [], replaced
    return [n for n, t in pretrained.tasks.items() if n not in new and t.forces_of not in new], replaced


def _check_distributed(cfg: RunConfig, tasks: list[TaskSpec]) -> None:
    dist = cfg.distributed
    forces = [t.name for t in tasks if t.forces_of is not None]
    if dist.zero_stage == 3 and forces:
        # Measured: ZeRO-3 frees each gathered weight after its forward, but the force loss
        # back-propagates through -dE/dx (a second derivative) and needs them again.
        raise ConfigError(f"distributed.zero_stage: ZeRO-3 cannot train force tasks ({', '.join(forces)}): "
                          "their loss needs second derivatives through weights ZeRO-3 has released; use 2")
    if dist.zero_stage == 3 and cfg.early_stopping.enabled and not (cfg.ema.enabled and cfg.eval.use_ema):
        raise ConfigError("distributed.zero_stage: ZeRO-3 early stopping keeps its best weights from the EMA "
                          "(whole on every rank): set ema.enabled and eval.use_ema true, or use ZeRO 0-2")
    if dist.precision == "fp16" and (dist.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("distributed.precision: fp16 needs a CUDA device (DeepSpeed has no CPU fp16); "
                          "use bf16 or fp32")


def validate(cfg: RunConfig) -> Resolved:
    """Every check that needs no process group; raises ConfigError naming the field or path."""
    datasets = _datasets(cfg)
    tasks = task_specs(cfg, datasets)
    targets = {t.target for t in tasks}
    datasets = {name: _csv_columns(ds, targets) for name, ds in datasets.items()}
    model_cfg, pretrained, where = _model(cfg)
    cutoff = model_cfg.cutoff
    if cfg.loader.cutoff is not None and abs(cfg.loader.cutoff - cutoff) > 1e-9:
        raise ConfigError(f"loader.cutoff: {cfg.loader.cutoff} Å differs from the model's cutoff {cutoff} Å "
                          "(leave it out to use the model's)")
    loader = dataclasses.replace(cfg.loader, cutoff=cutoff)
    _check_distributed(cfg, tasks)
    kept, replaced = _head_plan(pretrained, tasks, cfg.keep_heads)
    return Resolved(cfg, model_cfg, tasks, datasets, loader, pretrained, where, kept, replaced,
                    _frozen_depth(cfg.freeze, model_cfg.n_layers))


def describe(res: Resolved) -> str:
    """One line: what the run reads and trains (the CLI's --check answer)."""
    data = ", ".join(f"{n} ({ds.format or 'shards'})" for n, ds in res.datasets.items())
    init = f"checkpoint {res.checkpoint}" if res.checkpoint else "a fresh model"
    return (f"config ok ({res.config.recipe}): {data} -> tasks {[t.name for t in res.tasks]}, {init}, "
            f"kept heads {res.kept or 'none'}")

