"""Reading loss curves: each rule on a synthetic curve, the overfitting step, precedence, and the MLflow glue."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.tracking.diagnosis import (
    MEMORIZING_LOSS,
    NOT_LEARNING_LOSS,
    OVERFITTING_MARGIN,
    UNIFORM_LOSS,
    Diagnosis,
    diagnose,
    diagnose_run,
    tag_run,
)
from pipeline.errors import TrackingError

STEPS = list(range(10, 1010, 10))  # 100 points, as log_interval 10 gives


def falling(start: float = 10.8, end: float = 3.0, steps=STEPS, rate: float = 5.0) -> list[tuple[int, float]]:
    """An exponential approach from start to end, the usual shape of a healthy curve."""
    last = steps[-1]
    return [(s, end + (start - end) * math.exp(-rate * s / last)) for s in steps]


def val_like(train, offset: float = 0.1, every: int = 10):
    return [(s, v + offset) for i, (s, v) in enumerate(train) if (i + 1) % every == 0]


def test_healthy():
    train = falling()
    result = diagnose(train, val_like(train))
    assert result == Diagnosis("healthy", result.detail, None)
    assert "fell from" in result.detail


def test_too_short():
    assert diagnose([], []).tag == "too_short"
    assert diagnose([(10, 10.0), (20, 9.0)], [(20, 9.1)]).tag == "too_short"


def test_not_learning_flat():
    train = [(s, 7.5 + 0.02 * math.sin(s)) for s in STEPS]  # flat from the first point, well under ln(vocab)
    result = diagnose(train, [(1000, 7.6)])
    assert result.tag == "not_learning"
    assert "--lr" in result.detail


def test_not_learning_near_uniform():
    train = falling(start=10.9, end=NOT_LEARNING_LOSS + 0.2)  # fell 8%, but never got far from uniform guessing
    assert diagnose(train, []).tag == "not_learning"
    assert NOT_LEARNING_LOSS < UNIFORM_LOSS


def test_unstable_jump_after_falling():
    train = falling()
    train[60] = (train[60][0], train[59][1] + 2.0)  # one spike
    result = diagnose(train, val_like(falling()))
    assert result.tag == "unstable"
    assert f"at step {train[60][0]}" in result.detail


def test_unstable_divergence_is_not_not_learning():
    """A curve that fell and then climbed back to uniform guessing was learning: it is unstable."""
    train = falling(end=5.0)[:50] + [(s, UNIFORM_LOSS) for s in STEPS[50:]]
    assert diagnose(train, []).tag == "unstable"


def test_non_finite_loss_is_unstable():
    train = falling()
    train[-1] = (train[-1][0], float("nan"))
    assert diagnose(train, []).tag == "unstable"


@pytest.mark.parametrize("seed", range(5))
def test_batch_noise_is_not_unstable(seed):
    noise = np.random.default_rng(seed).normal(0.0, 0.15, len(STEPS))  # a small batch's loss wanders this much
    train = [(s, v + e) for (s, v), e in zip(falling(), noise)]
    assert diagnose(train, []).tag == "healthy"
    alternating = [(s, v + (0.3 if i % 2 else -0.3)) for i, (s, v) in enumerate(falling())]
    assert diagnose(alternating, []).tag == "healthy"


def test_memorizing():
    train = falling(end=0.02)
    result = diagnose(train, val_like(falling(end=0.5)))  # val still falling: no overfitting
    assert result.tag == "memorizing"
    assert result.overfitting_step is None


def test_overfitting_names_the_step_of_the_val_minimum():
    train = falling(end=1.0)
    val = [(s, 4.0 - 0.001 * s) for s in range(100, 501, 100)]  # falls to 3.5 at step 500
    val += [(s, 3.5 + 0.0005 * (s - 500)) for s in range(600, 1001, 100)]  # then rises by 0.25
    result = diagnose(train, val)
    assert result.tag == "overfitting"
    assert result.overfitting_step == 500
    assert "step 500" in result.detail


def test_a_small_val_rise_is_not_overfitting():
    train = falling()
    val = [(500, 3.5), (1000, 3.5 + OVERFITTING_MARGIN * 0.9)]
    assert diagnose(train, val).tag == "healthy"


def test_val_rising_with_train_flat_is_not_overfitting():
    train = falling(rate=50.0)  # reached its floor very early: flat afterwards
    val = [(100, 3.2), (1000, 3.6)]
    train = [(s, v if s <= 100 else train[9][1] + 0.01) for s, v in train]  # ends a little above step 100
    assert diagnose(train, val).tag == "healthy"


def test_precedence():
    # overfitting and memorizing together: overfitting, and the sentence says it memorized
    train = falling(end=0.01)
    val = [(200, 3.0), (400, 2.5), (1000, 4.0)]
    result = diagnose(train, val)
    assert result.tag == "overfitting" and result.overfitting_step == 400
    assert "memorized" in result.detail
    assert diagnose(train, val).detail.count(str(MEMORIZING_LOSS)) == 1
    # unstable beats overfitting and memorizing
    spiky = list(train)
    spiky[50] = (spiky[50][0], 6.0)
    assert diagnose(spiky, val).tag == "unstable"
    # not_learning beats everything
    flat = [(s, 9.9) for s in STEPS]
    assert diagnose(flat, val).tag == "not_learning"


def test_order_of_points_and_duplicates_do_not_matter():
    train = falling()
    shuffled = list(reversed(train)) + [train[-1]]
    assert diagnose(shuffled, []) == diagnose(train, [])


def test_diagnose_run_and_tag_run(store):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("diagnosis")).info.run_id
    train = falling(end=1.0)
    val = [(200, 3.0), (400, 2.5), (1000, 4.0)]
    client.log_batch(run_id, metrics=[Metric("train_loss", v, 0, s) for s, v in train]
                     + [Metric("val_loss", v, 0, s) for s, v in val])
    result = diagnose_run(client, run_id)
    assert result.tag == "overfitting" and result.overfitting_step == 400
    tag_run(client, run_id, result)
    tags = client.get_run(run_id).data.tags
    assert (tags["diagnosis"], tags["overfitting_step"]) == ("overfitting", "400")
    assert tags["diagnosis_detail"] == result.detail
    tag_run(client, run_id, Diagnosis("healthy", "fine"))
    tags = client.get_run(run_id).data.tags
    assert tags["diagnosis"] == "healthy" and "overfitting_step" not in tags
    with pytest.raises(TrackingError):
        diagnose_run(client, "0" * 32)


def test_a_loss_pushed_above_uniform_guessing_is_unstable_for_the_runs_own_vocabulary():
    # lr_sensitivity_cpu at lr 0.1 with bpe:4096 (2026-12-07): from 8.3 at initialisation to 10.6 by step 5, then a
    # high plateau; the curve never fell before it rose, so only the uniform-guessing line shows the blow-up
    train = [(5, 10.61), (10, 9.96), (15, 6.88), (20, 6.37)] + [(s, 6.0 - s / 1000) for s in range(25, 400, 5)]
    small = diagnose(train, [], vocab_size=4160)
    assert small.tag == "unstable" and "rose to 10.61 at step 5, above uniform guessing (8.33)" in small.detail
    assert diagnose(train, []).tag == "healthy"  # under GPT-2's 50,257-way guessing (10.82), 10.61 is a start


def test_diagnose_run_reads_the_runs_vocabulary(store):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("vocab")).info.run_id
    client.log_param(run_id, "vocab_size", "4160")
    for step, value in [(5, 10.61), (10, 9.96)] + [(s, 6.0 - s / 1000) for s in range(15, 400, 5)]:
        client.log_metric(run_id, "train_loss", value, step=step)
    assert diagnose_run(client, run_id).tag == "unstable"
