"""Runs that differ in their tokenizer, read in sentences: which learned the most per second of training, and why.

A run's speed at learning text is its tokens per second times the bytes of text one token holds (1 /
val_tokens_per_byte): the bytes it reads per second. What a token costs is mostly its output layer where the
vocabulary is large: the head's n_embd x vocab_size weights are multiplied for every token, beside the blocks'
12 x n_layer x n_embd^2. Runs compare by val_bpb, bits per byte of the same val text, at the same wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pipeline.analysis.curves import RunCurves, number

# A run "learned the most per second" when its val_bpb at the common time is this much below the next best's.
CLEAR_BPB_MARGIN = 0.02


@dataclass(frozen=True)
class TokenizerPoint:
    """One run's numbers for the comparison."""

    tokenizer: str
    tokens_per_sec: float | None  # the last logged training speed (evaluation not counted)
    bytes_per_token: float | None  # 1 / val_tokens_per_byte
    head_share: float | None  # the output layer's share of the FLOPs of a token
    seconds: float | None  # the wall time of the run's last evaluation
    final_bpb: float | None

    @property
    def bytes_per_sec(self) -> float | None:
        if self.tokens_per_sec is None or self.bytes_per_token is None:
            return None
        return self.tokens_per_sec * self.bytes_per_token


def point(run: RunCurves) -> TokenizerPoint:
    per_byte = number(run.value("val_tokens_per_byte"))
    vocab, width, flops = (number(run.value(key)) for key in ("vocab_size", "n_embd", "flops_per_token"))
    head = 6 * vocab * width / flops if vocab and width and flops else None
    last = run.bpb_times[-1] if run.bpb_times else (None, run.metrics.get("val_bpb"))
    return TokenizerPoint(run.value("tokenizer") or "gpt2", run.metrics.get("tokens_per_sec"),
                          1 / per_byte if per_byte else None, head, last[0], last[1])


def bpb_at(run: RunCurves, seconds: float) -> float | None:
    """The run's val_bpb at a wall time, interpolated between its evaluations; None before its first."""
    times = run.bpb_times
    if not times or seconds < times[0][0]:
        return None
    for (t0, v0), (t1, v1) in zip(times, times[1:]):
        if t0 <= seconds <= t1:
            return v0 + (v1 - v0) * (seconds - t0) / (t1 - t0) if t1 > t0 else v1
    return times[-1][1]


def time_to_reach(run: RunCurves, target: float) -> float | None:
    """The first wall time (seconds) at which the run's val_bpb is at or below target, interpolated; None if never."""
    times = run.bpb_times
    for index, (seconds, value) in enumerate(times):
        if value <= target:
            if index == 0:
                return seconds
            (t0, v0) = times[index - 1]
            return t0 + (seconds - t0) * (v0 - target) / (v0 - value)
    return None


def reading(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    """The findings' sentences for runs with different tokenizers, and the numbers behind them."""
    timed = [run for run in runs if run.bpb_times]
    if len(timed) < 2:
        return ["Fewer than two runs logged val_bpb over time: nothing to compare across tokenizers."], {}
    common = min(run.bpb_times[-1][0] for run in timed)  # the shortest run's length: every run has reached it
    points = {run.run_id: point(run) for run in timed}
    at_common = sorted(((value, run) for run in timed if (value := bpb_at(run, common)) is not None),
                       key=lambda pair: pair[0])
    if len(at_common) < 2:  # a run whose first evaluation came after the shortest run had ended
        return [f"Fewer than two runs had a val_bpb by {common / 60:.1f} minutes: nothing to compare."], {}
    facts = {"common_seconds": common,
             "bpb_at_common": {points[run.run_id].tokenizer: value for value, run in at_common},
             "bytes_per_sec": {p.tokenizer: p.bytes_per_sec for p in points.values()},
             "head_share": {p.tokenizer: p.head_share for p in points.values()}}
    (best_value, best), (next_value, _) = at_common[0], at_common[1]
    winner = points[best.run_id]
    facts["most_per_second"] = winner.tokenizer
    listing = "; ".join(f"{points[run.run_id].tokenizer} {value:.3f}" for value, run in at_common)
    lines = [f"val_bpb after {common / 60:.1f} minutes of training (the shortest run's length): {listing}."]
    clear = next_value - best_value >= CLEAR_BPB_MARGIN
    lines.append(f"{winner.tokenizer} learned the most per second" + ("" if clear else
                 f", though within {CLEAR_BPB_MARGIN} bits per byte of the next: not a clear win") + ".")
    lines.append("Why: " + "; ".join(_speed_text(p) for p in sorted(
        points.values(), key=lambda p: -(p.bytes_per_sec or 0))) + ". Bytes of text read per second is what a "
        "tokenizer buys: GPT-2's long tokens each carry the most text, but its 50,257-way output layer makes each "
        "token dear; bytes are cheap tokens that carry one byte each and need long contexts; a small BPE keeps "
        "most of the text per token at a fraction of the output layer's cost.")
    return lines, facts


def _speed_text(p: TokenizerPoint) -> str:
    parts = []
    if p.tokens_per_sec is not None:
        parts.append(f"{p.tokens_per_sec:,.0f} tokens/s")
    if p.bytes_per_token is not None:
        parts.append(f"x {p.bytes_per_token:.2f} bytes/token")
    if p.bytes_per_sec is not None:
        parts.append(f"= {p.bytes_per_sec:,.0f} bytes/s")
    if p.head_share is not None:
        parts.append(f"(output layer {p.head_share:.0%} of a token's FLOPs)")
    return f"{p.tokenizer} " + " ".join(parts) if parts else f"{p.tokenizer}: no speed logged"
