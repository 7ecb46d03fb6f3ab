"""Startup: from the command to the first optimizer step of nano on the CPU, and where the time goes.

    python bench/startup.py [--reps 3]

Times `python -m pipeline.train --config nano --corpus verdict --max-steps 1 --log-interval 1 --device cpu` in a
child process, from just before it is started to the moment its "step 1/1" line appears on its stdout, with the
verdict shards, their 8-gram index and the MLflow store (SQLite, in a temporary folder) already there from a
first run, as for any run after the first. Target: under 10 s (nothing is compiled: --compile is off).

Reference, in the same run: a bare child that imports torch and the model, memory-maps the same shards, builds
nano and takes one optimizer step, printing the same line: what no pipeline can avoid. The runs alternate, --reps
times each; medians are compared.

Then, once, the same command with the trainer's steps wrapped to time them (imports, MLflow connect, corpus fetch
and tokenize check, model build, run start and params, n-gram index, first step), and once on a store that does
not exist yet (the first run of a new project, creating the SQLite schema).
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

MAX_SECONDS = 10.0
COMMAND = ["-m", "pipeline.train", "--config", "nano", "--corpus", "verdict", "--max-steps", "1",
           "--log-interval", "1", "--device", "cpu"]
MARK = "step 1/"


def run_child(args: list[str], env: dict, cwd: Path) -> dict:
    """Start `python args`, note when MARK appears on its stdout; seconds from start to then and to its end."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=cwd, text=True)
    first_step = None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if first_step is None and MARK in line:
            first_step = time.perf_counter() - start
    stderr = child.stderr.read()
    child.wait()
    total = time.perf_counter() - start
    if child.returncode != 0 or first_step is None:
        raise SystemExit(f"child {' '.join(args)} failed (exit {child.returncode}):\n{''.join(lines)}{stderr}")
    return {"first_step": first_step, "total": total, "lines": lines}


# ---------------------------------------------------------------- children


def child_bare(shard_folder: str) -> None:
    """The floor: torch, the model, the shards and one step; no settings, corpus check, MLflow or logging."""
    import torch

    from model import GPT
    from model.configs import NAMED_CONFIGS
    from pipeline.data.batches import WindowSampler
    from pipeline.data.shards import load_shards

    split = load_shards(Path(shard_folder)).split("train")
    torch.manual_seed(0)
    model = GPT(NAMED_CONFIGS["nano"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = WindowSampler(split, 256).batch(0, 8)
    _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    print(f"{MARK}1  loss {loss.item():.4f}", flush=True)


def child_profile(command: list[str]) -> None:
    """The real command, its steps wrapped and timed from this process's start; the times printed as JSON."""
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

    began = now()
    import torch  # noqa: F401

    marks.append(("import torch", began, now()))
    began = now()
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient

    marks.append(("import mlflow", began, now()))
    began = now()
    from pipeline import train as entry
    from pipeline import tracking
    from pipeline.training import loop
    from pipeline.training import run as trainer

    marks.append(("import the pipeline (click, tiktoken, pandas...)", began, now()))
    wrap(tracking, "connect", "MLflow connect")
    wrap(trainer, "fetch", "corpus fetch (sha256 of the text)")
    wrap(trainer, "encoding", "tiktoken encoding load")
    wrap(trainer, "tokenize", "tokenize check (sha256, shard headers)")
    wrap(trainer.ValWindows, "build", "val windows")
    wrap(trainer, "GPT", "model build")
    wrap(trainer, "make_optimizer", "optimizer")
    if hasattr(trainer, "peak_flops"):
        wrap(trainer, "peak_flops", "peak FLOP/s (CPU matmul probe)")
    wrap(tracking, "start_run", "MLflow start run")
    wrap(tracking, "log_params_once", "MLflow params")
    wrap(MlflowClient, "log_inputs", "MLflow dataset input")
    wrap(trainer, "_git_commit", "git commit")
    wrap(trainer.NgramIndex, "load_or_build", "8-gram index load")
    wrap(loop.StepLoop, "__init__", "loop set-up")

    original_log = tracking.MetricBuffer.log

    def log(self, step, **values):
        if "train_loss" in values and not any(m[0] == "first step" for m in marks):
            loop_start = max((end for label, _, end in marks if label == "loop set-up"), default=now())
            marks.append(("first step", loop_start, now()))
        return original_log(self, step, **values)

    tracking.MetricBuffer.log = log
    sys.argv = ["pipeline.train", *command[2:]]
    try:
        from pipeline.errors import run_cli

        run_cli(entry.main)
    except SystemExit:
        pass
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


# ---------------------------------------------------------------- parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each, alternating (default 3)")
    parser.add_argument("--child", choices=("bare", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "bare":
        child_bare(args.shards)
        return 0
    if args.child == "profile":
        child_profile(COMMAND)
        return 0

    benchlib.header("startup: command to first optimizer step, nano on verdict, CPU")
    with benchlib.scratch("bench-startup-") as folder:
        env = {**benchlib.offline_environment(), "PYTHONUNBUFFERED": "1"}
        first = run_child(COMMAND, env, folder)  # downloads (copies) and tokenizes verdict, builds the 8-gram index
        print(f"   first run (copies and tokenizes verdict, builds the index, creates the store): "
              f"{first['first_step']:.2f} s to step 1, {first['total']:.2f} s in all")
        shard_folder = Path(os.environ["CORPUS_CACHE"]) / "shards" / "verdict"
        bare_args = [str(Path(__file__).resolve()), "--child", "bare", "--shards", str(shard_folder)]
        runs = {"pipeline": [], "bare": []}
        for rep in range(args.reps):
            order = ("pipeline", "bare") if rep % 2 == 0 else ("bare", "pipeline")
            for kind in order:
                runs[kind].append(run_child(COMMAND if kind == "pipeline" else bare_args, env, folder))
        profile = run_child([str(Path(__file__).resolve()), "--child", "profile"], env, folder)
        fresh_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'fresh.db'}"}
        fresh = run_child(COMMAND, fresh_env, folder)

    pipeline = benchlib.median([r["first_step"] for r in runs["pipeline"]])
    bare = benchlib.median([r["first_step"] for r in runs["bare"]])
    print(f"pipeline.train to 'step 1/1': {pipeline:.2f} s median (runs "
          f"{benchlib.spread([r['first_step'] for r in runs['pipeline']])} s; whole command "
          f"{benchlib.median([r['total'] for r in runs['pipeline']]):.2f} s with the end-of-run eval, sample, "
          f"checkpoint and diagnosis)")
    print(f"bare torch + nano + one step:  {bare:.2f} s median (runs {benchlib.spread([r['first_step'] for r in runs['bare']])} s)")
    print(f"ratio pipeline/bare: {pipeline / bare:.2f}x; the pipeline adds {pipeline - bare:.2f} s")
    print(f"on a store that does not exist yet: {fresh['first_step']:.2f} s to step 1")
    lines = [line for line in profile["lines"] if line.startswith("BREAKDOWN ")]
    if lines:
        marks = json.loads(lines[-1][len("BREAKDOWN "):])
        print(f"breakdown of one run (seconds from process start; {profile['first_step']:.2f} s to step 1 "
              "with the timers in):")
        marks.insert(0, ("interpreter start, site-packages", 0.0, min(m[1] for m in marks)))
        for label, began, ended in sorted(marks, key=lambda m: m[1]):
            print(f"   {label:50s} {ended - began:6.2f} s  ends {ended:6.2f}")
        top = max(marks, key=lambda m: m[2] - m[1])
        print(f"largest single cost: {top[0]} ({top[2] - top[1]:.2f} s)")
    return benchlib.verdict([(f"command to first step {pipeline:.2f} s (target under {MAX_SECONDS:.0f} s)",
                              pipeline < MAX_SECONDS)])


if __name__ == "__main__":
    sys.exit(main())
