"""The one training recipe: `run(validate(load_config(...)))` pretrains or fine-tunes.

Order of events (why): the config is parsed and every field, task, path and the checkpoint are
checked first (`resolve.validate`), so a typo fails in seconds with the field's name and no process
group is ever started; then the process group; then rank 0 builds any missing shards (the others
wait) and the labels are checked (a target the data does not carry is a ConfigError naming the
task); then the model, with every task's statistics from the train splits; then DeepSpeed; then
the loop, with EMA, checkpoints and (when enabled) early stopping; then the export: the best
evaluated weights (early stopping) or the evaluated ones at the end, with the kept pretrained
heads, scored on the validation and test splits when `final_eval` is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from torch.utils.tensorboard import SummaryWriter

from ..config import to_dict
from ..metrics import metrics_table
from ..model import save_export
from . import checkpoint as ck
from .allocator import tune_host_allocator
from .datasets import check_labels, make_stream, make_val_splits, prepare_shards, resume_position
from .distributed import DistInfo, barrier, broadcast_text, lost_rank_reason, setup, teardown
from .early_stopping import EarlyStopping
from .ema import EMA
from .engine import build_engine, compute_dtype, gathered
from .loop import LoopSettings, Trainer
from .normalization import mean_predictors, task_statistics
from .preemption import Preemption
from .resolve import Resolved
from .rng import seed_everything
from .validation import split_metrics
from .watchdog import LostRankError
from .weights import build_objective, export_model, lr_scales

__all__ = ["run", "setup_logging"]

log = logging.getLogger("foundation.train")


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True, stream=sys.stdout)


def _write_record(run_dir: Path, res: Resolved, ds_config: dict[str, Any], shard_dirs: dict[str, str]) -> None:
    """The run's config, the generated DeepSpeed JSON and the resolved shard directories."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(res.config), sort_keys=False))
    (run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=1))
    (run_dir / "shards.json").write_text(json.dumps({k: str(v) for k, v in shard_dirs.items()}, indent=1))


def _budget(res: Resolved, batches_per_epoch: int) -> int | None:
    """Optimiser steps: max_steps, or epochs x steps per epoch, whichever is smaller (None: the
    wall-clock budget alone)."""
    cfg = res.config
    steps = cfg.max_steps or math.inf
    if cfg.epochs is not None:
        per_epoch = math.ceil(batches_per_epoch / cfg.distributed.grad_accum)
        steps = min(steps, max(1, math.ceil(cfg.epochs * per_epoch)))
    return None if steps == math.inf else int(steps)


def _trainer(res: Resolved, engine, ema, dirs: dict[str, str], info: DistInfo, on_eval) -> Trainer:
    """The loop with its data, TensorBoard writer (rank 0) and batch preparation."""
    cfg = res.config
    writer = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard")) if info.is_main and cfg.log.tensorboard else None
    stream = make_stream(res.loader, dirs, info)
    settings = LoopSettings(_budget(res, len(stream.loader)), cfg.optimizer, cfg.schedule, cfg.eval, cfg.checkpoints,
                            cfg.log, cfg.max_time)
    dtype = compute_dtype(engine)
    return Trainer(engine, ema, stream, make_val_splits(res.loader, dirs, info), res.tasks, info, cfg.run_dir,
                   settings, lambda b: b.to(info.device, dtype), writer=writer,
                   zero_stage=cfg.distributed.zero_stage, on_eval=on_eval, desc=cfg.recipe,
                   baselines=mean_predictors(res.tasks, dirs))


def _keep_effective_batch(res: Resolved, plan: ck.ResumePlan, info: DistInfo) -> Resolved:
    """On resume, the checkpoint's batch: the same atoms per optimiser step on any world size.

    A step of the saved run averaged `world_size x grad_accum` micro-batches of `max_atoms` atoms;
    on W ranks the same step takes grad_accum = that / W when it divides, else one micro-batch of
    proportionally more (or fewer) atoms. So 2 -> 1 ranks doubles grad_accum, 1 -> 2 halves it (or
    max_atoms). The learning-rate schedule and step count continue unchanged."""
    batch = plan.batch
    if plan.mode == "fresh" or not batch:
        return res
    cfg, loader = res.config, res.loader
    per_step = int(batch["world_size"]) * int(batch["grad_accum"])  # micro-batches per optimiser step
    if per_step % info.world_size == 0:
        accum, max_atoms = per_step // info.world_size, int(batch["max_atoms"])
    else:
        accum, max_atoms = 1, max(1, round(int(batch["max_atoms"]) * per_step / info.world_size))
    if (accum, max_atoms) == (cfg.distributed.grad_accum, loader.max_atoms):
        return res
    if info.is_main:
        log.warning("resuming a run of %d rank(s) x grad_accum %d x %d atoms on %d rank(s): grad_accum %d, max_atoms "
                    "%d keep the checkpoint's %d atoms per optimiser step (the config's grad_accum %d and max_atoms %d "
                    "are not used on resume)", batch["world_size"], batch["grad_accum"], batch["max_atoms"],
                    info.world_size, accum, max_atoms, per_step * int(batch["max_atoms"]),
                    cfg.distributed.grad_accum, loader.max_atoms)
    cfg = dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, grad_accum=accum))
    return dataclasses.replace(res, config=cfg, loader=dataclasses.replace(loader, max_atoms=max_atoms))


def _engine(res: Resolved, objective, info: DistInfo):
    """(engine, resume plan, ds_config, res): a run that does not resume starts without the earlier
    checkpoints; one that does keeps the checkpoint's batch (`_keep_effective_batch`, in the returned res)."""
    cfg, run_dir = res.config, Path(res.config.run_dir)
    if info.is_main and not cfg.checkpoints.resume and (run_dir / "checkpoints").is_dir():
        log.info("removing the checkpoints of an earlier run in %s (checkpoints.resume is false)", run_dir)
        shutil.rmtree(run_dir / "checkpoints")
    barrier(info)
    plan = ck.plan_resume(run_dir / "checkpoints", cfg.checkpoints, info)
    res = _keep_effective_batch(res, plan, info)
    cfg = res.config
    scale = lr_scales(cfg.lr_decay, res.model.n_layers) if cfg.lr_decay < 1 else None
    engine, ds_config = build_engine(objective, cfg.distributed, cfg.optimizer, info,
                                     load_universal=plan.mode == "universal", lr_scale=scale)
    return engine, plan, ds_config, res


def _final(res: Resolved, model, dirs: dict[str, str], info: DistInfo) -> dict[str, Any]:
    """Rank 0: the exported weights scored on every dataset's validation and test splits."""
    model.to(info.device)
    results = {"validation": split_metrics(model, res.tasks, res.loader, dirs, "val", info.device),
               "test": split_metrics(model, res.tasks, res.loader, dirs, "test", info.device)}
    model.cpu()
    return {k: v for k, v in results.items() if v is not None}


def _summary(res: Resolved, training: dict[str, Any], stopper: EarlyStopping, best_step: int,
             final: dict[str, Any] | None, dirs: dict[str, str], counts: dict[str, Any]) -> dict[str, Any]:
    cfg, run_dir = res.config, Path(res.config.run_dir)
    if final is None:  # pretraining: the loop's summary, with where the export went
        return {**training, "export": str(run_dir / "export"), "best_step": best_step}
    data = {name: {"name": name, "path": ds.path, "format": ds.format, "derive": ds.derive, "shards": dirs[name],
                   "counts": {k: counts[name][k] for k in ("read", "written", "rejected")}
                   | {"splits": {s: v["records"] for s, v in counts[name]["splits"].items()}}}
            for name, ds in res.datasets.items()}
    return {
        "export": str(run_dir / "export"), "best_step": int(best_step), "steps": training["steps"],
        "stopped_early": stopper.stopped, "stopped_by": training["stopped_by"],
        "budget": {"max_steps": training["max_steps"], "max_time": cfg.max_time, "wall_seconds": training["wall_seconds"]},
        "monitor": {"name": stopper.describe(), "best": stopper.best if math.isfinite(stopper.best) else None,
                    "curve": [[step, value if math.isfinite(value) else None] for step, value in stopper.curve]},
        "validation": final.get("validation", {}), **({"test": final["test"]} if "test" in final else {}),
        "checkpoint": res.checkpoint, "from_scratch": cfg.from_scratch,
        "data": data[res.data_name] if cfg.data is not None else data,
        "tasks": {t.name: {"target": t.target, "kind": t.kind, "unit": t.unit} for t in res.tasks},
        "kept_heads": res.kept, "replaced_heads": res.replaced, "freeze": cfg.freeze, "lr_decay": cfg.lr_decay,
        "run_dir": str(run_dir), "train_seconds": training["train_seconds"], "training": training,
    }


def _export_extra(res: Resolved, trainer: Trainer, summary: dict[str, Any], final: dict[str, Any] | None,
                  dirs: dict[str, str]) -> dict[str, Any]:
    """What the export's config.json says of the run that made it, under the recipe's name."""
    cfg = res.config
    keys = ("checkpoint", "from_scratch", "data", "tasks", "best_step", "steps", "freeze", "lr_decay", "kept_heads",
            "replaced_heads", "stopped_early")
    run = {k: summary[k] for k in keys if k in summary}
    run.update(run_dir=cfg.run_dir, datasets=dict(dirs), steps=summary["steps"], best_step=summary["best_step"])
    extra = {cfg.recipe: run, "weights": "ema" if trainer.ema is not None and cfg.eval.use_ema else "raw",
             "metrics": final if final is not None else {"validation": summary["validation"]}}
    return json.loads(json.dumps(extra, default=str))


def _finish(res: Resolved, trainer: Trainer, training: dict[str, Any], evaluated, stopper: EarlyStopping,
            dirs: dict[str, str], counts: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Collective. Export the chosen weights (rank 0), score them, write summary.json; every rank
    returns the summary. `training`: the loop's summary."""
    cfg, run_dir = res.config, Path(res.config.run_dir)
    best = stopper.best_state if stopper.enabled else None
    best_step = stopper.best_step if best is not None else trainer.state.step
    text = ""
    with gathered(trainer.engine, enabled=trainer.ema is None and cfg.distributed.zero_stage == 3):
        if info.is_main:
            model = export_model(res, evaluated(), best)
            final = _final(res, model, dirs, info) if cfg.final_eval else None
            summary = _summary(res, training, stopper, best_step, final, dirs, counts)
            if cfg.export:
                save_export(model, run_dir / "export", extra=_export_extra(res, trainer, summary, final, dirs))
                log.info("export (%s weights of step %d) written to %s", "EMA" if trainer.ema is not None and
                         cfg.eval.use_ema else "trained", best_step, run_dir / "export")
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
            if final is not None:
                log.info("%s: exported the weights of step %d (%s) of %d steps%s to %s; their metrics:\n%s",
                         cfg.recipe, best_step, "best validation " + stopper.describe() if best is not None
                         else "the last", training["steps"], " (stopped early)" if stopper.stopped else "",
                         run_dir / "export", metrics_table(final, {t.name: t.unit for t in res.tasks}))
            text = json.dumps(summary, default=str)
    text = broadcast_text(text, info)
    barrier(info)
    return json.loads(text)


def _train(res: Resolved, split, info: DistInfo, preemption: Preemption) -> dict[str, Any]:
    cfg = res.config
    dirs = prepare_shards(res, info, split)
    counts = check_labels(res, dirs, report=info.is_main)
    stats = task_statistics(res.tasks, dirs)
    objective = build_objective(res, stats)
    ema = EMA(objective, cfg.ema.decay, cfg.ema.start_step, info.device) if cfg.ema.enabled else None
    engine, plan, ds_config, res = _engine(res, objective, info)
    cfg = res.config
    if info.is_main:
        _write_record(Path(cfg.run_dir), res, ds_config, dirs)
    seed_everything(cfg.seed * 1000 + info.rank)  # per-rank randomness from here on
    evaluated = (lambda: ema.module.model) if ema is not None and cfg.eval.use_ema else (lambda: engine.module.model)
    has_val = any(c["splits"]["val"]["records"] for c in counts.values())
    stopper = EarlyStopping(cfg.early_stopping, cfg.early_stopping.enabled and has_val, res.tasks, stats, evaluated)
    trainer = _trainer(res, engine, ema, dirs, info, stopper)
    trainer.batch = {"world_size": info.world_size, "grad_accum": cfg.distributed.grad_accum,
                     "max_atoms": res.loader.max_atoms}
    train_state, data_state = ck.restore(engine, plan, ema, info)
    trainer.load_state(train_state, data_state)
    if plan.mode != "fresh" and data_state is None and "data" in train_state:
        resume_position(trainer.stream, train_state["data"])  # another world size: same epoch fraction
    if ema is not None:
        ema.steps = trainer.state.step
    budget = " and ".join(([f"{trainer.s.max_steps} steps"] if trainer.s.max_steps else [])
                          + ([f"{cfg.max_time:g} s"] if cfg.max_time else []))
    log.info("%s %s: %d rank(s) on %s (%s), ZeRO %d, %s, up to %s, resume: %s at step %d", cfg.recipe,
             cfg.run_dir, info.world_size, info.device, info.backend, cfg.distributed.zero_stage,
             cfg.distributed.precision, budget, plan.mode, trainer.state.step)
    trainer.preemption = preemption
    training = trainer.run()
    if trainer.writer is not None:
        trainer.writer.close()
    if training["stopped_by"] == "preempted":  # the checkpoint is written; leave within the warning time
        barrier(info)
        return {**training, "export": None, "run_dir": cfg.run_dir}
    return _finish(res, trainer, training, evaluated, stopper, dirs, counts, info)


def run(res: Resolved, *, split=None, local_rank: int | None = None) -> dict[str, Any]:
    """Collective: train, export and (with final_eval) score; returns the summary (also
    `<run_dir>/summary.json`). `split`: an object with `assign(crystal) -> "train" | "val" | "test"`
    and `to_json() -> dict` replacing the hash split of the datasets (part of the shard cache key).
    Starts and ends its own process group (one plain process when no launcher set one up), so it
    can be called several times in one process."""
    dist = res.config.distributed
    info = setup(dist.device, dist.timeout_s, local_rank, heartbeat_timeout_s=dist.heartbeat_timeout_s)
    setup_logging(info.rank)
    allocator = tune_host_allocator(dist.tune_host_allocator)
    if info.is_main:
        log.info("host allocator: %s", allocator)
    try:
        # The handlers go in first: a pre-emption signal during the set-up is acted on at the first step.
        with Preemption(dist.preempt_signals) as preemption:
            return _train(res, split, info, preemption)
    except Exception as exc:
        reason = lost_rank_reason(exc) if info.world_size > 1 else None
        if reason is None:
            raise
        raise LostRankError(f"{reason}; rank {info.rank} stops here. The sealed checkpoints in {res.config.run_dir} "
                            "are valid: the same command resumes from the newest") from exc
    finally:
        teardown()
