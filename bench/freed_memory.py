"""What keeping freed memory (pipeline/training/device.py's keep_freed_memory) buys a nano step on a CPU.

    python bench/freed_memory.py [--steps 8] [--reps 3]

Each run is a child process of its own that trains nano (6 layers, 384 wide, context 256, batch 8) on verdict
with the trainer's own step (bench/benchlib.py's BareLoop), --steps steps after two warm-up steps:
- glibc: the C library's defaults, under which every large tensor is a fresh mmap, faulted in page by page;
- kept: keep_freed_memory() called first, as the trainer does on a CPU.
The two alternate, --reps times each, on one machine in one run. Compared: the median step's tokens/s (median
over the reps) and the peak RSS (from wait4). Both must reach the same loss (the same computation).
Targets: kept at least 1.2x the tokens/s of glibc; its peak RSS at most 1.25x (freed blocks reused for other
sizes fragment the heap a little).
"""

from __future__ import annotations

import argparse
import json

import benchlib

MIN_SPEEDUP = 1.2
MAX_RSS_GROWTH = 1.25
WARMUP = 2


def child(mode: str, steps: int) -> None:
    """Train nano for WARMUP + steps steps; print the step times and the last loss as JSON."""
    from pipeline.settings import TrainSettings
    from pipeline.training.device import keep_freed_memory

    with benchlib.scratch("freed-memory-"):
        settings = TrainSettings(config="nano", corpus="verdict", batch_size=8, max_steps=WARMUP + steps,
                                 device="cpu")
        _, train_split, _ = benchlib.prepare(settings)
        if mode == "kept" and not keep_freed_memory():
            raise SystemExit("keep_freed_memory() does nothing here: not Linux with glibc")
        loop = benchlib.BareLoop(settings, train_split)
        seconds, loss = [], 0.0
        for step in range(WARMUP + steps):
            elapsed, loss = benchlib.timed(loop.run_step)
            if step >= WARMUP:
                seconds.append(elapsed)
        print(json.dumps({"seconds": seconds, "loss": loss, "tokens_per_step": loop.tokens_per_step}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", choices=["glibc", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return 0

    benchlib.offline_environment()
    benchlib.header(f"keeping freed memory: nano steps with glibc's defaults against keep_freed_memory() "
                    f"({args.steps} steps, {args.reps} reps each, alternating)")
    runs, tokens, rss = benchlib.alternate_children(__file__, ["glibc", "kept"], args.reps,
                                                    ["--steps", str(args.steps)])
    speedup, growth = tokens["kept"] / tokens["glibc"], rss["kept"] / rss["glibc"]
    losses = {r["loss"] for rs in runs.values() for r in rs}
    print(f"glibc: {tokens['glibc']:,.0f} tokens/s, peak RSS {rss['glibc']:,.0f} MB")
    print(f"kept:  {tokens['kept']:,.0f} tokens/s, peak RSS {rss['kept']:,.0f} MB")
    return benchlib.verdict([
        (f"kept/glibc tokens/s {speedup:.2f}x (target at least {MIN_SPEEDUP}x)", speedup >= MIN_SPEEDUP),
        (f"kept/glibc peak RSS {growth:.2f}x (target at most {MAX_RSS_GROWTH}x)", growth <= MAX_RSS_GROWTH),
        (f"the same loss in every run ({', '.join(f'{loss:.4f}' for loss in sorted(losses))})", len(losses) == 1),
    ], result=f"{speedup:.2f}x tokens/s, {growth:.2f}x peak RSS")


if __name__ == "__main__":
    raise SystemExit(main())
