import math

import pytest
from hypothesis import given, strategies as st

from foundation.train.config import ScheduleConfig
from foundation.train.schedule import learning_rate


def test_warmup_then_cosine_endpoints():
    s = ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, 1.0, 110, s) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 110, s) == pytest.approx(1.0)
    assert learning_rate(10, 1.0, 110, s) == pytest.approx(1.0)
    assert learning_rate(60, 1.0, 110, s) == pytest.approx(0.55)  # half way down the cosine
    assert learning_rate(110, 1.0, 110, s) == pytest.approx(0.1)
    assert learning_rate(500, 1.0, 110, s) == pytest.approx(0.1)


@given(st.integers(0, 50), st.integers(1, 500), st.floats(0, 1))
def test_bounded_and_monotone_after_warmup(warmup, total, floor):
    s = ScheduleConfig(warmup_steps=warmup, min_lr_ratio=floor)
    lrs = [learning_rate(k, 3e-4, total, s) for k in range(total + 5)]
    assert all(0 < lr <= 3e-4 * (1 + 1e-12) for lr in lrs[:warmup])  # warmup: rising from peak/warmup
    after = lrs[warmup:]
    assert all(floor * 3e-4 * (1 - 1e-12) <= lr <= 3e-4 * (1 + 1e-12) for lr in after)
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:]))
    assert all(not math.isnan(lr) for lr in lrs)


def test_negative_step_refused():
    with pytest.raises(ValueError, match="step"):
        learning_rate(-1, 1.0, 10, ScheduleConfig())


def test_a_wall_clock_budget_drives_the_decay_when_it_is_further_along():
    cfg = ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(50, 1.0, 1000, cfg, time_fraction=1.0) == pytest.approx(0.1)  # time is up: the floor
    assert learning_rate(50, 1.0, None, cfg, time_fraction=0.5) == pytest.approx(0.1 + 0.45)  # half way
    assert learning_rate(50, 1.0, 1000, cfg) == learning_rate(50, 1.0, 1000, cfg, time_fraction=0.0)
    assert learning_rate(5, 1.0, None, cfg, time_fraction=0.9) == pytest.approx(0.6)  # warmup by steps
