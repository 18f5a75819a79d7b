"""Learning rate as a pure function of the run's progress (the optimiser step and, under a
wall-clock budget, the fraction of it used): nothing to checkpoint but the step and the time."""

from __future__ import annotations

import math

from .config import ScheduleConfig

__all__ = ["learning_rate"]


def learning_rate(step: int, peak: float, total_steps: int | None, schedule: ScheduleConfig,
                  time_fraction: float = 0.0) -> float:
    """Linear warmup over `warmup_steps` (step 0 gets peak/warmup, not 0), then cosine decay
    from `peak` to `min_lr_ratio * peak` at `total_steps`; constant at the floor after that.
    Under a wall-clock budget the decay follows whichever is further along: the steps, or
    `time_fraction` (the budget's share used); `total_steps` None: the time alone."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = schedule.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = schedule.min_lr_ratio * peak
    by_steps = 0.0 if total_steps is None else (step - warmup) / max(total_steps - warmup, 1)
    progress = min(max(by_steps, time_fraction), 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
