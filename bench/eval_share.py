"""The share of a nano run's wall time that evaluation and sampling take at the default intervals.

    python bench/eval_share.py [--reps 3]

Times, alternately and --reps times each, on nano with TrainSettings' defaults:
  - one training step (bench/benchlib.py's BareLoop: the trainer's step, nothing around it);
  - one evaluation: the trainer's own RunRecorder.evaluate and read_lens (val_windows windows, batch_size at a
    time, and the logit lens on the first LENS_WINDOWS);
  - one sample: the trainer's own RunRecorder.sample (sample_tokens tokens, the novelty score against the train
    split's 8-gram index, and the text and table stored in the run, MLflow SQLite store in a temporary folder).
The trainer's own RunRecorder times them, built around BareLoop's model and optimizer, the val windows and a run
in the store, so what is timed is the code a run executes.

share = (eval / eval_interval + sample / sample_interval) / (step + eval / eval_interval + sample / sample_interval)
with medians: the fraction of wall time a long run spends on them. Target: at most 10%. A checkpoint at
checkpoint_interval is timed too and printed for information (no target).

Inspection (pipeline/interpret/) is timed beside them: one inspection (attention images of the prompt, head scores,
the HTML page, stored in the run) at its default interval (with the samples), and the logit lens's share of an
evaluation (the evaluation against the plain mean loss over the same windows). Their ratio
step / (step + inspect / inspection_interval + lens / eval_interval) is training's tokens/s with inspection
against without it. Target: at least 0.97.
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib

MAX_SHARE = 0.10
MIN_INSPECTION_RATIO = 0.97


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timings of each, alternating (default 3)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = parser.parse_args()

    benchlib.header("evaluation and sampling share of a nano run at the default intervals")
    with benchlib.scratch("bench-eval-"):
        benchlib.quiet_logging()
        from pipeline import tracking
        from pipeline.data.batches import ValWindows
        from pipeline.data.corpora import fetch
        from pipeline.settings import TrainSettings
        from pipeline.training.recording import RunRecorder
        from pipeline.training.state import Data, Tracked

        s = TrainSettings(config="nano", corpus="verdict", device=args.device)
        shards, train_split, val_split = benchlib.prepare(s)
        loop = benchlib.BareLoop(s, train_split)
        config = s.model_config()
        client = tracking.connect()
        run_id = tracking.start_run(client, s.experiment, "eval-share", tags={})
        data = Data(loop.sampler, ValWindows.build(val_split, config.context_length, s.val_windows),
                    s.prompt or fetch(s.corpus).corpus.prompt, shards=shards)
        data.ngrams  # the 8-gram index a run loads at its first sample, loaded here: not timed as a sample
        tracked = Tracked(client, run_id, tracking.MetricBuffer(client, run_id), skip_through=-1)
        recorder = RunRecorder(s, loop.device, loop.learner, data, tracked)
        print(f"   nano on {s.corpus}, batch {s.batch_size}; eval every {s.eval_interval} steps over "
              f"{len(data.val)} val windows; a {s.sample_tokens}-token sample every {s.sample_interval} steps; "
              f"checkpoint every {s.checkpoint_interval}; device {loop.device}")

        def timed(action) -> float:
            benchlib.sync(loop.device)
            start = time.perf_counter()
            action()
            benchlib.sync(loop.device)
            return time.perf_counter() - start

        loop.run_step()  # warm-up
        times = {"step": [], "eval": [], "sample": [], "checkpoint": [], "plain_eval": [], "inspect": []}
        for rep in range(args.reps):
            times["step"].append(timed(loop.run_step))
            times["eval"].append(timed(lambda: (recorder.evaluate(), recorder.read_lens())))
            times["plain_eval"].append(timed(recorder.evaluate))
            times["inspect"].append(timed(lambda: recorder.inspect(s.inspection_interval() * (rep + 1))))
            times["sample"].append(timed(lambda: recorder.sample(s.sample_interval * (rep + 1))))
            times["checkpoint"].append(timed(lambda: recorder.checkpoint(s.checkpoint_interval * (rep + 1))))
        tracking.finish_run(client, run_id, tracking.STATUS_FINISHED)

    step, evaluation, sample, checkpoint, plain, inspection = (
        benchlib.median(times[k]) for k in ("step", "eval", "sample", "checkpoint", "plain_eval", "inspect"))
    lens = max(0.0, evaluation - plain)
    inspection_ratio = step / (step + inspection / max(1, s.inspection_interval())
                               + (lens / s.eval_interval if s.eval_interval else 0.0))
    per_step = {
        "eval": evaluation / s.eval_interval if s.eval_interval else 0.0,
        "sample": sample / s.sample_interval if s.sample_interval else 0.0,
        "checkpoint": checkpoint / s.checkpoint_interval if s.checkpoint_interval else 0.0,
    }
    wall = step + per_step["eval"] + per_step["sample"]
    share = (per_step["eval"] + per_step["sample"]) / wall
    for kind, value in (("train step", step), ("evaluation", evaluation), ("sample", sample), ("checkpoint", checkpoint)):
        key = {"train step": "step", "evaluation": "eval"}.get(kind, kind)
        print(f"{kind:11s} {value * 1e3:9.1f} ms (median; {benchlib.spread([t * 1e3 for t in times[key]])} ms)")
    print(f"per training step: eval {per_step['eval'] * 1e3:.1f} ms + sample {per_step['sample'] * 1e3:.1f} ms "
          f"against {step * 1e3:.0f} ms of training; ratio eval+sample/step {(wall - step) / step:.4f}")
    print(f"share of wall time: eval {per_step['eval'] / wall:.2%}, sample {per_step['sample'] / wall:.2%}, "
          f"together {share:.2%} (target <= {MAX_SHARE:.0%}); checkpoints add "
          f"{per_step['checkpoint'] / (wall + per_step['checkpoint']):.2%}")
    print(f"inspection {inspection * 1e3:.1f} ms every {s.inspection_interval()} steps; the logit lens adds "
          f"{lens * 1e3:.1f} ms to an evaluation ({plain * 1e3:.1f} ms without it); tokens/s with inspection "
          f"against without: {inspection_ratio:.4f}")
    return benchlib.verdict([(f"eval + sample {share:.2%} of wall time at the default intervals "
                              f"(target at most {MAX_SHARE:.0%})", share <= MAX_SHARE),
                             (f"tokens/s with inspection at its default interval {inspection_ratio:.3f}x of without "
                              f"(target at least {MIN_INSPECTION_RATIO})", inspection_ratio >= MIN_INSPECTION_RATIO)],
                            result=f"{share:.1%} of wall time; inspection {inspection_ratio:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
