"""Loss by position: how well the model predicts the token at each place in the context, over the fixed val
windows. Its mean is val_loss; how it falls along the context is what a longer context buys."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class PositionCurve:
    """The mean val loss at each position of the context (position 0 predicts from one token alone)."""

    losses: list[float]

    @property
    def mean(self) -> float:
        return sum(self.losses) / len(self.losses)

    def band(self, start: int, stop: int) -> float:
        """The mean loss over positions start to stop - 1 (at least one position)."""
        band = self.losses[start:max(stop, start + 1)]
        return sum(band) / len(band)

    def band_error(self, start: int, stop: int) -> float:
        """The standard error of band(start, stop): each position's loss is a mean over the val windows, and its
        scatter around the band's mean is that mean's noise."""
        band = self.losses[start:max(stop, start + 1)]
        return statistics.stdev(band) / math.sqrt(len(band)) if len(band) > 1 else 0.0

    @property
    def last_eighth_start(self) -> int:
        n = len(self.losses)
        return n - max(1, n // 8)

    @property
    def first_eighth(self) -> float:
        return self.band(0, len(self.losses) // 8)

    @property
    def last_eighth(self) -> float:
        return self.band(self.last_eighth_start, len(self.losses))

    @property
    def in_context_gain(self) -> float:
        """Olsson et al.'s in-context learning score turned round and scaled to the context: the loss around a
        tenth of the way in (their 50th of 512 tokens; positions T/16 to T/8) minus the loss over the last eighth
        (their 500th). Positive: later tokens are predicted better because more of the context is seen."""
        n = len(self.losses)
        return self.band(n // 16, n // 8) - self.last_eighth

    def binned(self, per_octave: int = 4) -> tuple[list[float], list[float]]:
        """(tokens read, mean loss) over bins a quarter of an octave wide: a position's loss is a mean over the val
        windows' tokens there and swings by tenths of a nat from one position to the next, a bin's much less."""
        bins: dict[int, list[int]] = {}
        for position in range(len(self.losses)):
            bins.setdefault(math.floor(per_octave * math.log2(position + 1)), []).append(position)
        return ([sum(p + 1 for p in members) / len(members) for members in bins.values()],
                [self.band(members[0], members[-1] + 1) for members in bins.values()])

    def scalars(self) -> dict[str, float]:
        """What an evaluation logs beside val_loss."""
        return {"val_loss_first_eighth": self.first_eighth, "val_loss_last_eighth": self.last_eighth,
                "in_context_gain": self.in_context_gain}

    def as_json(self, step: int) -> dict:
        return {"step": step, "val_loss": self.mean, **self.scalars(), "loss_by_position": self.losses}
