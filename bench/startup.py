"""The fixed cost of a run: what a one-step run of a tiny model costs beyond importing torch and MLflow, and
how fast a command answers --help or refuses bad input. Where the rest goes, phase by phase.

    python bench/startup.py [--reps 5]

In one run, alternating, --reps times each (medians compared):
- reference: `python -c "import torch, mlflow"`;
- the run: `python -m pipeline.train` of a 1-layer, width-32 model for one step on verdict, end to end (eval,
  sample, checkpoint, logged model, diagnosis), on a store and corpus cache that a first run already made;
- every command's --help and the bad inputs a learner types, each on its own.
Targets: the run at most 1.3x the reference; --help and each bad-input error at most 0.5 s. Then, once, the run
with its phases timed from inside the process (the breakdown), and the share of it that is MLflow's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchlib

RUN_RATIO = 1.3
QUICK_SECONDS = 0.5
RUN = ["-m", "pipeline.train", "--corpus", "verdict", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
       "--context-length", "16", "--max-steps", "1"]
REFERENCE = ["-c", "import torch, mlflow"]
# Costs of MLflow's that `import mlflow` does not pay and no option of its avoids: its SQLite store (sqlalchemy,
# alembic, mlflow.genai), and the check of a logged model's requirements against every installed package
MLFLOW_STORE_IMPORT = "* import MLflow's SQL store (sqlalchemy, alembic)"
MLFLOW_REQUIREMENT_CHECK = "* MLflow's model requirement check (metadata)"
QUICK = {  # label -> (arguments, exit code expected)
    **{f"{command} --help": (["-m", f"pipeline.{command}", "--help"], 0)
       for command in ("download", "tokenize", "train", "generate", "sweep", "report")},
    "train: unknown corpus": (["-m", "pipeline.train", "--corpus", "verdcit"], 2),
    "train: missing corpus file": (["-m", "pipeline.train", "--corpus", "no/such.txt"], 2),
    "train: unknown config": (["-m", "pipeline.train", "--config", "huge"], 2),
    "train: n_embd not a multiple of n_head": (["-m", "pipeline.train", "--n-embd", "33", "--n-head", "2"], 2),
    "train: negative lr": (["-m", "pipeline.train", "--lr", "-1"], 2),
    "sweep: unknown sweep": (["-m", "pipeline.sweep", "--name", "lr_sensitvity"], 2),
    "tokenize: unknown corpus": (["-m", "pipeline.tokenize", "--corpus", "verdcit"], 2),
    "generate: no model given": (["-m", "pipeline.generate", "--prompt", "Hi"], 2),
}


def seconds_of(args: list[str], env: dict, cwd: Path, expect: int = 0) -> float:
    """Wall seconds of `python args` from start to exit; raises when it exits otherwise than expected."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}, not {expect}:\n{done.stdout}{done.stderr}")
    return seconds


# ---------------------------------------------------------------- the breakdown, in a child


def child_profile() -> None:
    """The run, its phases wrapped and timed from this process's start; the times printed as JSON."""
    started = process_start_seconds()
    marks: list[tuple[str, float, float]] = []  # (what, began, ended) in seconds since the process started

    def now() -> float:
        return time.time() - started

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            began = now()
            try:
                return original(*args, **kwargs)
            finally:
                marks.append((label, began, now()))

        setattr(owner, name, timed)

    def imported(label: str, modules: str) -> None:
        began = now()
        exec(modules)
        marks.append((label, began, now()))

    imported("import torch", "import torch")
    imported("import mlflow", "import mlflow")
    imported("import the pipeline (click, tiktoken, numpy...)",
             "from pipeline.training import trainer, loop, recording; from pipeline import train")
    imported(MLFLOW_STORE_IMPORT, "import mlflow.store.tracking.sqlalchemy_store")
    import mlflow.utils.environment
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline import train as entry
    from pipeline.data.ngrams import NgramIndex
    from pipeline.training import loop, recording, trainer

    wrap(tracking, "connect", "MLflow connect (store object, schema check)")
    wrap(trainer, "prepare_corpus", "corpus fetch and tokenize check")
    wrap(trainer, "prepare_data", "windows, val windows, prompt (tiktoken load)")
    wrap(trainer, "peak_flops", "peak FLOP/s (CPU probe or its memo)")
    wrap(trainer, "GPT", "model build")
    wrap(trainer, "make_optimizer", "optimizer")
    wrap(trainer, "open_run", "MLflow run start")
    wrap(trainer, "log_run_inputs", "MLflow params and dataset (git commit)")
    wrap(tracking, "start_system_metrics", "system metrics start")
    wrap(loop.StepLoop, "train_step", "train step")
    wrap(recording.RunRecorder, "evaluate", "evaluation")
    wrap(NgramIndex, "load_or_build", "8-gram index load")
    wrap(recording, "completions", "sample generation (4 continuations)")
    wrap(recording.RunRecorder, "checkpoint", "checkpoint")
    wrap(recording.RunRecorder, "log_model", "logged model (MLflow pyfunc)")
    wrap(trainer, "close_run", "run end (diagnosis, FINISHED)")
    wrap(MlflowClient, "log_text", "sample stored")
    wrap(mlflow.utils.environment, "warn_dependency_requirement_mismatches", MLFLOW_REQUIREMENT_CHECK)
    sys.argv = ["pipeline.train", *RUN[2:]]
    try:
        from pipeline.errors import run_cli

        run_cli(entry.main)
    except SystemExit:
        pass
    marks.append(("process end", now(), now()))
    print("BREAKDOWN " + json.dumps(marks), flush=True)


def process_start_seconds() -> float:
    """This process's start as a time.time() value, from /proc (Linux); else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def print_breakdown(output: str, reference: float) -> None:
    lines = [line for line in output.splitlines() if line.startswith("BREAKDOWN ")]
    if not lines:
        print("   (no breakdown: the profiled run printed none)")
        return
    marks = json.loads(lines[-1][len("BREAKDOWN "):])
    marks.insert(0, ("interpreter start, site-packages", 0.0, min(m[1] for m in marks)))
    print("breakdown of one run (seconds from the process's start, timers in; nested phases overlap):")
    for label, began, ended in sorted(marks, key=lambda m: m[1]):
        print(f"   {label:50s} {ended - began:6.2f} s  ends {ended:6.2f}")
    mlflow_seconds = sum(ended - began for label, began, ended in marks
                         if label in (MLFLOW_STORE_IMPORT, MLFLOW_REQUIREMENT_CHECK))
    print(f"   MLflow's part the reference lacks (the two lines marked *): {mlflow_seconds:.2f} s, "
          f"{mlflow_seconds / reference:.2f}x of the reference")


# ---------------------------------------------------------------- parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="runs of each, alternating (default 5)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_profile()
        return 0

    benchlib.header("fixed cost of a run: a one-step tiny run against `import torch, mlflow`; --help; bad input")
    with benchlib.scratch("bench-startup-") as folder:
        env = {**benchlib.offline_environment(), "PYTHONUNBUFFERED": "1"}
        first = seconds_of(RUN, env, folder)  # copies and tokenizes verdict, creates the store
        print(f"   first run (copies and tokenizes verdict, creates the store): {first:.2f} s")
        kinds = {"reference": REFERENCE, "run": RUN}
        times = {kind: [] for kind in kinds}
        quick = {label: [] for label in QUICK}
        for rep in range(args.reps):
            for kind in (list(kinds) if rep % 2 == 0 else list(reversed(kinds))):
                times[kind].append(seconds_of(kinds[kind], env, folder))
            for label, (quick_args, expect) in QUICK.items():
                quick[label].append(seconds_of(quick_args, env, folder, expect))
        profiled = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"], env=env, cwd=folder,
                                  capture_output=True, text=True)

    reference, run = (benchlib.median(times[kind]) for kind in ("reference", "run"))
    print(f"reference `import torch, mlflow`: {reference:.2f} s median (runs {benchlib.spread(times['reference'])} s)")
    print(f"one-step tiny run, end to end:     {run:.2f} s median (runs {benchlib.spread(times['run'])} s)")
    print(f"ratio run/reference: {run / reference:.2f}x; the run adds {run - reference:.2f} s to the imports")
    slowest = max(quick, key=lambda label: benchlib.median(quick[label]))
    for label, values in quick.items():
        print(f"   {label:42s} {benchlib.median(values):5.2f} s")
    print_breakdown(profiled.stdout, reference)
    return benchlib.verdict([
        (f"one-step run {run / reference:.2f}x `import torch, mlflow` (target at most {RUN_RATIO}x)",
         run <= RUN_RATIO * reference),
        (f"--help and bad input: slowest {slowest} {benchlib.median(quick[slowest]):.2f} s (target at most "
         f"{QUICK_SECONDS} s)", benchlib.median(quick[slowest]) <= QUICK_SECONDS),
    ], result=f"{run / reference:.2f}x; slowest {benchlib.median(quick[slowest]):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
