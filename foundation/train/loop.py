"""The training loop: micro-steps under a DeepSpeed engine, NaN skipping, EMA, evaluation,
checkpoints, TensorBoard and a progress bar. Model-agnostic: it needs an `Objective`
(module returning `(loss, logs, preds)`), a batch stream with a position, and validation splits.

Collectives per micro-step, identical on every rank: one all-reduce of
[non-finite flag, loss, atoms]; a flagged micro-step is skipped by ALL ranks (no backward, no
`engine.step()`, so DeepSpeed's accumulation counter does not move and no NaN reaches the weights).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import save_checkpoint
from ..metrics import eval_log_line, flat_scalars, head_verdicts, summary_table
from .config import CheckpointConfig, EvalConfig, LogConfig, OptimizerConfig, ScheduleConfig
from .distributed import DistInfo, all_reduce
from .ema import EMA
from .engine import gathered, parameter_dtype
from .validation import evaluate
from .schedule import learning_rate

__all__ = ["Objective", "BatchStream", "LoopSettings", "TrainState", "Trainer"]

log = logging.getLogger("foundation.train")


class Objective(nn.Module):
    """Model and loss in one module, so DeepSpeed also optimises the loss's learned task weights.

    `touch_all_parameters`: add 0·Σp to the loss so every parameter has a gradient on every
    rank. A head whose label is absent from one rank's batch otherwise has no gradient there,
    and ZeRO-1/2 then reduce buckets of different sizes on different ranks (gloo aborts with
    "Received data size doesn't match"; NCCL hangs). ZeRO-0 fills such gradients with zeros itself.
    `position_noise` (Å): in training, every atom is displaced by a fresh N(0, σ²) per axis before
    the forward pass (RunConfig.position_noise); evaluation sees the true positions.
    `compile`: training forwards run the model through `torch.compile` (dynamic shapes: batches
    differ in atoms and edges; RunConfig.compile). Evaluation stays eager. The compiled function
    belongs to this object's own model: a deep copy (the EMA's) compiles its own or runs eager,
    never the original's weights. Not with force tasks: compiled graphs have no double backward.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, touch_all_parameters: bool = False,
                 position_noise: float = 0.0, compile: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.touch_all_parameters = touch_all_parameters
        self.position_noise = position_noise
        self.compile = compile
        # (id of the model it was made for, compiled module): in a tuple, so the compiled wrapper is
        # not registered as a submodule (its parameters would appear twice in the state dict)
        self._compiled: tuple[int, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # copies (the EMA's) compile their own model, if they train
        return state

    def _model_forward(self, batch):
        if not (self.compile and self.training):
            return self.model(batch)
        if self._compiled is None or self._compiled[0] != id(self.model):
            self._compiled = (id(self.model), torch.compile(self.model, dynamic=True))
        return self._compiled[1](batch)

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
        if self.position_noise and self.training:
            noise = torch.randn_like(batch.positions) * self.position_noise  # [n_atoms, 3] Å
            batch = replace(batch, positions=batch.positions + noise)
        preds = self._model_forward(batch)
        loss, logs = self.loss(preds, batch)
        if self.touch_all_parameters and self.training:
            params = [p for p in self.parameters() if p.requires_grad]
            loss = loss + 0.0 * torch.stack([p.sum() for p in params]).sum().to(loss.dtype)
        return loss, logs, preds


class BatchStream(Protocol):
    """An endless iterator of training batches for this rank that knows its position."""

    def __next__(self): ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    max_steps: int | None  # None: the wall-clock budget alone
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    log: LogConfig
    max_time: float | None = None  # seconds of the loop's wall clock (training, evaluation, checkpoints)


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done
    micro: int = 0  # micro-batches drawn (every rank draws the same number)
    skipped: int = 0  # micro-batches skipped for a non-finite loss
    atoms: int = 0  # atoms trained on, all ranks
    train_s: float = 0.0  # seconds in training micro-steps (excludes eval and checkpoints)
    wall_s: float = 0.0  # seconds of the loop's wall clock, all ranks agreeing (the max_time budget)
    skipped_at: list[int] = field(default_factory=list)  # optimiser step during which each skip happened


class Trainer:
    """Owns one run's loop. `prepare(batch)` moves a batch to the device and dtype."""

    def __init__(
        self,
        engine,
        ema: EMA | None,
        stream: BatchStream,
        val_splits: dict[str, Callable[[], Iterable]],
        tasks: list[Any],
        info: DistInfo,
        run_dir: str | Path,
        settings: LoopSettings,
        prepare: Callable[[Any], Any],
        writer=None,
        zero_stage: int = 0,
        on_eval: Callable[[int, dict[str, Any]], bool] | None = None,
        desc: str = "pretrain",
        baselines: dict[str, tuple[float, bool]] | None = None,
    ):
        self.engine, self.ema, self.stream, self.val_splits = engine, ema, stream, val_splits
        self.tasks, self.info, self.run_dir, self.s = tasks, info, Path(run_dir), settings
        self.prepare, self.writer, self.zero_stage = prepare, writer, zero_stage
        # Called with (step, metrics) after every scheduled evaluation; True stops the run there
        # (early stopping). The metrics are reduced over ranks, so every rank decides alike.
        self.on_eval, self.desc = on_eval, desc
        self.baselines = baselines  # {task: mean predictor}: its MAE is scored beside every head's
        self.state = TrainState()
        self.units = {t.name: t.unit for t in tasks}
        self._logs: dict[str, list[float]] = defaultdict(list)
        self.last_metrics: dict[str, Any] = {}
        self.stopped_by: str | None = None  # "max_steps" | "max_time" | "early_stopping" | "preempted"
        # A preemption.Preemption (its `requested` set by the signal handler); all-reduced every micro-step.
        self.preemption = None
        self.preempted_by: str | None = None
        self.batch: dict[str, int] = {}  # world_size, grad_accum, max_atoms: kept by a resume on another world size
        self.initial_metrics: dict[str, Any] = {}

    # -- one micro-step -------------------------------------------------------------------
    def _micro_step(self) -> tuple[bool, float]:
        """Forward/backward one batch. Returns (an optimiser step happened, global mean loss)."""
        t0 = time.perf_counter()  # throughput includes loading: a starved step is a slow step
        batch = self.prepare(next(self.stream))
        loss, logs, _ = self.engine(batch)
        finite = bool(torch.isfinite(loss.detach()).all())
        signalled = self.preemption is not None and self.preemption.requested is not None
        local = torch.tensor([0.0 if finite else 1.0, float(loss.detach()) if finite else 0.0,
                              float(batch.n_atoms.sum()), 1.0 if signalled else 0.0], dtype=torch.float64)
        red = all_reduce(local, self.info).cpu()
        if red[3] > 0 and self.preempted_by is None:  # every rank learns it at the same micro-step
            self.preempted_by = self.preemption.requested if signalled else "a signal to another rank"
        if self.s.max_time is not None:  # every rank takes the slowest rank's clock
            clock = torch.tensor([self._wall0 + time.perf_counter() - self._start], dtype=torch.float64)
            self.state.wall_s = float(all_reduce(clock, self.info, op="max").cpu()[0])
        self.state.micro += 1
        self.state.atoms += int(red[2])
        if red[0] > 0:
            self.state.skipped += 1
            self.state.skipped_at.append(self.state.step)
            if self.info.is_main:
                log.warning("non-finite loss on %d rank(s) at step %d (micro-batch %d): skipped on all ranks "
                            "(%d skipped so far)", int(red[0]), self.state.step, self.state.micro, self.state.skipped)
            del loss
            self.state.train_s += time.perf_counter() - t0
            return False, float("nan")
        for key, value in logs.items():
            self._logs[key].append(float(value))
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        if boundary:
            used = self.state.wall_s / self.s.max_time if self.s.max_time else 0.0
            lr = learning_rate(self.state.step, self.s.optimizer.lr, self.s.max_steps, self.s.schedule, used)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise decay (engine.param_groups)
        self.engine.step()
        self.state.train_s += time.perf_counter() - t0
        return boundary, float(red[1]) / self.info.world_size

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        module = self.engine.module
        with gathered(self.engine, enabled=self.zero_stage == 3):
            self.ema.update(module.named_parameters(), module.named_buffers())

    # -- evaluation, logging, checkpoints ----------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        use_ema = self.ema is not None and self.s.eval.use_ema
        module = self.ema.module if use_ema else self.engine.module
        collective = self.zero_stage == 3 and not use_ema
        was_training = module.training
        module.eval()
        needs_grad = any(getattr(t, "forces_of", None) for t in self.tasks)
        prepare = self.prepare
        if use_ema:  # the EMA copy stays float32 while the engine trains in bf16/fp16: batches in its dtype
            dtype = parameter_dtype(module)
            prepare = lambda b: b.to(self.info.device, dtype)  # noqa: E731
        with torch.set_grad_enabled(needs_grad):
            metrics = evaluate(module.model, self.val_splits, self.tasks, self.info, prepare,
                               self.s.eval.max_batches, collective, self.baselines)
        module.train(was_training)
        self.last_metrics = metrics
        if self.info.is_main:
            log.info(eval_log_line(self.state.step, metrics, self.units))
            self._scalars(flat_scalars(metrics))
        return metrics

    def _scalars(self, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, self.state.step)

    def _log_train(self, loss: float) -> None:
        values = {f"train/{k}": sum(v) / len(v) for k, v in self._logs.items() if v}
        values.update({
            "train/loss": loss,
            "train/lr": self.engine.optimizer.param_groups[0]["lr"],
            "train/atoms_per_s": self.state.atoms / max(self.state.train_s, 1e-9),
            "train/skipped_batches": self.state.skipped,
        })
        self._scalars(values)
        self._logs.clear()

    def checkpoint(self) -> Path:
        return save_checkpoint(
            self.engine, self.run_dir / "checkpoints", self.state.step,
            {"train": asdict(self.state), "zero_stage": self.zero_stage, "data": self.stream.state_dict(),
             "batch": self.batch},
            self.stream.state_dict(),
            self.ema.state_dict() if self.ema is not None else None,
            self.info, self.s.checkpoint,
        )

    def load_state(self, train_state: dict[str, Any], data_state: dict[str, Any] | None) -> None:
        """Continue from a restored checkpoint's counters and (same world size) data position."""
        if train_state:
            self.state = TrainState(**train_state["train"])
        if data_state is not None:
            self.stream.load_state_dict(data_state)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until a budget is spent (`max_steps`, `max_time`) or `on_eval` says stop; evaluate and
        checkpoint on schedule and at the end."""
        with logging_redirect_tqdm():  # log lines (evaluations, skips) print above the bar
            return self._run(tqdm)

    def _spent(self) -> str | None:
        """Which budget is used up ("max_steps", "max_time"), or None; every rank agrees."""
        if self.s.max_steps is not None and self.state.step >= self.s.max_steps:
            return "max_steps"
        if self.s.max_time is not None and self.state.wall_s >= self.s.max_time:
            return "max_time"
        return None

    def _run(self, tqdm) -> dict[str, Any]:
        bar = tqdm(total=self.s.max_steps, initial=self.state.step, desc=self.desc, unit="step",
                   disable=not (self.info.is_main and self.s.log.progress), dynamic_ncols=True)
        self._start, self._wall0 = time.perf_counter(), self.state.wall_s
        # A run resumed at its last step still evaluates (its metrics were not kept) but does
        # not rewrite the checkpoint it came from.
        last_eval, last_ckpt = -1, self.state.step
        if self.s.eval.at_start and self.state.step == 0:
            self.initial_metrics = self.evaluate()
        while not self._spent():
            stepped, loss = self._micro_step()
            if not stepped:
                continue
            self.state.step += 1
            self._update_ema()
            step, last = self.state.step, self._spent() is not None
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", atoms_s=f"{self.state.atoms / max(self.state.train_s, 1e-9):.0f}",
                            skipped=self.state.skipped)
            if self.info.is_main and step % self.s.log.every == 0:
                self._log_train(loss)
            stop = False
            if step % self.s.eval.every == 0 or last:
                metrics = self.evaluate()
                last_eval = step
                stop = self.on_eval is not None and self.on_eval(step, metrics)
            if step % self.s.checkpoint.every == 0 or last:
                self.checkpoint()
                last_ckpt = step
            if stop:
                self.stopped_by = "early_stopping"
                break
            if self.preempted_by is not None:  # at an optimiser-step boundary: a consistent checkpoint
                if last_ckpt != step:
                    self.checkpoint()
                    last_ckpt = step
                self.stopped_by = "preempted"
                if self.info.is_main:
                    log.warning("pre-empted (%s) at step %d: checkpoint %s written; no export. The same command "
                                "resumes from it.", self.preempted_by, step,
                                self.run_dir / "checkpoints" / f"step_{step:09d}")
                break
        bar.close()
        self.stopped_by = self.stopped_by or self._spent()
        if self.stopped_by == "preempted":
            return self.summary()
        if last_eval != self.state.step:
            self.evaluate()
        if last_ckpt != self.state.step:
            self.checkpoint()
        return self.summary()

    def _task_weights(self) -> dict[str, float]:
        """{task: its loss weight} (uncertainty: exp(−s_t), learned): a head the weighting starved
        shows as a weight far below the others'."""
        loss = getattr(self.engine.module, "loss", None)
        if loss is None or not hasattr(loss, "weights"):
            return {}
        with gathered(self.engine, enabled=self.zero_stage == 3):
            weights = loss.weights().detach().float().cpu().tolist()
        return {t.name: w for t, w in zip(loss.tasks, weights)}

    _DATA_COUNTERS = ("records", "missing_records", "corrupt_shards", "unreachable_shards", "checksum_failures",
                      "fetch_retries", "replaced_batches", "oversize_batches")

    def _data_counters(self) -> dict[str, int]:
        """Collective: the training loader's counters summed over ranks (what unreadable or
        unreachable shards cost, in records)."""
        counters = getattr(getattr(self.stream, "loader", None), "counters", None) or {}
        local = torch.tensor([float(counters.get(k, 0)) for k in self._DATA_COUNTERS], dtype=torch.float64)
        total = all_reduce(local, self.info).cpu().tolist()
        return {k: int(v) for k, v in zip(self._DATA_COUNTERS, total)}

    def summary(self) -> dict[str, Any]:
        """Collective (peak memory is reduced over ranks). Rank 0 writes summary.json and the table."""
        data = self._data_counters()
        if self.info.is_main and (data["missing_records"] or data["fetch_retries"]):
            log.warning("training data: %d records missing from %d skipped shard(s) (%d unreachable, %d failing "
                        "their checksum); %d fetch retries", data["missing_records"], data["corrupt_shards"],
                        data["unreachable_shards"], data["checksum_failures"], data["fetch_retries"])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
        cuda = torch.cuda.max_memory_allocated() / 2**20 if self.info.device.type == "cuda" else 0.0
        peak = all_reduce(torch.tensor([rss, cuda], dtype=torch.float64), self.info, op="max").cpu()
        out = {
            "steps": self.state.step,
            "stopped_by": self.stopped_by,
            **({"preempted_by": self.preempted_by} if self.preempted_by else {}),
            "wall_seconds": self.state.wall_s if self.s.max_time is not None else None,
            "max_steps": self.s.max_steps,
            "max_time": self.s.max_time,
            "micro_batches": self.state.micro,
            "skipped_batches": self.state.skipped,
            "skipped_at_steps": self.state.skipped_at,
            "atoms": self.state.atoms,
            "train_seconds": self.state.train_s,
            "atoms_per_s": self.state.atoms / max(self.state.train_s, 1e-9),
            "world_size": self.info.world_size,
            "peak_rss_mib_per_rank": float(peak[0]),
            "peak_cuda_mib_per_rank": float(peak[1]),
            "validation": self.last_metrics,
            "initial_validation": self.initial_metrics,
            "heads": head_verdicts(self.last_metrics, self.initial_metrics),
            "task_weights": self._task_weights(),
            "data": data,
        }
        if self.info.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(out, indent=1))
            log.info("final validation metrics (%s weights):\n%s",
                     "EMA" if self.ema is not None and self.s.eval.use_ema else "raw",
                     summary_table(self.last_metrics, self.units, self.initial_metrics))
            if out["task_weights"]:
                log.info("loss weights per task (uncertainty: exp(-s_t), learned): %s",
                         ", ".join(f"{k} {v:.3g}" for k, v in out["task_weights"].items()))
        return out
