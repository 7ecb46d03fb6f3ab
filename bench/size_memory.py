"""Peak RSS of training each named size on a CPU, and the largest batch that fits 8 GB and 16 GB of memory: the
figures of the guide's model-size table.

    python bench/size_memory.py [--configs small medium] [--batches 2 4 8] [--steps 2] [--whole]

Each (config, batch) is a child process of its own training --steps steps on verdict with the trainer's step
(bench/benchlib.py's BareLoop, freed memory kept as the trainer keeps it), its peak RSS read from wait4. Peak RSS
grows linearly with the batch (the activations), so a line through the measured batches gives the largest batch
under 8 GB and 16 GB (the process, torch and MLflow's imports included). --whole measures the whole-logits path
beside the chunked one. Information, no target: it prints `result:` with the largest batches.
"""

from __future__ import annotations

import argparse
import json
import sys

import benchlib

LIMITS_GB = (8, 16)


def child(config: str, batch_size: int, steps: int, whole: bool) -> None:
    from pipeline.settings import TrainSettings
    from pipeline.training.device import keep_freed_memory

    with benchlib.scratch("size-memory-"):
        settings = TrainSettings(config=config, corpus="verdict", batch_size=batch_size, max_steps=steps,
                                 device="cpu")
        _, train_split, _ = benchlib.prepare(settings)
        keep_freed_memory()
        loop = benchlib.BareLoop(settings, train_split)
        if whole:
            loop.model.loss_chunk = 0
        losses = [loop.run_step() for _ in range(steps)]
        print(json.dumps({"loss": losses[-1]}))


def peak_rss_gb(config: str, batch_size: int, steps: int, whole: bool) -> float:
    command = [sys.executable, __file__, "--child", config, "--batches", str(batch_size), "--steps", str(steps)]
    output, code, peak = benchlib.run_measured(command + (["--whole"] if whole else []),
                                               benchlib.offline_environment(), benchlib.PROJECT_DIR)
    if code != 0:
        raise SystemExit(f"{config} at batch {batch_size} failed (exit {code}):\n{output[-3000:]}")
    return peak / 2**30


def largest_batch(points: list[tuple[int, float]], limit_gb: float) -> int:
    """The largest batch under limit_gb on the line through the smallest and largest measured (batch, GB)."""
    (b0, m0), (b1, m1) = points[0], points[-1]
    per_window = (m1 - m0) / (b1 - b0)
    return max(0, int((limit_gb - m0) / per_window) + b0) if per_window > 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "medium"])
    # the line runs through the smallest and the largest: 2 and 4 alone put small's 8 GB batch anywhere from 32
    # to 47 from one run to the next, as a peak RSS swings by 100-200 MB
    parser.add_argument("--batches", nargs="+", type=int, default=[2, 4, 8], help="at least two batch sizes")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="also the whole logits (GPT.loss_chunk = 0)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batches[0], args.steps, args.whole)
        return 0
    if len(set(args.batches)) < 2:
        parser.error("--batches needs at least two batch sizes")

    benchlib.header(f"peak RSS of training {', '.join(args.configs)} on a CPU at batches "
                    f"{', '.join(map(str, args.batches))} ({args.steps} steps)")
    results = []
    for config in args.configs:
        for whole in ([True, False] if args.whole else [False]):
            path = "whole" if whole else "chunked"
            points = [(batch, peak_rss_gb(config, batch, args.steps, whole)) for batch in sorted(set(args.batches))]
            fits = {limit: largest_batch(points, limit) for limit in LIMITS_GB}
            measured = ", ".join(f"batch {batch}: {gb:.2f} GB" for batch, gb in points)
            print(f"   {config} {path}: {measured}; largest batch within 8 GB {fits[8]}, within 16 GB {fits[16]}")
            results.append(f"{config} {path} b{points[-1][0]} {points[-1][1]:.1f} GB, fits 8/16 GB at "
                           f"b{fits[8]}/b{fits[16]}")
    return benchlib.verdict([], result="; ".join(results))


if __name__ == "__main__":
    raise SystemExit(main())
