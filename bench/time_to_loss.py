"""Minutes to a fixed val loss on TinyStories on this CPU: nano with today's defaults, nano with Muon, and nanoGPT.

    python bench/time_to_loss.py [--target 4.0] [--max-tokens 2000000] [--max-minutes 30] [--nanogpt PATH]
    python bench/time_to_loss.py --tiny [--nanogpt PATH]      # the same code in a minute: a 2-layer model

Each contender is a process of its own, started by this script on the same TinyStories shards (tokenized once
beforehand, so nobody pays for it) and timed from its start, imports included, to the first evaluation whose
val loss is at or below --target, read from its output as it prints it; it is then stopped. A contender that has
not got there after --max-tokens tokens or --max-minutes has no time.
- lab adamw: `python -m pipeline.train --config nano --corpus tinystories` with every default (AdamW, lr 1e-3,
  batch 8 x 256), evaluating every --eval-interval steps on its 32 fixed val windows;
- lab muon: the same with --optimizer muon (its default --muon-lr);
- nanoGPT (with --nanogpt, a checkout of karpathy/nanoGPT, not part of this project): its own train.py on the
  lab's shards (rewritten as its raw uint16 files) and nano's shape (biases on, as the lab's); its AdamW
  defaults (lr 6e-4, betas 0.9/0.95, weight decay 0.1, clipping at 1), its schedule fit to the same budget (30
  warmup steps, decay over --max-tokens to lr/10), fp32 and no compile on a CPU, evaluated as often on 4
  random batches of 8 windows (its default, 200 batches for each split, would take minutes an evaluation here).
Target: the lab (its faster optimizer) first. The README's Run 2 budget comes from the lab's time.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchlib

LAB_VAL = re.compile(r"^step (\d+)\s+val_loss ([\d.]+)")
NANOGPT_VAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
NANO = {"n_layer": 6, "n_head": 5, "n_embd": 160, "context_length": 256}
BATCH = 8


def race(command: list[str], env: dict, cwd: Path, pattern: re.Pattern, target: float,
         max_minutes: float) -> dict:
    """Run command until a line matching pattern shows a val loss at or below target; its seconds and curve."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    deadline = threading.Timer(max_minutes * 60, process.kill)
    deadline.start()
    curve, reached, tail = [], None, []
    try:
        for line in process.stdout:
            tail = (tail + [line])[-20:]
            found = pattern.match(line)
            if not found:
                continue
            seconds, value = time.perf_counter() - start, float(found.group(2))
            curve.append((int(found.group(1)), seconds, value))
            if value <= target:
                reached = seconds
                process.send_signal(signal.SIGINT)  # the lab checkpoints and ends its run KILLED
                break
        process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    finally:
        deadline.cancel()
    if reached is None and not curve:
        last_lines = "".join(tail).strip().splitlines()
        return {"error": last_lines[-1] if last_lines else "no output", "curve": curve}
    return {"seconds": reached, "curve": curve}


def lab_command(shape: dict, max_tokens: int, eval_interval: int, extra: list[str]) -> list[str]:
    model = [f"--{key.replace('_', '-')}={value}" for key, value in shape.items()]
    return [sys.executable, "-m", "pipeline.train", "--config", "nano", *model, "--corpus", "tinystories",
            "--max-tokens", str(max_tokens), "--eval-interval", str(eval_interval), "--device", "cpu", *extra]


def nanogpt_overrides(folder: Path, shape: dict, max_tokens: int, eval_interval: int) -> dict:
    iterations = max_tokens // (BATCH * shape["context_length"])
    return {"dataset": "lab_tinystories", "out_dir": str(folder / "out"), "batch_size": BATCH,
            "block_size": shape["context_length"], "n_layer": shape["n_layer"], "n_head": shape["n_head"],
            "n_embd": shape["n_embd"], "bias": True, "dropout": 0.0, "gradient_accumulation_steps": 1,
            "max_iters": iterations, "lr_decay_iters": iterations, "warmup_iters": 30, "min_lr": 6e-5,
            "eval_interval": eval_interval, "eval_iters": 4, "log_interval": eval_interval,
            "always_save_checkpoint": False, "device": "cpu", "compile": False, "dtype": "float32"}


def describe(row: dict, target: float) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    last = row["curve"][-1] if row["curve"] else None
    seen = f"; last val loss {last[2]:.3f} at step {last[0]}" if last else ""
    if row["seconds"] is None:
        return f"did not reach {target}{seen}"
    return f"{row['seconds'] / 60:.2f} min to val loss {target} (step {last[0]}, {last[2]:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=4.0, help="the val loss to reach (default 4.0)")
    parser.add_argument("--max-tokens", type=int, default=2_000_000, help="each run's budget (Run 2's: 2M)")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="each run's time limit (default 30)")
    parser.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations (default 50)")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT to race beside the lab")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model to a loose target: a check "
                                                            "of this script, not a measurement")
    args = parser.parse_args()
    shape = NANO
    if args.tiny:
        shape = benchlib.SMALL_MODEL
        args.target, args.max_tokens, args.eval_interval = max(args.target, 7.0), 60_000, 10
    nanogpt = args.nanogpt.resolve() if args.nanogpt else None  # before the scratch folder becomes the cwd

    benchlib.header(f"time to val loss {args.target} on TinyStories: {shape}, batch {BATCH}, at most "
                    f"{args.max_tokens:,} tokens or {args.max_minutes:g} min each")
    rows = {}
    with benchlib.scratch("time-to-loss-") as folder:
        env = {**benchlib.offline_environment(), "PYTHONUNBUFFERED": "1"}
        from pipeline.settings import TrainSettings

        benchlib.prepare(TrainSettings(corpus="tinystories"))
        for name, extra in (("lab adamw", []), ("lab muon", ["--optimizer", "muon"])):
            command = lab_command(shape, args.max_tokens, args.eval_interval, [*extra, "--run-name", name])
            rows[name] = race(command, env, folder, LAB_VAL, args.target, args.max_minutes)
            print(f"   {name:9}: {describe(rows[name], args.target)}", flush=True)
        if nanogpt:
            data = benchlib.nanogpt_data(folder / "nanogpt")
            command, nanogpt_env = benchlib.nanogpt_command(
                nanogpt, data, nanogpt_overrides(data, shape, args.max_tokens, args.eval_interval))
            rows["nanoGPT"] = race(command, nanogpt_env, data, NANOGPT_VAL, args.target, args.max_minutes)
            print(f"   {'nanoGPT':9}: {describe(rows['nanoGPT'], args.target)}", flush=True)

    minutes = {name: row["seconds"] / 60 for name, row in rows.items() if row.get("seconds") is not None}
    lab = min(((minutes[name], name) for name in ("lab adamw", "lab muon") if name in minutes), default=None)
    checks = [(f"the lab reached val loss {args.target}", lab is not None)]
    if nanogpt and lab is not None:
        theirs = minutes.get("nanoGPT")
        checks.append((f"the lab ({lab[1]}, {lab[0]:.2f} min) before nanoGPT ("
                       + (f"{theirs:.2f} min)" if theirs is not None else "did not get there)"),
                       theirs is None or lab[0] <= theirs))
    result = ", ".join(f"{name} {value:.1f} min" for name, value in minutes.items()) or "none reached it"
    return benchlib.verdict(checks, result=f"to val loss {args.target}: {result}")


if __name__ == "__main__":
    raise SystemExit(main())
