"""Learning rate as a pure function of the optimiser step (nothing to checkpoint but the step)."""

from __future__ import annotations

import math

from .config import ScheduleConfig

__all__ = ["learning_rate"]


def learning_rate(step: int, peak: float, total_steps: int, schedule: ScheduleConfig) -> float:
    """Linear warmup over `warmup_steps` (step 0 gets peak/warmup, not 0), then cosine decay
    from `peak` to `min_lr_ratio * peak` at `total_steps`; constant at the floor after that."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = schedule.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = schedule.min_lr_ratio * peak
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
