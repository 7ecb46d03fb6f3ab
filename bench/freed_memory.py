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
import sys

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


def measure(mode: str, steps: int) -> dict:
    env = benchlib.offline_environment()
    output, code, peak_rss = benchlib.run_measured(
        [sys.executable, __file__, "--child", mode, "--steps", str(steps)], env, benchlib.PROJECT_DIR)
    if code != 0:
        raise SystemExit(f"the {mode} child failed (exit {code}):\n{output[-3000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    result["tokens_per_sec"] = result["tokens_per_step"] / benchlib.median(result["seconds"])
    result["peak_rss_mb"] = peak_rss / 2**20
    return result


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
    runs: dict[str, list[dict]] = {"glibc": [], "kept": []}
    for rep in range(args.reps):
        for mode in runs:
            result = measure(mode, args.steps)
            runs[mode].append(result)
            print(f"   rep {rep + 1} {mode:5s}: {result['tokens_per_sec']:,.0f} tokens/s (median step "
                  f"{benchlib.median(result['seconds']):.3f} s), peak RSS {result['peak_rss_mb']:,.0f} MB, "
                  f"loss {result['loss']:.4f}")
    tokens = {mode: benchlib.median([r["tokens_per_sec"] for r in rs]) for mode, rs in runs.items()}
    rss = {mode: benchlib.median([r["peak_rss_mb"] for r in rs]) for mode, rs in runs.items()}
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
