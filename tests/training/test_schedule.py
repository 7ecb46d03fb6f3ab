"""The step budget and the learning-rate schedule: pure functions of the settings, no run needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.settings import TrainSettings
from pipeline.training.schedule import lr_at, total_steps_for


def test_schedule_warms_up_then_decays_to_exactly_min_lr_at_the_last_step():
    s = TrainSettings(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, s, 100) == 1e-3 / 10
    assert lr_at(9, s, 100) == 1e-3
    assert lr_at(10, s, 100) == 1e-3
    assert lr_at(99, s, 100) == 1e-4
    values = [lr_at(i, s, 100) for i in range(10, 100)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("total_steps", [2, 3, 7, 20, 21])
def test_warmup_longer_than_the_budget_still_reaches_the_peak_and_min_lr(total_steps):
    s = TrainSettings(lr=1e-3, min_lr=1e-4, warmup_steps=30)
    values = [lr_at(i, s, total_steps) for i in range(total_steps)]
    assert max(values) == 1e-3
    assert values[-1] == 1e-4
    peak = values.index(1e-3)
    assert peak <= total_steps // 2 and values[peak:] == sorted(values[peak:], reverse=True)


def test_the_budget_given_is_the_budget_and_no_budget_is_one_epoch():
    s = TrainSettings(batch_size=4, grad_accum=2)
    assert total_steps_for(s, n_windows=100, window_length=16) == 13  # no budget given: one epoch, ceil(100 / 8)
    assert total_steps_for(replace(s, max_steps=30), 100, 16) == 30  # not cut to the default epoch
    assert total_steps_for(replace(s, max_tokens=8 * 16 * 40), 100, 16) == 40
    assert total_steps_for(replace(s, epochs=3), 100, 16) == 38  # ceil(300 / 8)
    # several given: the first reached wins
    assert total_steps_for(replace(s, epochs=3, max_steps=10), 100, 16) == 10
    assert total_steps_for(replace(s, epochs=1, max_steps=30), 100, 16) == 13
    assert total_steps_for(replace(s, max_steps=30, max_tokens=8 * 16 * 5), 100, 16) == 5
