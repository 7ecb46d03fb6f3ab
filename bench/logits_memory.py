"""The chunked cross-entropy (model/loss.py) against the whole logits: nano's peak RSS and tokens/s on a CPU.

    python bench/logits_memory.py [--steps 8] [--reps 3] [--batch-size 8]

Each run is a child process of its own (a process's peak RSS only grows) that trains nano (6 layers, 160 wide,
context 256) on verdict with the trainer's own step (bench/benchlib.py's BareLoop), freed memory kept as the
trainer keeps it on a CPU, --steps steps after two warm-up steps, then scores the val windows once:
- whole: the (positions, 50,304) logits made at once, as before (GPT.loss_chunk = 0);
- chunked: the trainer's default, the loss a chunk of positions at a time.
The two alternate, --reps times each, in one run. Compared: peak RSS (from wait4, median over the reps), the
median step's tokens/s, and the losses, which must agree (the same sums in another order).
Targets: chunked peak RSS at least 35% lower; tokens/s at least 0.98x; train and val losses equal to 1e-4.
"""

from __future__ import annotations

import argparse
import json

import benchlib

MIN_RSS_SAVING = 0.35
MIN_SPEED = 0.98
LOSS_TOLERANCE = 1e-4
WARMUP = 2


def child(mode: str, steps: int, batch_size: int) -> None:
    """Train nano for WARMUP + steps steps, then evaluate; print step times and losses as JSON."""
    from pipeline.data.batches import ValWindows
    from pipeline.settings import TrainSettings
    from pipeline.training.device import keep_freed_memory

    with benchlib.scratch("logits-memory-"):
        settings = TrainSettings(config="nano", corpus="verdict", batch_size=batch_size, max_steps=WARMUP + steps,
                                 device="cpu")
        _, train_split, val_split = benchlib.prepare(settings)
        keep_freed_memory()
        loop = benchlib.BareLoop(settings, train_split)
        if mode == "whole":
            loop.model.loss_chunk = 0
        seconds, loss = [], 0.0
        for step in range(WARMUP + steps):
            elapsed, loss = benchlib.timed(loop.run_step)
            if step >= WARMUP:
                seconds.append(elapsed)
        val = ValWindows.build(val_split, loop.sampler.length, settings.val_windows)
        val_loss = evaluate(loop.model, val, batch_size)
        print(json.dumps({"seconds": seconds, "loss": loss, "val_loss": val_loss,
                          "tokens_per_step": loop.tokens_per_step}))


def evaluate(model, val, batch_size: int) -> float:
    """The mean loss over the val windows, a micro-batch at a time, as the trainer's evaluation."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(val), batch_size):
            x, y = val.x[start : start + batch_size], val.y[start : start + batch_size]
            total += model(x, y)[1].item() * len(x)
    return total / len(val)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", choices=["whole", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.batch_size)
        return 0

    benchlib.offline_environment()
    benchlib.header(f"chunked cross-entropy against the whole logits: nano at batch {args.batch_size} x 256 "
                    f"({args.steps} steps, {args.reps} reps each, alternating)")
    runs, tokens, rss = benchlib.alternate_children(__file__, ["whole", "chunked"], args.reps,
                                                    ["--steps", str(args.steps), "--batch-size", str(args.batch_size)])
    speed, saving = tokens["chunked"] / tokens["whole"], 1 - rss["chunked"] / rss["whole"]
    losses = [r[key] for rs in runs.values() for r in rs for key in ("loss", "val_loss")]
    gap = max(abs(r[key] - runs["whole"][0][key]) for rs in runs.values() for r in rs for key in ("loss", "val_loss"))
    for mode in runs:
        print(f"{mode}: {tokens[mode]:,.0f} tokens/s, peak RSS {rss[mode]:,.0f} MB")
    return benchlib.verdict([
        (f"chunked peak RSS {saving:.0%} lower (target at least {MIN_RSS_SAVING:.0%})", saving >= MIN_RSS_SAVING),
        (f"chunked/whole tokens/s {speed:.3f}x (target at least {MIN_SPEED}x)", speed >= MIN_SPEED),
        (f"train and val losses equal within {gap:.1e} ({min(losses):.5f}..{max(losses):.5f}; target "
         f"{LOSS_TOLERANCE:.0e})", gap <= LOSS_TOLERANCE),
    ], result=f"peak RSS {rss['chunked']:,.0f} MB vs {rss['whole']:,.0f} MB ({saving:.0%} lower), {speed:.3f}x "
              f"tokens/s, equal losses")


if __name__ == "__main__":
    raise SystemExit(main())
