"""Runs that differ in their optimizer, read in sentences: each optimizer at its best rate, and which reached a
val loss first, in tokens and in seconds, and by how much.

Each optimizer is tried at a few rates (AdamW's lr, Muon's muon_lr) and compared at its best: the run with the
lowest final val loss. The val loss both best runs reached (the higher of their finals) is the finish line; the
tokens and wall time at which each first got there are read from its evaluations, interpolated between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pipeline.analysis.curves import RunCurves, count_text, number

# The rate each optimizer is tuned by: Muon's own for its matrices (its AdamW part keeps one lr)
RATE_OF = {"adamw": "lr", "muon": "muon_lr"}
# A ratio of tokens or seconds within this of 1 is "about as fast", not a win.
CLEAR_RATIO = 0.9


@dataclass(frozen=True)
class Reach:
    """When an optimizer's best run first reached the target val loss."""

    optimizer: str
    run: RunCurves
    tokens: float | None
    seconds: float | None


def optimizer_of(run: RunCurves) -> str:
    return run.value("optimizer") or "adamw"  # runs from before the setting trained with AdamW


def rate_of(run: RunCurves) -> float | None:
    return number(run.value(RATE_OF.get(optimizer_of(run), "lr")))


def first_reach(run: RunCurves, target: float) -> tuple[float | None, float | None]:
    """(tokens, seconds) at which the run's val loss first fell to target, interpolated between evaluations."""
    seconds_at = dict(run.eval_seconds)
    steps = [step for step, _ in run.val]
    tokens = run.tokens_at(steps) if steps else None
    for index, (step, value) in enumerate(run.val):
        if value > target:
            continue
        if index == 0:
            return _at(tokens, 0), seconds_at.get(step)
        previous_step, previous = run.val[index - 1]
        share = (previous - target) / (previous - value)  # how far between the two evaluations
        return (_between(_at(tokens, index - 1), _at(tokens, index), share),
                _between(seconds_at.get(previous_step), seconds_at.get(step), share))
    return None, None


def _at(tokens, index: int) -> float | None:
    return float(tokens[index]) if tokens is not None else None


def _between(a: float | None, b: float | None, share: float) -> float | None:
    return a + (b - a) * share if a is not None and b is not None else None


def reading(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    """The findings' sentences for runs with different optimizers, and the numbers behind them."""
    done = [run for run in runs if run.status == "FINISHED" and not run.pruned and run.final_val is not None]
    by_optimizer: dict[str, list[RunCurves]] = {}
    for run in done:
        by_optimizer.setdefault(optimizer_of(run), []).append(run)
    if len(by_optimizer) < 2:
        return ["Fewer than two optimizers have a finished run with a val loss: nothing to compare."], {}
    lines, best = [], {}
    for name, group in sorted(by_optimizer.items()):
        best[name] = min(group, key=lambda run: run.final_val)
        lines.append(_rates_line(name, group, best[name]))
    target = max(run.final_val for run in best.values())  # every best run got at least this low
    reaches = [Reach(name, run, *first_reach(run, target)) for name, run in best.items()]
    facts = {"target_val_loss": target, "best_rate": {name: rate_of(run) for name, run in best.items()},
             "rates_tried": {name: sorted(rate for run in group if (rate := rate_of(run)) is not None)
                             for name, group in by_optimizer.items()},
             "tokens_to_target": {r.optimizer: r.tokens for r in reaches},
             "seconds_to_target": {r.optimizer: r.seconds for r in reaches}}
    lines.append(f"To val loss {target:.3f} (the higher of the best runs' final val losses): " + "; ".join(
        f"{r.optimizer} after {_tokens_text(r.tokens)} and {_seconds_text(r.seconds)}" for r in reaches) + ".")
    for measure, unit in (("tokens", "tokens"), ("seconds", "time")):
        sentence, winner = _first_there(reaches, measure, unit)
        facts[f"first_in_{measure}"] = winner
        lines.append(sentence)
    return lines, facts


def _rates_line(name: str, group: Sequence[RunCurves], best: RunCurves) -> str:
    key = RATE_OF.get(name, "lr")
    rated = sorted(group, key=lambda run: rate_of(run) or 0.0)
    listing = "; ".join(f"{rate_of(run):g} -> val {run.final_val:.3f}" for run in rated if rate_of(run) is not None)
    line = f"{name} by {key}: {listing}; its best is {rate_of(best):g}."
    if len(rated) > 1 and best is rated[-1]:
        line += f" The largest {key} tried was best: try a larger one."
    elif len(rated) > 1 and best is rated[0]:
        line += f" The smallest {key} tried was best: try a smaller one."
    return line


def _first_there(reaches: Sequence[Reach], measure: str, unit: str) -> tuple[str, str | None]:
    known = sorted((value, r.optimizer) for r in reaches if (value := getattr(r, measure)) is not None)
    if len(known) < 2:
        return f"Not every best run has its {unit} to that loss logged: no comparison in {unit}.", None
    (first, winner), (second, runner_up) = known[0], known[1]
    ratio = first / second if second else 1.0
    if ratio > CLEAR_RATIO:
        return (f"In {unit}, {winner} and {runner_up} got there about together ({ratio:.2f}x): no clear winner "
                f"at this budget."), None
    return f"In {unit}, {winner} got there first, in {ratio:.2f}x {runner_up}'s {unit}.", winner


def _tokens_text(tokens: float | None) -> str:
    return f"{count_text(tokens)} tokens" if tokens is not None else "unknown tokens"


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
