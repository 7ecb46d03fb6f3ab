"""What a set of runs shows, in sentences written from their numbers: the report's "Findings".

Each exercise has its reading, chosen by what differs across the runs: the corpus (memorisation against
generalisation), the learning rate (where training becomes unstable), the context length, the model size (the
scaling law), the tokenizer (which learned the most per second: pipeline/analysis/tokenizers.py), the optimizer
(which reached a val loss first: pipeline/analysis/optimizers.py); runs started from other weights, beside runs
from scratch (pipeline/analysis/finetuning.py). Every sentence quotes the numbers it rests on; when the runs do not
show the lesson, the finding says so and what to change. `facts` keeps those numbers for checks
(bench/exercises.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, TypeVar

from pipeline.analysis import finetuning, optimizers, tokenizers
from pipeline.analysis.curves import MODEL_SIZE, RunCurves, count_text, follows, number
from pipeline.analysis.fits import FloorLaw, floor_fit, scaling_fit
from pipeline.errors import ReportError

T = TypeVar("T")

# A run that memorised: train loss under this (nats per token)...
MEMORISED_LOSS = 0.5
# ...and samples made of the training text: under this share of new 8-grams.
MEMORISED_NOVELTY = 0.2
# A run that generalises: val loss within this of its train loss, and most of its 8-grams new.
GENERALISING_GAP = 0.5
GENERALISING_NOVELTY = 0.5
# A best run is "clear" when the next best ends at least this much higher (nats per token).
CLEAR_MARGIN = 0.05
# Published scaling exponents for loss against non-embedding parameters.
KAPLAN_ALPHA = 0.076  # Kaplan et al. 2020, models trained near convergence on ample data
CHINCHILLA_ALPHA = 0.34  # Hoffmann et al. 2022, the parameter term of L(N, D)
# A fit on log-log axes below this R² is not read as a power law.
GOOD_FIT_R2 = 0.9


@dataclass(frozen=True)
class Findings:
    lines: tuple[str, ...]  # one sentence each, most important first
    facts: dict = field(default_factory=dict)  # the numbers behind the sentences, by name

    @property
    def text(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


def find(runs: Sequence[RunCurves], swept: Sequence[str], metric: str = "val_loss",
         goal: str = "minimize") -> Findings:
    """The findings of runs whose settings differ in `swept`; `metric` and `goal` pick the best run."""
    lines: list[str] = []
    facts: dict = {}
    best = best_run(runs, metric, goal)
    if best is not None:
        value = _final_metric(best, metric)
        lines.append(f"Best run: {best.name} ({best.label(swept)}), final {metric} {value:.3f}.")
        facts["best_run"] = best.name
    else:
        lines.append(f"No run logged {metric}: nothing to compare (did every run fail?).")
    fine_tuned = finetuning.pairs(runs)
    if fine_tuned:  # the lesson, first; the corpora differ to fine-tune from one to another, not to compare memorisation
        more, numbers = finetuning.reading(runs)
        lines[:0] = more
        facts.update(numbers)
    for key, reading in (("corpus", _memorisation), ("lr", _learning_rate),
                         ("context_length", _context_length), (MODEL_SIZE, _scaling),
                         ("tokenizer", tokenizers.reading), ("optimizer", optimizers.reading)):
        if key in swept[1:] and follows(runs, swept[0], key) or (key == "corpus" and fine_tuned):
            continue  # set with the axis (a rate per size): part of each point's recipe, not a sweep of its own
        if key == "lr" and "optimizer" in swept:
            continue  # each optimizer's rates are read with it
        if key in swept:
            more, numbers = reading(runs)
            lines += more
            facts.update(numbers)
    return Findings(tuple(lines), facts)


def comparable_metric(metric: str, tokenizers: Iterable[str | None]) -> str:
    """The metric that compares runs: val_loss is in nats per token, and runs on different tokenizers cut the
    text into different tokens, so they compare by val_bpb (bits per byte of the same val text) instead.
    tokenizers: each run's `tokenizer` param (None for runs from before it was logged: GPT-2's)."""
    if metric == "val_loss" and len({tokenizer or "gpt2" for tokenizer in tokenizers}) > 1:
        return "val_bpb"
    return metric


def pick_best(candidates: Iterable[T], value_of: Callable[[T], float | None], goal: str = "minimize") -> T | None:
    """The candidate whose finite value is lowest (goal minimize) or highest (maximize); None when none has one.
    The one rule behind a sweep's lab.best_run tag and its report's best run."""
    scored = [(value, candidate) for candidate in candidates
              if (value := value_of(candidate)) is not None and math.isfinite(value)]
    if not scored:
        return None
    pick = min if goal == "minimize" else max
    return pick(scored, key=lambda item: item[0])[1]


def best_run(runs: Sequence[RunCurves], metric: str = "val_loss", goal: str = "minimize") -> RunCurves | None:
    """The finished, unpruned run with the best final value of metric (val_loss and train_loss are read from the
    curves)."""
    finished = [run for run in runs if run.status == "FINISHED" and not run.pruned]
    return pick_best(finished, lambda run: _final_metric(run, metric), goal)


def _final_metric(run: RunCurves, metric: str) -> float | None:
    if metric == "val_loss":
        return run.final_val
    if metric == "train_loss":
        return run.final_train
    return run.metrics.get(metric)


def _smoothed_train(run: RunCurves) -> float | None:
    """The final train loss as diagnosis reads it: the median of the last few points, so one batch does not
    decide."""
    tail = sorted(v for _, v in run.train[-3:] if math.isfinite(v))
    return tail[len(tail) // 2] if tail else None


def _memorisation(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    lines, facts = [], {}
    for run in runs:
        corpus = run.value("corpus") or run.name
        train, val, novelty = _smoothed_train(run), run.final_val, run.final_novelty
        if train is None or val is None:
            lines.append(f"{corpus}: the run logged no train and val loss to compare ({run.status}).")
            continue
        gap = val - train
        facts[f"{corpus}.train_loss"], facts[f"{corpus}.val_loss"], facts[f"{corpus}.gap"] = train, val, gap
        facts[f"{corpus}.novelty"] = novelty
        novel = "no sample novelty logged" if novelty is None else f"novelty {novelty:.2f}"
        numbers = f"train loss {train:.2f}, val loss {val:.2f} (gap {gap:.2f}), {novel}"
        if train < MEMORISED_LOSS and (novelty is None or novelty < MEMORISED_NOVELTY):
            lines.append(f"{corpus} was memorised: {numbers}. The model recites its training text, and text it "
                         "has not seen surprises it.")
        elif gap < GENERALISING_GAP and (novelty is None or novelty > GENERALISING_NOVELTY):
            lines.append(f"{corpus} generalises: {numbers}. Unseen text is as predictable as the training text, "
                         "and samples are new sentences, not recited ones.")
        elif train >= MEMORISED_LOSS and gap >= GENERALISING_GAP:
            lines.append(f"{corpus} is between the two: {numbers}. It is on its way to memorising; a larger token "
                         "budget (max_tokens) or a higher lr would take train loss under "
                         f"{MEMORISED_LOSS}.")
        else:
            lines.append(f"{corpus}: {numbers}.")
    return lines, facts


def _learning_rate(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    rated = sorted(((rate, run) for run in runs if (rate := number(run.value("lr"))) is not None),
                   key=lambda pair: pair[0])
    verdicts = [(rate, run, run.trouble) for rate, run in rated]
    lines = ["By learning rate: " + "; ".join(
        f"{rate:g} -> {_loss_text(run)}" + (f" ({trouble})" if trouble else "") for rate, run, trouble in verdicts)
        + "."]
    unstable = [rate for rate, _, trouble in verdicts if trouble]
    stable = [(run.final_val, rate) for rate, run, trouble in verdicts if not trouble and run.final_val is not None]
    stable.sort(key=lambda pair: pair[0])
    facts = {"rates": [rate for rate, _ in rated], "unstable_from": unstable[0] if unstable else None}
    if unstable:
        below = [rate for rate, _, trouble in verdicts if rate < unstable[0]]
        start = f"between {below[-1]:g} and {unstable[0]:g}" if below else f"at or below {unstable[0]:g}"
        lines.append(f"Instability begins {start}: from lr {unstable[0]:g} up, the loss spikes or diverges "
                     "instead of falling.")
    else:
        lines.append(f"No rate diverged or became unstable: extend the range upward (try {rated[-1][0] * 10:g}) "
                     "to find where training breaks.")
    if stable:
        best_val, best_rate = stable[0]
        facts["best_lr"] = best_rate
        margin = stable[1][0] - best_val if len(stable) > 1 else None
        facts["best_margin"] = margin
        clear = margin is not None and margin >= CLEAR_MARGIN
        lines.append(f"The best stable rate is {best_rate:g} (val loss {best_val:.3f}"
                     + (f", {margin:.3f} below the next best)" if margin is not None else ")")
                     + ("." if clear or margin is None else ": not clearly better than its neighbour."))
        if best_rate == rated[-1][0] and not unstable:
            lines.append("The best rate is the largest tried: the optimum may lie higher still.")
        elif best_rate == rated[0][0]:
            lines.append("The best rate is the smallest tried: extend the range downward.")
    return lines, facts


def _loss_text(run: RunCurves) -> str:
    if run.final_val is not None and math.isfinite(run.final_val):
        return f"val {run.final_val:.3f}"
    return f"no val loss ({run.status.lower()})"


def _context_length(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    points = sorted((int(length), run.final_val) for run in runs if run.final_val is not None
                    and (length := number(run.value("context_length"))) is not None)
    facts = {"context_val_loss": dict(points)}
    if len(points) < 2:
        return ["Fewer than two contexts logged a val loss: nothing to compare."], facts
    listing = ", ".join(f"{length} -> {loss:.3f}" for length, loss in points)
    (short, short_loss), (long, long_loss) = points[0], points[-1]
    steps = {int(length): run.train[-1][0] for run in runs
             if run.train and (length := number(run.value("context_length"))) is not None}
    fewer = steps.get(short, 0) / max(steps.get(long, 0), 1)
    same_steps = abs(fewer - 1) < 0.05
    how = "at equal tokens and steps" if same_steps else f"at equal tokens, in {fewer:.0f}x fewer optimizer steps"
    best_length, best_loss = min(points, key=lambda point: point[1])
    if best_length not in (short, long) and best_loss < min(short_loss, long_loss) - CLEAR_MARGIN:
        verdict = (f"Context {best_length} predicts best ({how}), {short_loss - best_loss:.3f} below the shortest "
                   f"and {long_loss - best_loss:.3f} below the longest: more context helps up to {best_length} "
                   "here, and at this budget the model has not learned to use more than that yet; raise "
                   "max_tokens to see where longer contexts stop paying off.")
    elif long_loss < short_loss - CLEAR_MARGIN:
        verdict = (f"The longest context predicts best, {short_loss - long_loss:.3f} below the shortest "
                   f"({how}): seeing more of the story before each token helps.")
    elif long_loss > short_loss + CLEAR_MARGIN and not same_steps:
        verdict = (f"The longest context did worse by {long_loss - short_loss:.3f}: at equal tokens it took "
                   f"{fewer:.0f}x fewer optimizer steps, and this budget was too small to make up for them; "
                   "raise max_tokens to see the longer context pay off.")
    elif long_loss > short_loss + CLEAR_MARGIN:
        verdict = (f"The longest context did worse by {long_loss - short_loss:.3f} {how}: at this budget the model "
                   "has not learned to use the extra context yet; raise max_tokens.")
    else:
        verdict = (f"The contexts end within a few hundredths of each other ({how}): at this budget the model has "
                   "not learned to use the longer context yet; raise max_tokens.")
    return [f"Val loss by context length: {listing}. {verdict} Compare the samples side by side below."], facts


def _scaling(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    try:
        fit = scaling_fit(runs)
    except ReportError as error:
        return [f"No scaling law could be fitted: {error}."], {}
    facts = {"alpha": fit.alpha, "alpha_stderr": fit.alpha_stderr, "r_squared": fit.r_squared, "sizes": fit.sizes}
    sizes = sorted(number(run.value(MODEL_SIZE)) for run in runs if number(run.value(MODEL_SIZE)))
    facts["size_span"] = sizes[-1] / sizes[0]
    tokens = count_text(max((run.tokens_seen or 0) for run in runs))
    head = (f"Scaling: L(N) = (Nc/N)^α fits with α = {fit.alpha:.3f}{_spread(fit.alpha_stderr)} "
            f"(R² = {fit.r_squared:.2f}) over {fit.sizes} sizes from {count_text(sizes[0])} to "
            f"{count_text(sizes[-1])} non-embedding parameters.")
    if fit.alpha <= 0:
        return [head + " The loss does not fall with size: the larger models are undertrained at this budget; "
                       "raise max_tokens."], facts
    floor = _floor(runs)
    if floor is not None:
        facts.update(floor_alpha=floor.alpha, floor_alpha_stderr=floor.alpha_stderr, floor=floor.floor,
                     floor_r_squared=floor.r_squared)
    if fit.r_squared >= GOOD_FIT_R2:
        return [head + f" Kaplan et al. found {KAPLAN_ALPHA} and Chinchilla ~{CHINCHILLA_ALPHA}; this is nearer "
                       f"{_nearer(fit.alpha)}. Those fits come from models trained on billions of tokens; here every "
                       f"size saw {tokens} tokens, so the small models are near their limit while the large ones are "
                       "still far from theirs, and the exponent measures this budget as much as the models."], facts
    if floor is None or floor.r_squared < GOOD_FIT_R2:
        return [head + f" R² under {GOOD_FIT_R2}: the points do not lie on a power law, with or without a floor; "
                       "raise max_tokens so every size trains further, or spread the sizes wider."], facts
    return [head + " The points bend toward a floor instead of falling in a straight line.",
            f"With that floor fitted, as Chinchilla's L = E + A/N^α has one: L(N) = {floor.floor:.2f} + "
            f"(Nc/N)^α with α = {floor.alpha:.2f}{_spread(floor.alpha_stderr, 2)} (R² = {floor.r_squared:.2f}). "
            f"Kaplan et al. found {KAPLAN_ALPHA} (no floor) and Chinchilla ~{CHINCHILLA_ALPHA} (with one), from "
            f"models trained on billions of tokens; here every size saw {tokens} tokens, so the floor of "
            f"{floor.floor:.2f} is this budget's, not the models': the larger sizes reach it and gain little, and "
            "α measures how fast the small ones close in. Raise max_tokens to lower the floor."], facts


def _floor(runs: Sequence[RunCurves]) -> FloorLaw | None:
    try:
        return floor_fit(runs)
    except ReportError:
        return None


def _spread(stderr: float | None, digits: int = 3) -> str:
    return f" ± {stderr:.{digits}f}" if stderr is not None else ""


def _nearer(alpha: float) -> str:
    return "Kaplan's" if abs(math.log(alpha / KAPLAN_ALPHA)) < abs(math.log(alpha / CHINCHILLA_ALPHA)) \
        else "Chinchilla's"
