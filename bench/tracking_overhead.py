"""What MLflow tracking costs a training step: the real trainer, logging every step, against a bare loop.

    python bench/tracking_overhead.py [--steps 100] [--reps 3]

(a) tracked: pipeline.training.trainer.train() with log_interval 1 (train_loss, lr, grad_norm, tokens_per_sec,
    tokens_seen, mfu, peak_rss_mb every step, buffered into MLflow's SQLite store in a temporary folder, and a log line
    per step through logging as the CLI does, sent to /dev/null; MLflow's system-metrics thread sampling every
    10 s as in every run), eval/sample/checkpoint intervals 0;
(b) bare: the same model (same seed), make_optimizer, lr_at and WindowSampler batches, with nothing around the
    step (bench/benchlib.py's BareLoop).

The machine is shared and noisy, so the two alternate step by step in one process: each time the trainer logs a
step's train_loss (MetricBuffer.log, wrapped), one step of the bare loop runs right there, timed on its own. A
tracked step is the time from the end of that bare step to the next train_loss log: the tracked step's compute
and all of its tracking (the log call itself, the log line, the periodic flush to SQLite). Intervals of 0 still
evaluate, sample and checkpoint once at the end, and train() also connects, logs params and diagnoses the run:
none of that is inside a step, so none of it is counted. The first --warmup steps are left out, and so are the
pairs where either step took over 1.5x its loop's median (a burst of other work on a shared machine; the count is
printed). Each run gives tracked/bare = mean tracked step / mean bare step over the pairs kept; the median over
--reps runs is compared with the target: tracked at most 3% slower than bare. Both loops must reach the same
loss at every step (the same computation).

Also printed: inside the tracked runs, the share of the step's wall time spent outside its compute (the trainer's
own tokens_per_sec covers only the compute), i.e. the tracking code measured from the trainer's side.
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib

MAX_SLOWDOWN = 0.03
BURST = 1.5  # a step over 1.5x its loop's median was slowed by other work on the machine: its pair is left out


def settings_for(steps: int, run_name: str):
    from pipeline.settings import TrainSettings

    return TrainSettings(config="nano", corpus="verdict", **benchlib.SMALL_MODEL, batch_size=8, max_steps=steps,
                         log_interval=1, eval_interval=0, sample_interval=0, checkpoint_interval=0,
                         device="cpu", run_name=run_name)


def interleaved(steps: int, warmup: int, rep: int, train_split) -> dict:
    """One train() run with a bare step run (and timed) each time the trainer logs a step."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.training.trainer import train

    settings = settings_for(steps, f"tracked-{rep}")
    bare = benchlib.BareLoop(settings, train_split)
    marks: dict[int, tuple[float, float]] = {}  # step: (tracked step ends, bare step ends)
    bare_loss: dict[int, float] = {}
    original = tracking.MetricBuffer.log

    def log(self, step, **values):
        if "train_loss" in values:
            tracked_end = time.perf_counter()
            bare_loss[step] = bare.run_step()
            marks[step] = (tracked_end, time.perf_counter())
        return original(self, step, **values)

    tracking.MetricBuffer.log = log
    try:
        start = time.perf_counter()
        result = train(settings)
        total = time.perf_counter() - start
    finally:
        tracking.MetricBuffer.log = original
    client = MlflowClient(tracking.tracking_uri())
    history = {m.step: m.value for m in client.get_metric_history(result.run_id, "train_loss")}
    rates = {m.step: m.value for m in client.get_metric_history(result.run_id, "tokens_per_sec")}
    tokens_per_step = int(client.get_run(result.run_id).data.params["tokens_per_step"])
    assert sorted(marks) == list(range(1, steps + 1)), "log_interval 1 logs every step"
    counted = range(warmup + 1, steps + 1)
    tracked_steps = [marks[k][0] - marks[k - 1][1] for k in counted]
    bare_steps = [marks[k][1] - marks[k][0] for k in counted]
    compute = [tokens_per_step / rates[k] for k in counted]
    tracked_median, bare_median = benchlib.median(tracked_steps), benchlib.median(bare_steps)
    kept = [i for i, (t, b) in enumerate(zip(tracked_steps, bare_steps))
            if t <= BURST * tracked_median and b <= BURST * bare_median]
    return {
        "tracked": sum(tracked_steps[i] for i in kept) / len(kept),
        "bare": sum(bare_steps[i] for i in kept) / len(kept),
        "dropped": len(counted) - len(kept),
        "outside_compute": 1 - sum(compute[i] for i in kept) / sum(tracked_steps[i] for i in kept),
        "total": total,
        "max_loss_gap": max(abs(history[k] - bare_loss[k]) for k in history),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per run (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out at the start of each run")
    parser.add_argument("--reps", type=int, default=3, help="train() runs, each interleaved with a bare loop (default 3)")
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")

    benchlib.header("tracking overhead: train() logging every step vs a bare loop, step by step")
    with benchlib.scratch("bench-tracking-") as folder:
        benchlib.quiet_logging()
        _, train_split, _ = benchlib.prepare(settings_for(args.steps, "prepare"))
        print(f"   model {benchlib.SMALL_MODEL}, batch 8, {args.steps} steps per run (first {args.warmup} "
              f"left out), {args.reps} runs; store {folder / 'mlflow.db'}")
        runs = []
        for rep in range(args.reps):
            r = interleaved(args.steps, args.warmup, rep, train_split)
            runs.append(r)
            print(f"   run {rep + 1}: tracked {r['tracked'] * 1e3:7.2f} ms/step  bare {r['bare'] * 1e3:7.2f} ms/step  "
                  f"ratio {r['tracked'] / r['bare']:.3f}  outside compute {r['outside_compute'] * 100:.2f}%  "
                  f"({r['dropped']} pairs dropped; whole train() {r['total']:.1f} s)")
    ratios = [r["tracked"] / r["bare"] for r in runs]
    ratio = benchlib.median(ratios)
    outside = benchlib.median([r["outside_compute"] for r in runs])
    gap = max(r["max_loss_gap"] for r in runs)
    print(f"tracked {benchlib.median([r['tracked'] for r in runs]) * 1e3:.2f} ms/step, "
          f"bare {benchlib.median([r['bare'] for r in runs]) * 1e3:.2f} ms/step (medians over runs)")
    print(f"ratio tracked/bare: {ratio:.3f}x median (runs {benchlib.spread(ratios)}; target <= {1 + MAX_SLOWDOWN:.2f}x); "
          f"inside the tracked runs {outside * 100:.2f}% of a step's wall time is outside its compute")
    return benchlib.verdict([
        (f"tracked step {100 * (ratio - 1):+.1f}% against bare (target at most +{MAX_SLOWDOWN * 100:.0f}%)",
         ratio <= 1 + MAX_SLOWDOWN),
        (f"same loss tracked and bare at every step (largest gap {gap:.2g})", gap < 1e-4),
    ], result=f"{ratio:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
