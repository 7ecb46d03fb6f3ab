"""Reading a finished run's loss curves the way a learner is taught to, as a tag and one sentence.

The rules, checked in this order; the first that applies names the run (its tag):

  too_short     fewer than MIN_POINTS train-loss points: nothing to read yet.
  not_learning  train loss high and flat: it never fell NOT_LEARNING_DROP below its first point, or never got
                under NOT_LEARNING_LOSS (close to ln(vocab), the loss of guessing tokens uniformly).
  unstable      after falling, the train loss jumped well above the lowest value it had reached (or became
                non-finite): the learning rate is probably too high.
  overfitting   val loss ended OVERFITTING_MARGIN above its minimum while the train loss kept falling;
                `overfitting_step` is the step of that minimum, where overfitting began. When the train loss is
                also under MEMORIZING_LOSS, the sentence says so (the two usually come together).
  memorizing    the final train loss is under MEMORIZING_LOSS: the model recites its training text.
  healthy       none of the above.

A "final" train loss is the median of the last SMOOTH_POINTS points, so one noisy batch does not decide.
`overfitting_step` is set only when the tag is `overfitting`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import get_run

Curve = list[tuple[int, float]]

# GPT-2's vocabulary: a model guessing every token equally has loss ln(50257) = 10.82 nats.
VOCAB_SIZE = 50257
UNIFORM_LOSS = math.log(VOCAB_SIZE)
# A train loss that never gets under 90% of uniform guessing (9.74 nats for GPT-2's) has learned next to nothing.
NOT_LEARNING_FRACTION = 0.9
NOT_LEARNING_LOSS = NOT_LEARNING_FRACTION * UNIFORM_LOSS
# A train loss that never falls 5% below its first logged value is flat: the model is not learning.
NOT_LEARNING_DROP = 0.05
# A jump: a point this many nats above the lowest (running-median) train loss so far...
UNSTABLE_RISE = 0.75
# ...and also this fraction of that lowest loss above it (batch noise of a few tenths stays inside both).
UNSTABLE_RISE_FRACTION = 0.2
# Final train loss under this (nats per token): the model has memorized its training text.
MEMORIZING_LOSS = 0.1
# Val loss ending this many nats above its minimum, while train keeps falling, is overfitting.
OVERFITTING_MARGIN = 0.1
# Fewer train-loss points than this cannot be read as a curve.
MIN_POINTS = 3
# The final train loss is the median of this many last points; "never fell" uses medians of this many neighbours.
SMOOTH_POINTS = 3

TAGS = ("too_short", "not_learning", "unstable", "overfitting", "memorizing", "healthy")


@dataclass(frozen=True)
class Diagnosis:
    tag: str  # one of TAGS
    detail: str  # one sentence for a human
    overfitting_step: int | None = None  # the step of the val minimum, when tag == "overfitting"


def diagnose(train: Curve, val: Curve, vocab_size: int = VOCAB_SIZE) -> Diagnosis:
    """The tag and sentence for a run's train and val loss curves, given as (step, loss) points in any order;
    vocab_size: the model's output width (uniform guessing scores ln of it)."""
    train, val = _clean(train), _clean(val)
    uniform = math.log(vocab_size)
    if len(train) < MIN_POINTS:
        return Diagnosis("too_short", f"only {len(train)} train-loss point(s) were logged; at least {MIN_POINTS} "
                                      "are needed to read a curve (train longer or lower --log-interval)")
    first_step, first = train[0]
    final = _final(train)

    finite = [v for _, v in train if math.isfinite(v)]
    lowest = min(_rolling_median(finite)) if finite else math.inf
    blown = _above_uniform(train, uniform)
    if blown is not None:  # before not_learning: a rate that high often leaves the loss flat afterwards
        step, value = blown
        return Diagnosis("unstable", f"train loss rose to {value:.2f} at step {step}, above uniform guessing "
                                     f"({uniform:.2f}): the learning rate is probably too high (lower --lr or raise "
                                     "--warmup-steps)")
    if lowest >= first * (1 - NOT_LEARNING_DROP) or lowest > NOT_LEARNING_FRACTION * uniform:
        return Diagnosis("not_learning", f"train loss stayed high and flat (from {first:.2f} at step {first_step} "
                                         f"to {final:.2f}, never under {lowest:.2f}; uniform guessing is "
                                         f"{uniform:.2f}): try a higher --lr, and check the data")

    jump = _first_jump(train)
    if jump is not None:
        step, before, after = jump
        what = f"became {after}" if not math.isfinite(after) else f"jumped from {before:.2f} to {after:.2f}"
        return Diagnosis("unstable", f"train loss {what} at step {step} after falling: the learning rate is "
                                     "probably too high (lower --lr or raise --warmup-steps)")

    memorizing = final < MEMORIZING_LOSS
    overfit = _overfitting(train, val, final)
    if overfit is not None:
        step, best, last = overfit
        also = f", and train loss {final:.3f} is under {MEMORIZING_LOSS}: it memorized" if memorizing else ""
        return Diagnosis("overfitting", f"val loss rose from its minimum {best:.2f} at step {step} to {last:.2f} "
                                        f"while train loss kept falling to {final:.2f}{also} (stop earlier, "
                                        "use more data or a smaller model)", overfitting_step=step)
    if memorizing:
        return Diagnosis("memorizing", f"final train loss {final:.3f} is under {MEMORIZING_LOSS}: the model "
                                       "recites its training text (use more data or fewer epochs)")
    val_text = f", val loss {val[-1][1]:.2f}" if val else ""
    return Diagnosis("healthy", f"train loss fell from {first:.2f} to {final:.2f}{val_text}, with no sign of "
                                "trouble")


def diagnose_run(client: MlflowClient, run_id: str) -> Diagnosis:
    """diagnose() on a run's logged train_loss and val_loss histories. Raises TrackingError for an unknown run."""
    run = get_run(client, run_id)
    train = [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")]
    val = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    return diagnose(train, val, vocab_size_of(run.data.params))


def vocab_size_of(params: dict) -> int:
    """The output width a run logged (its vocab_size param), or GPT-2's for runs from before it was logged."""
    try:
        return int(params["vocab_size"])
    except (KeyError, ValueError):
        return VOCAB_SIZE


def tag_run(client: MlflowClient, run_id: str, diagnosis: Diagnosis) -> None:
    """Write the tags diagnosis, diagnosis_detail and overfitting_step (removed when no longer set)."""
    client.set_tag(run_id, "diagnosis", diagnosis.tag)
    client.set_tag(run_id, "diagnosis_detail", diagnosis.detail[:5000])
    if diagnosis.overfitting_step is not None:
        client.set_tag(run_id, "overfitting_step", str(diagnosis.overfitting_step))
    elif "overfitting_step" in get_run(client, run_id).data.tags:
        client.delete_tag(run_id, "overfitting_step")


def _clean(points) -> Curve:
    """Points sorted by step; where a step appears twice the later point wins."""
    by_step = {}
    for step, value in points:
        by_step[int(step)] = float(value)
    return sorted(by_step.items())


def _final(curve: Curve) -> float:
    tail = [v for _, v in curve[-SMOOTH_POINTS:]]
    finite = sorted(v for v in tail if math.isfinite(v))
    if len(finite) < len(tail):
        return tail[-1] if not math.isfinite(tail[-1]) else _median(finite)
    return _median(finite)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rolling_median(values: list[float]) -> list[float]:
    half = SMOOTH_POINTS // 2
    return [_median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def _above_uniform(train: Curve, uniform: float) -> tuple[int, float] | None:
    """(step, value) of the first train loss well above uniform guessing: an initialised model starts near it, so
    a loss that far above it was pushed there by the updates (a rate that blows up in the first steps, before the
    curve had fallen for _first_jump to see a jump)."""
    return next(((step, value) for step, value in train if math.isfinite(value) and value > uniform + UNSTABLE_RISE),
                None)


def _first_jump(train: Curve) -> tuple[int, float, float] | None:
    """(step, lowest so far, value) of the first point that jumps well above the lowest loss reached, once the
    curve has fallen at least UNSTABLE_RISE below its start; or a non-finite point. "Lowest so far" is taken on
    the curve's running median of SMOOTH_POINTS, so batch noise does not drag it down."""
    first = train[0][1]
    finite = [(s, v) for s, v in train if math.isfinite(v)]
    smooth = dict(zip((s for s, _ in finite), _rolling_median([v for _, v in finite])))
    lowest = first
    for step, value in train[1:]:
        if not math.isfinite(value):
            return step, lowest, value
        rise = value - lowest
        if lowest <= first - UNSTABLE_RISE and rise > max(UNSTABLE_RISE, UNSTABLE_RISE_FRACTION * lowest):
            return step, lowest, value
        lowest = min(lowest, smooth[step])
    return None


def _overfitting(train: Curve, val: Curve, final_train: float) -> tuple[int, float, float] | None:
    """(step of the val minimum, that minimum, last val) when val ended OVERFITTING_MARGIN above its minimum
    while the train loss fell below where it stood at that step."""
    finite = [(s, v) for s, v in val if math.isfinite(v)]
    if len(finite) < 2:
        return None
    best_step, best = min(finite, key=lambda point: point[1])  # the first step, on ties
    last = finite[-1][1]
    if best_step == finite[-1][0] or last - best <= OVERFITTING_MARGIN:
        return None
    at_best = [v for s, v in train if s <= best_step and math.isfinite(v)]
    train_then = at_best[-1] if at_best else train[0][1]
    return (best_step, best, last) if final_train < train_then else None
