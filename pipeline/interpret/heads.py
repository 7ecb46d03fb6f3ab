"""Heads by role. On a run of random tokens said again and again, an induction head attends from a token to the
tokens that followed its earlier occurrences (and so predicts the next one); a previous-token head attends to the
position just before. Each head's score is its mean attention to those places (Olsson et al., 2022): 1 is a
head that does nothing else, and a head that spreads its attention evenly scores `chance`.

The runs are short (PERIODS tokens) and differ in length: a model trained on text where repeats come close (the
`repeats` corpus: 4-12 words) copies from a few tokens back and ignores a match 32 tokens away, which it learned
belongs to another document; it scored 0.02 on one 32-token sequence said twice while its induction head put
0.8 on the copy from 6 tokens back. Different lengths keep a head that reads a fixed offset from scoring high."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import GPT
from pipeline.interpret.attention import attention_patterns

PERIODS = (7, 9, 11, 13)  # one sequence per length: that many distinct random tokens, repeated
MAX_LENGTH = 128  # tokens a sequence: short enough to score in milliseconds on a CPU
FORMED = 0.3  # a best induction score from here on counts as a formed induction head (chance is ~0.09)


@dataclass(frozen=True)
class HeadScores:
    induction: list[list[float]]  # [layer][head]
    prev_token: list[list[float]]
    chance: float  # the induction score of a head that attends evenly to every earlier position

    def best(self, role: str) -> tuple[int, int, float]:
        """(layer, head, score) of the head scoring highest at role ("induction" or "prev_token")."""
        grid = getattr(self, role)
        return max(((layer, head, score) for layer, row in enumerate(grid) for head, score in enumerate(row)),
                   key=lambda found: found[2])

    def scalars(self) -> dict[str, float]:
        return {"heads/induction_max": self.best("induction")[2], "heads/prev_token_max": self.best("prev_token")[2]}

    def as_json(self, step: int) -> dict:
        return {"step": step, "induction": self.induction, "prev_token": self.prev_token, "chance": self.chance}


def repeated_random_tokens(pool: torch.Tensor, context_length: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """(len(PERIODS), T) token ids from pool, each row `period` distinct random ones repeated to T tokens (T the
    context up to MAX_LENGTH; a period at most T / 2, so every row holds two copies), and the rows' periods."""
    length = min(MAX_LENGTH, context_length)
    generator = torch.Generator().manual_seed(seed)
    rows, periods = [], []
    for period in PERIODS:
        period = max(2, min(period, length // 2, len(pool)))
        first = pool[torch.randperm(len(pool), generator=generator)[:period]]
        rows.append(first.repeat(length // period + 1)[:length])
        periods.append(period)
    return torch.stack(rows), periods


def induction_scores(patterns: torch.Tensor, periods: list[int]) -> tuple[torch.Tensor, float]:
    """patterns (rows, layers, heads, T, T) over repeated_random_tokens' rows: every head's mean attention from
    a repeated token to the tokens after its earlier occurrences, and the same for attention spread evenly."""
    length = patterns.size(-1)
    scores, chances = [], []
    for row, period in enumerate(periods):
        successors = torch.zeros(length, length)
        for i in range(period, length):
            successors[i, torch.arange(i - period + 1, 0, -period)] = 1.0
        repeated = torch.arange(period, length)
        scores.append((patterns[row] * successors).sum(dim=-1)[:, :, repeated].mean(dim=-1))
        chances.append(float((successors.sum(dim=-1)[repeated] / (repeated + 1)).mean()))
    return torch.stack(scores).mean(dim=0), sum(chances) / len(chances)


@torch.no_grad()
def head_scores(model: GPT, pool: torch.Tensor | int, device: torch.device, seed: int = 0) -> HeadScores:
    """Every head's induction and previous-token scores on random tokens from pool: the ids a text holds (a token
    the model never saw has an embedding it never learned to read), or an int n for ids 0..n-1. The same seed
    and pool give the same sequences, so scores along training compare."""
    if isinstance(pool, int):
        pool = torch.arange(pool)
    tokens, periods = repeated_random_tokens(pool, model.config.context_length, seed)
    patterns = attention_patterns(model, tokens.to(device)).float().cpu()  # (rows, n_layer, n_head, T, T)
    induction, chance = induction_scores(patterns, periods)
    later = torch.arange(1, tokens.size(1))
    prev_token = patterns.mean(dim=0)[:, :, later, later - 1].mean(dim=-1)
    return HeadScores(induction.tolist(), prev_token.tolist(), chance)


@dataclass(frozen=True)
class Reading:
    """One inspection during training: the step, its head scores and the in_context_gain last measured."""

    step: int
    scores: HeadScores
    in_context_gain: float | None


@dataclass(frozen=True)
class PhaseChange:
    """The span of training where an induction head formed: between two inspections."""

    layer: int
    head: int
    before: Reading
    after: Reading

    def describe(self, at=lambda step: f"step {step}") -> str:
        """In words, with what in_context_gain did meanwhile; at(step) names a point of training (a report says
        tokens seen)."""
        span = f"{at(self.before.step)} and {at(self.after.step)}"
        words = (f"an induction head, layer {self.layer} head {self.head}, formed between {span} (best induction "
                 f"score {self.before.scores.best('induction')[2]:.2f} -> {self.after.scores.best('induction')[2]:.2f})")
        gains = (self.before.in_context_gain, self.after.in_context_gain)
        if None not in gains:
            words += f"; in the same span in_context_gain went {gains[0]:.2f} -> {gains[1]:.2f}"
        return words


def phase_change(readings: list[Reading]) -> PhaseChange | None:
    """Where the best induction score first rose past FORMED; None while it has not."""
    for before, after in zip(readings, readings[1:]):
        layer, head, score = after.scores.best("induction")
        if score >= FORMED > before.scores.best("induction")[2]:
            return PhaseChange(layer, head, before, after)
    return None

