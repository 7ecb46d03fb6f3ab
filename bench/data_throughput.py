"""Can the data keep up? Batches per second WindowSampler produces against training steps per second for nano.

    python bench/data_throughput.py [--corpus verdict] [--corpus tinystories] [--device auto|cpu|cuda]

Producer: WindowSampler.batch(position, 8) over nano's 256-token windows, consecutive positions of the shuffled
stream as the trainer asks for them, then x and y copied to the device with .to(device, non_blocking=True)
(from pinned memory on CUDA, waited for at the end of each timed block). Consumer: the trainer's step
(bench/benchlib.py's BareLoop) on the same batches. The two alternate: a block of batches (--block-seconds), then
one training step (--steps blocks and steps), and the medians are compared. One step takes one batch
(grad_accum 1), so the ratio is how many times over the sampler could feed the loop. Target: at least 20x.

The default corpora are verdict (5K tokens, the main job's) and tinystories (the mirror's ~0.5M-token sample,
whose random windows are spread over a larger memory-mapped shard).
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib

MIN_RATIO = 20.0


def settings_for(corpus: str, device: str):
    from pipeline.settings import TrainSettings

    return TrainSettings(config="nano", corpus=corpus, batch_size=8, max_steps=100_000, device=device)


def produce(sampler, device, position: int, seconds: float) -> tuple[int, float]:
    """Batches made (and copied to device) in about `seconds`, starting at stream position; (count, elapsed)."""
    import torch

    pin = device.type == "cuda"
    count, start = 0, time.perf_counter()
    while True:
        x, y = sampler.batch(position + count * 8, 8)
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        count += 1
        if count % 16 == 0 and time.perf_counter() - start >= seconds:
            break
    if pin:
        torch.cuda.synchronize(device)
    return count, time.perf_counter() - start


def measure(corpus: str, device_name: str, steps: int, block_seconds: float) -> dict:
    from pipeline.data.batches import WindowSampler

    settings = settings_for(corpus, device_name)
    _, train_split, _ = benchlib.prepare(settings)
    loop = benchlib.BareLoop(settings, train_split)
    device = loop.device
    sampler = WindowSampler(train_split, settings.model_config().context_length, settings.stride, settings.seed)
    loop.run_step()  # warm-up: the first step allocates everything
    produce(sampler, device, 0, 0.1)
    batch_rates, step_times = [], []
    for i in range(steps):
        count, seconds = produce(sampler, device, 10_000 * i, block_seconds)
        batch_rates.append(count / seconds)
        benchlib.sync(device)
        start = time.perf_counter()
        loop.run_step()
        step_times.append(time.perf_counter() - start)
    return {"batches_per_sec": benchlib.median(batch_rates), "steps_per_sec": 1 / benchlib.median(step_times),
            "batch_rates": batch_rates, "step_times": step_times, "train_tokens": sum(len(s) for s in train_split),
            "shards": len(train_split), "device": str(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", help="corpus to sample (repeatable; default verdict and tinystories)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--steps", type=int, help="alternating blocks and steps (default 5 on CPU, 30 on CUDA)")
    parser.add_argument("--block-seconds", type=float, default=0.5, help="length of each block of batches (0.5)")
    args = parser.parse_args()

    benchlib.header("data throughput: WindowSampler batches/s against nano training steps/s")
    checks, results = [], []
    with benchlib.scratch("bench-data-"):
        from pipeline.training.device import pick_device

        device = pick_device(args.device)
        steps = args.steps or (5 if device.type == "cpu" else 30)
        for corpus in args.corpus or ["verdict", "tinystories"]:
            r = measure(corpus, args.device, steps, args.block_seconds)
            ratio = r["batches_per_sec"] / r["steps_per_sec"]
            print(f"{corpus} ({r['train_tokens']:,} train tokens, {r['shards']} shard(s)) on {r['device']}: "
                  f"{r['batches_per_sec']:,.0f} batches/s of 8x256 (blocks {benchlib.spread(r['batch_rates'])}), "
                  f"{r['steps_per_sec']:.3g} steps/s (steps {benchlib.spread(r['step_times'])} s); "
                  f"{1e6 / r['batches_per_sec']:,.0f} us per batch")
            print(f"{corpus}: ratio batches/steps {ratio:,.0f}x (target >= {MIN_RATIO:.0f}x)")
            results.append(f"{corpus} {r['batches_per_sec']:,.0f} batches/s vs {r['steps_per_sec']:.2g} steps/s")
            checks.append((f"{corpus}: sampler {ratio:,.0f}x faster than training (target at least {MIN_RATIO:.0f}x)",
                           ratio >= MIN_RATIO))
    return benchlib.verdict(checks, result="; ".join(results))


if __name__ == "__main__":
    sys.exit(main())
