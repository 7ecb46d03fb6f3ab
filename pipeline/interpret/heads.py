"""Heads by role. On a sequence of random tokens repeated once, an induction head attends from a token of the
second copy to the token that followed it in the first (and so predicts it); a previous-token head attends to the
position just before. Each head's score is its mean attention to that place (Olsson et al., 2022): 1 is a
head that does nothing else, and a head that spreads its attention evenly scores `chance`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import GPT
from pipeline.interpret.attention import attention_patterns

SEQUENCES = 4  # repeated random sequences scored together
MAX_HALF = 64  # tokens in the first copy: short enough to score in milliseconds on a CPU
FORMED = 0.3  # a best induction score from here on counts as a formed induction head (chance is ~0.02)


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


def repeated_random_tokens(pool: torch.Tensor, context_length: int, seed: int = 0) -> torch.Tensor:
    """(SEQUENCES, 2n) token ids drawn from pool: n random ones, then the same n again (n at most half the
    context)."""
    half = min(MAX_HALF, context_length // 2)
    generator = torch.Generator().manual_seed(seed)
    first = pool[torch.randint(0, len(pool), (SEQUENCES, half), generator=generator)]
    return torch.cat([first, first], dim=1)


@torch.no_grad()
def head_scores(model: GPT, pool: torch.Tensor | int, device: torch.device, seed: int = 0) -> HeadScores:
    """Every head's induction and previous-token scores on random tokens from pool: the ids a text holds (a token
    the model never saw has an embedding it never learned to read), or an int n for ids 0..n-1. The same seed
    and pool give the same sequences, so scores along training compare."""
    if isinstance(pool, int):
        pool = torch.arange(pool)
    tokens = repeated_random_tokens(pool, model.config.context_length, seed)
    patterns = attention_patterns(model, tokens.to(device)).mean(dim=0)  # (n_layer, n_head, 2n, 2n)
    half = tokens.size(1) // 2
    second = torch.arange(half, 2 * half)
    induction = patterns[:, :, second, second - half + 1].mean(dim=-1)
    later = torch.arange(1, 2 * half)
    prev_token = patterns[:, :, later, later - 1].mean(dim=-1)
    chance = float((1.0 / (second + 1).float()).mean())
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

