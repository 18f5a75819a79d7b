"""Fine-tune a pretrained checkpoint on a new property (`foundation finetune`, `launch/finetune.py`).

    foundation finetune --checkpoint runs/sample/export --data perov5_val.csv --target heat_all
    foundation finetune --config configs/finetune/band_gap.yaml --freeze first:1 --lr-decay 0.5
    torchrun --nproc_per_node 2 launch/finetune.py --config configs/finetune/dcdft.yaml
    finetune(load_config("configs/finetune/formation_energy.yaml", ["max_steps=500"]), split=folds)

The pretraining machinery, reused: the data file is read, validated and sharded once into the
cache (`write_shards`, keyed by the file, reader, labels and split rule), the new heads get
normalisation and element references from the train split (`task_statistics`), and the run is the
pretraining `Trainer` under DeepSpeed (ZeRO, precision, gloo/NCCL) with EMA and checkpoints. What
fine-tuning adds: the encoder of the checkpoint (its model config, loaded strictly), frozen wholly
or up to a depth, layer-wise learning rates, early stopping on validation (the best EMA weights are
exported), the pretrained heads kept or dropped, and a final evaluation of the export on the
validation and test splits (`<run_dir>/summary.json`, `<run_dir>/export`).

Order of events: the config, the checkpoint and the data path are checked before any process
group; then rank 0 builds the shards; then the labels are checked (a target the data does not
carry, or non-0/1 classification labels, is a ConfigError naming the task); then training.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, apply_overrides, from_dict, load_yaml
from .finetune_config import (DataConfig, EarlyStoppingConfig, FinetuneConfig, Resolved, load_config,
                              validate)
from .finetune_data import check_labels, metrics_table, prepare_data, split_metrics
from .finetune_weights import DelayedEMA, EarlyStopping, encoder_depth, export_model, freeze_encoder, lr_scales

__all__ = ["DataConfig", "EarlyStoppingConfig", "FinetuneConfig", "Resolved", "load_config", "validate",
           "finetune", "encoder_depth", "freeze_encoder", "lr_scales", "metrics_table", "parse_args",
           "config_from_args", "cli_main"]

log = logging.getLogger("foundation.train")


# -- the run --------------------------------------------------------------------------------------
def _objective(res: Resolved, dirs: dict[str, str]):
    """Model (checkpoint encoder, new heads normalised on the train split) and loss; seeded, so
    every rank starts alike. Returns (objective, normalization)."""
    from ..model import FoundationModel
    from .datasets import task_statistics
    from .loop import Objective
    from .loss import MultiTaskLoss
    from .rng import seed_everything

    cfg = res.config
    normalization, element_refs = task_statistics(res.tasks, dirs)
    seed_everything(cfg.seed)
    model = FoundationModel(res.pretrained.config, res.tasks, normalization, element_refs)
    if not cfg.from_scratch:
        try:
            model.encoder.load_state_dict(res.pretrained.encoder.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint: the encoder of {res.checkpoint} does not load into the model its "
                              f"config describes: {exc}") from exc
    for name in res.replaced:
        log.info("replacing the checkpoint's head %r with a new head (target %s)", name,
                 next(t.target for t in res.tasks if t.name == name))
    frozen = freeze_encoder(model, res.frozen_depth)
    log.info("encoder: %s, %d of %d parameter tensors frozen (%s), lr decay %g; heads: new %s, kept %s",
             "random (from scratch)" if cfg.from_scratch else f"from {res.checkpoint}", len(frozen),
             sum(1 for n, _ in model.named_parameters() if encoder_depth(n) is not None), cfg.freeze,
             cfg.lr_decay, [t.name for t in res.tasks], res.kept or "none")
    loss = MultiTaskLoss(res.tasks, mode=cfg.loss, normalization=normalization)
    return Objective(model, loss, touch_all_parameters=cfg.distributed.zero_stage in (1, 2)), normalization


def _budget(cfg: FinetuneConfig, batches_per_epoch: int) -> int:
    """Optimiser steps: max_steps, or epochs x steps per epoch, whichever is smaller."""
    steps = cfg.max_steps or math.inf
    if cfg.epochs is not None:
        per_epoch = math.ceil(batches_per_epoch / cfg.distributed.grad_accum)
        steps = min(steps, max(1, math.ceil(cfg.epochs * per_epoch)))
    return int(steps)


def _trainer(res: Resolved, engine, ema, dirs: dict[str, str], info, on_eval):
    from .datasets import make_stream, make_val_splits
    from .engine import compute_dtype
    from .loop import LoopSettings, Trainer

    cfg = res.config
    writer = None
    if info.is_main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard"))
    stream = make_stream(res.loader, dirs, info)
    steps = _budget(cfg, len(stream.loader))
    settings = LoopSettings(steps, cfg.optimizer, cfg.schedule, cfg.eval, cfg.checkpoints, cfg.log)
    dtype = compute_dtype(engine)
    return Trainer(engine, ema, stream, make_val_splits(res.loader, dirs, info), res.tasks, info, cfg.run_dir,
                   settings, lambda b: b.to(info.device, dtype), writer=writer,
                   zero_stage=cfg.distributed.zero_stage, on_eval=on_eval, desc="finetune")


def _summary(res: Resolved, results: dict[str, Any], best_step: int, shard_dir: str, counts: dict[str, Any],
             training: dict[str, Any], stopper: EarlyStopping) -> dict[str, Any]:
    cfg, run_dir = res.config, Path(res.config.run_dir)
    data = {"path": res.data_path, "format": res.data_format, "name": res.data_name, "derive": cfg.data.derive,
            "shards": shard_dir, "counts": {k: counts[k] for k in ("read", "written", "rejected")} | {
                "splits": {s: v["records"] for s, v in counts["splits"].items()}}}
    best = stopper.best if math.isfinite(stopper.best) else None
    return {
        "export": str(run_dir / "export"), "best_step": int(best_step), "steps": training["steps"],
        "stopped_early": stopper.stopped, "monitor": {"name": stopper.describe(), "best": best},
        "validation": results["validation"] or {},
        **({"test": results["test"]} if results["test"] is not None else {}),
        "checkpoint": res.checkpoint, "from_scratch": cfg.from_scratch, "data": data,
        "tasks": {t.name: {"target": t.target, "kind": t.kind, "unit": t.unit} for t in res.tasks},
        "kept_heads": res.kept, "replaced_heads": res.replaced, "freeze": cfg.freeze, "lr_decay": cfg.lr_decay,
        "run_dir": str(run_dir), "train_seconds": training["train_seconds"], "training": training,
    }


def _finish(res: Resolved, model, best_step: int, shard_dir: str, counts: dict[str, Any], training: dict[str, Any],
            stopper: EarlyStopping, device) -> dict[str, Any]:
    """Rank 0: evaluate the exported weights on val and test, export, table, summary.json."""
    from ..model import save_export

    run_dir = Path(res.config.run_dir)
    model.to(device)
    results = {"validation": split_metrics(model, res, shard_dir, "val", device),
               "test": split_metrics(model, res, shard_dir, "test", device)}
    summary = _summary(res, results, best_step, shard_dir, counts, training, stopper)
    extra = {"finetune": {k: summary[k] for k in ("checkpoint", "from_scratch", "data", "tasks", "best_step",
                                                    "steps", "freeze", "lr_decay", "kept_heads", "replaced_heads")},
             "metrics": {k: v for k, v in results.items() if v is not None}}
    save_export(model.cpu(), run_dir / "export", extra=extra)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    units = {t.name: t.unit for t in res.tasks}
    log.info("fine-tuned on %s: exported the weights of step %d (%s) of %d steps%s to %s; their metrics:\n%s",
             res.data_name, best_step, "best validation " + stopper.describe() if stopper.enabled else "the last",
             training["steps"], " (stopped early)" if stopper.stopped else "", run_dir / "export",
             metrics_table({k: v for k, v in results.items() if v is not None}, units))
    return summary


def _run(res: Resolved, split, info) -> dict[str, Any]:
    from . import checkpoint as ck
    from .distributed import barrier, broadcast_text
    from .engine import build_engine
    from .pretrain import _write_record
    from .rng import seed_everything

    cfg, run_dir = res.config, Path(res.config.run_dir)
    shard_dir = prepare_data(res, split, info)
    counts = check_labels(res, shard_dir, report=info.is_main)
    dirs = {res.data_name: shard_dir}
    objective, normalization = _objective(res, dirs)
    ema = DelayedEMA(objective, cfg.ema.decay, cfg.ema.start_step) if cfg.ema.enabled else None
    if info.is_main and not cfg.checkpoints.resume and (run_dir / "checkpoints").is_dir():
        log.info("removing the checkpoints of an earlier run in %s (checkpoints.resume is false)", run_dir)
        shutil.rmtree(run_dir / "checkpoints")
    barrier(info)
    plan = ck.plan_resume(run_dir / "checkpoints", cfg.checkpoints, info)
    scale = lr_scales(cfg.lr_decay, res.pretrained.config.n_layers) if cfg.lr_decay < 1 else None
    engine, ds_config = build_engine(objective, cfg.distributed, cfg.optimizer, info,
                                     load_universal=plan.mode == "universal", lr_scale=scale)
    if info.is_main:
        _write_record(run_dir, res, ds_config, dirs)
    seed_everything(cfg.seed * 1000 + info.rank)
    evaluated = (lambda: ema.module.model) if ema is not None and cfg.eval.use_ema else (lambda: engine.module.model)
    has_val = bool(counts["splits"]["val"]["records"])
    stopper = EarlyStopping(cfg.early_stopping, cfg.early_stopping.enabled and has_val, res.tasks, res.data_name,
                             {k: float(v[1]) for k, v in normalization.items()}, evaluated)
    trainer = _trainer(res, engine, ema, dirs, info, stopper)
    train_state, data_state = ck.restore(engine, plan, ema, info)
    trainer.load_state(train_state, data_state)
    if ema is not None:
        ema.steps = trainer.state.step
    log.info("fine-tune %s: %d rank(s) on %s, ZeRO %d, %s, up to %d steps, resume: %s at step %d", run_dir,
             info.world_size, info.device, cfg.distributed.zero_stage, cfg.distributed.precision,
             trainer.s.max_steps, plan.mode, trainer.state.step)
    training = trainer.run()
    if trainer.writer is not None:
        trainer.writer.close()
    text = ""
    if info.is_main:
        model, best_step = export_model(res, evaluated(), stopper, trainer.state.step)
        text = json.dumps(_finish(res, model, best_step, shard_dir, counts, training, stopper, info.device))
    text = broadcast_text(text, info)
    barrier(info)
    return json.loads(text)


def finetune(cfg: FinetuneConfig, *, split=None, local_rank: int | None = None) -> dict[str, Any]:
    """Collective: fine-tune, export and evaluate; returns the summary (also `<run_dir>/summary.json`):
    {"export": export directory, "best_step", "steps", "stopped_early", "validation": {task: metrics},
    "test": {task: metrics} (when the data has a test split), "data": {..., "shards", "counts"}, ...}.

    `split`: an object with `assign(crystal) -> "train" | "val" | "test"` and `to_json() -> dict`
    that replaces the hash split of `cfg.data.fractions` (part of the shard cache key). Starts and
    ends its own process group (one plain process when no launcher set one up), so it can be
    called several times in one process. ConfigError for a bad config, checkpoint or target."""
    from .distributed import setup, teardown
    from .pretrain import _setup_logging

    res = validate(cfg)
    info = setup(cfg.distributed.device, cfg.distributed.timeout_s, local_rank)
    _setup_logging(info.rank)
    try:
        return _run(res, split, info)
    finally:
        teardown()


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str], command: str = "finetune") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"foundation {command}", description=__doc__.splitlines()[0],
                                     epilog="Flags override the YAML; key.path=value overrides override both.")
    parser.add_argument("--config", help="configs/finetune/<name>.yaml (optional with --data and --target)")
    parser.add_argument("--checkpoint", help="pretrained export: directory, run directory, or a file in it")
    parser.add_argument("--data", help="data file or directory (or ase:dcdft); resets the config's format/options")
    parser.add_argument("--format", help="reader of --data (default: detected)")
    parser.add_argument("--target", help="label to fine-tune on (replaces the config's tasks)")
    parser.add_argument("--task-name", help="name of the new head (default: the target)")
    parser.add_argument("--kind", choices=("regression", "classification"))
    parser.add_argument("--freeze", help="none | encoder | first:K")
    parser.add_argument("--lr-decay", type=float, help="layer-wise learning-rate decay D in (0, 1]")
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--keep-heads", dest="keep_heads", action="store_true", default=None,
                       help="keep the checkpoint's other heads in the export")
    heads.add_argument("--drop-heads", dest="keep_heads", action="store_false", help="drop them (default)")
    parser.add_argument("--run-dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by deepspeed; ignore")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("overrides", nargs="*", help="key.path=value (YAML values)")
    return parser.parse_intermixed_args(argv)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The YAML (if any), then the flags, then the key=value overrides."""
    data = load_yaml(args.config) if args.config else {}
    for key, value in (("checkpoint", args.checkpoint), ("freeze", args.freeze), ("lr_decay", args.lr_decay),
                       ("keep_heads", args.keep_heads), ("run_dir", args.run_dir)):
        if value is not None:
            data[key] = value
    if args.data is not None or args.format is not None:
        section = data.get("data") if isinstance(data.get("data"), dict) else {}
        if args.data is not None:
            section = {k: v for k, v in section.items() if k not in ("format", "options", "name")}
            section["path"] = args.data
        if args.format is not None:
            section["format"] = args.format
        data["data"] = section
    named = {k: v for k, v in (("name", args.task_name), ("kind", args.kind)) if v is not None}
    if args.target is not None:
        data["tasks"] = [{"target": args.target, **named}]
    elif named:
        tasks = data.get("tasks") or []
        if len(tasks) != 1:
            raise ConfigError(f"--task-name/--kind apply to one task; the config has {len(tasks)}: give --target")
        data["tasks"] = [{**tasks[0], **named}]
    if not args.config and "max_steps" not in data and "epochs" not in data:
        data["epochs"] = 20.0
    return from_dict(FinetuneConfig, apply_overrides(data, args.overrides))


def cli_main(argv: list[str], command: str = "finetune") -> int:
    args = parse_args(argv, command)
    try:
        cfg = config_from_args(args)
        if args.check:
            res = validate(cfg)
            print(f"config ok: {res.data_path} ({res.data_format}) -> tasks {[t.name for t in res.tasks]}, "
                  f"checkpoint {res.checkpoint}, kept heads {res.kept or 'none'}")
            return 0
        finetune(cfg, local_rank=args.local_rank)
    except ConfigError as exc:
        print(f"foundation {command}: config error: {exc}", file=sys.stderr)
        return 2
    return 0
