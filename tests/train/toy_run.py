"""Run the training machinery on the toy model: `torchrun --nproc_per_node N tests/train/toy_run.py ...`
(or plain `python`). Writes <run_dir>/final.safetensors with the final (raw) weights."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ckpt-every", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--nan-at", type=int, nargs="*", default=[])  # batch indices with a NaN label, last rank
    p.add_argument("--sleep", type=float, default=0.0)  # seconds per micro-step (kill tests)
    p.add_argument("--world-size-change", default="universal")
    p.add_argument("--local_rank", type=int, default=None)
    a = p.parse_args(argv)

    from safetensors.torch import save_file

    from foundation.train import checkpoint as ck
    from foundation.train.config import (CheckpointConfig, DistributedConfig, EvalConfig, LogConfig,
                                         OptimizerConfig, ScheduleConfig)
    from foundation.train.distributed import setup
    from foundation.train.ema import EMA
    from foundation.train.engine import build_engine, compute_dtype
    from foundation.train.loop import LoopSettings, Objective, Trainer
    from foundation.train.rng import seed_everything
    from toy import TASKS, SyntheticStream, ToyLoss, ToyModel, make_batch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    Path(a.run_dir).mkdir(parents=True, exist_ok=True)
    info = setup("cpu", local_rank_arg=a.local_rank)
    seed_everything(7)
    objective = Objective(ToyModel(), ToyLoss())
    ema = EMA(objective, 0.9)
    dist = DistributedConfig(device="cpu", zero_stage=a.zero, precision=a.precision, grad_accum=a.grad_accum)
    opt = OptimizerConfig(lr=1e-2, weight_decay=0.01)
    ckpt_cfg = CheckpointConfig(every=a.ckpt_every, keep=10, world_size_change=a.world_size_change)
    plan = ck.plan_resume(Path(a.run_dir) / "checkpoints", ckpt_cfg, info)
    engine, _ = build_engine(objective, dist, opt, info, load_universal=plan.mode == "universal")
    nan_at = tuple(a.nan_at) if info.rank == info.world_size - 1 else ()
    stream = SyntheticStream(11, info.rank, nan_at)
    settings = LoopSettings(a.steps, opt, ScheduleConfig(warmup_steps=2), EvalConfig(every=a.eval_every),
                            ckpt_cfg, LogConfig(every=1, progress=False))
    dtype = compute_dtype(engine)
    val = {"toy": lambda: (make_batch(99, info.rank, k) for k in range(2 + info.rank))}
    trainer = Trainer(engine, ema, _Sleepy(stream, a.sleep), val, TASKS, info, a.run_dir, settings,
                      lambda b: b.to(info.device, dtype), zero_stage=a.zero)
    trainer.load_state(*ck.restore(engine, plan, ema, info))
    if info.is_main:
        restored = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
        save_file(restored, str(Path(a.run_dir) / f"restored_{plan.mode}_{trainer.state.step}.safetensors"))
    print(f"rank {info.rank}: resume mode {plan.mode} from step {trainer.state.step}", flush=True)
    summary = trainer.run()
    if info.is_main:
        state = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
        save_file(state, str(Path(a.run_dir) / "final.safetensors"))
        print("SUMMARY", summary["steps"], summary["skipped_batches"], summary["validation"], flush=True)
    return 0


class _Sleepy:
    """Slow a stream down so a test can kill the run mid-way."""

    def __init__(self, stream, sleep: float):
        self.stream, self.sleep = stream, sleep

    def __next__(self):
        if self.sleep:
            time.sleep(self.sleep)
        return next(self.stream)

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state):
        self.stream.load_state_dict(state)


if __name__ == "__main__":
    sys.exit(main())
