"""How much sooner does a small BPE reach GPT-2's val_bpb on TinyStories, on the same model, in wall time?

    python bench/tokenizer_speed.py [--minutes 10] [--tokenizer bpe:4096]

On one fresh store, with the model and settings of experiments.yaml's tokenizers_cpu (4 layers, width 128, batch
16, lr 3e-3, each tokenizer at its own context of about 260-300 bytes):
  1. each tokenizer's training speed: PROBE_STEPS steps of bench/benchlib.py's BareLoop (the trainer's step,
     nothing around it) after a warm-up, in tokens/s;
  2. GPT-2's BPE trained for --minutes of wall time (max_tokens = its tokens/s x the minutes, so its cosine ends
     there), evaluated every EVAL_INTERVAL steps;
  3. the small BPE given a third of that time the same way.
Then reads, from the runs' metric timestamps (seconds from each run's start, interpolated between evaluations),
when the small BPE's val_bpb first reaches GPT-2's final val_bpb. Target: in at most a third of GPT-2's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import benchlib

PROBE_STEPS = 20
EVAL_INTERVAL = 25
TARGET_SHARE = 1 / 3


def probe(settings) -> float:
    """Training tokens per second of the trainer's bare step for these settings, with freed memory kept as the
    trainer keeps it on a CPU (without it GPT-2's 50,304-wide logits are fresh pages every step: 1.5x slower)."""
    from pipeline.training.device import keep_freed_memory

    keep_freed_memory()
    _, train_split, _ = benchlib.prepare(settings)
    loop = benchlib.BareLoop(settings, train_split)
    for _ in range(3):
        loop.run_step()
    start = time.perf_counter()
    for _ in range(PROBE_STEPS):
        loop.run_step()
    return PROBE_STEPS * loop.tokens_per_step / (time.perf_counter() - start)


def trained(client, settings, tokens_per_sec: float, minutes: float):
    """Train settings for about `minutes` of wall time; the run as the analysis reads it (bpb_times)."""
    from pipeline.analysis.curves import load_runs
    from pipeline.training.trainer import train

    budget = dataclasses.replace(settings, max_tokens=int(tokens_per_sec * minutes * 60), eval_interval=EVAL_INTERVAL,
                                 experiment="bench-tokenizer-speed")
    result = train(budget)
    return load_runs(client, [result.run_id])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="GPT-2's training time (default 10)")
    parser.add_argument("--tokenizer", default="bpe:4096", help="the small tokenizer, one of tokenizers_cpu's")
    args = parser.parse_args()

    benchlib.header(f"{args.tokenizer} against GPT-2's BPE: time to GPT-2's val_bpb after {args.minutes:g} minutes")
    with benchlib.scratch("bench-tokenizer-speed-"):
        benchlib.quiet_logging()
        from pipeline import tracking
        from pipeline.analysis.tokenizers import time_to_reach
        from pipeline.sweeps.spec import load_sweep

        settings = {p.settings.tokenizer: p.settings for p in load_sweep("tokenizers", scale="cpu").points}
        reference, small = settings["gpt2"], settings[args.tokenizer]
        speeds = {s.tokenizer: probe(s) for s in (reference, small)}
        for name, speed in speeds.items():
            print(f"   {name:9s} context {settings[name].context_length:3d}: {speed:8,.0f} tokens/s (bare step)")
        client = tracking.connect()
        gpt2 = trained(client, reference, speeds["gpt2"], args.minutes)
        other = trained(client, small, speeds[args.tokenizer], args.minutes * TARGET_SHARE)
    gpt2_seconds, target = gpt2.bpb_times[-1]
    reached = time_to_reach(other, target)
    for run in (gpt2, other):
        seconds, bpb = run.bpb_times[-1]
        print(f"   {run.value('tokenizer'):9s} {run.tokens_seen:>10,} tokens in {seconds / 60:5.2f} min: val_bpb "
              f"{bpb:.3f} (val loss {run.final_val:.3f}, {1 / float(run.value('val_tokens_per_byte')):.2f} "
              "bytes/token)")
    if reached is None:
        print(f"   {args.tokenizer} did not reach val_bpb {target:.3f} in its {other.bpb_times[-1][0] / 60:.2f} min")
        share = float("inf")
    else:
        share = reached / gpt2_seconds
        print(f"   {args.tokenizer} reached GPT-2's final val_bpb {target:.3f} after {reached / 60:.2f} min: "
              f"{share:.2f} of GPT-2's {gpt2_seconds / 60:.2f} min")
    return benchlib.verdict(
        [(f"{args.tokenizer} reaches GPT-2's val_bpb in at most {TARGET_SHARE:.2f} of its time", share <= TARGET_SHARE)],
        result=(f"{share:.2f}x GPT-2's time to val_bpb {target:.2f} ({args.minutes:g} min)" if reached is not None
                else f"did not reach val_bpb {target:.2f} in a third of {args.minutes:g} min"))


if __name__ == "__main__":
    sys.exit(main())
