"""Training throughput of nano, small and medium as a learner runs them, eager and compiled, and nanoGPT beside them.

    python bench/gpu_throughput.py [--steps 50] [--shapes nano:64,small:32,medium:16] [--modes eager,compiled]
                                   [--nanogpt PATH_TO_NANOGPT] [--device cuda] [--json results.json]

Each row is one real `python -m pipeline.train` run on TinyStories (full MLflow tracking into a throw-away
store), read back from MLflow: the median of the logged `tokens_per_sec` and `mfu` after the first log step
(which includes compiling and warm-up) and the peak allocated GPU memory. With --nanogpt, nanoGPT's own
`train.py` (a checkout of karpathy/nanoGPT, not part of this project) trains the same model (GPT-2's biases
included, which nanoGPT leaves out by default) on the same tokens (the lab's shards rewritten as its raw uint16
files), compiled and in bf16 as it defaults to on a GPU; its tokens/s is the median over its iterations from the
fifth (it prints one line per iteration, each timed after reading the previous loss back, so each is one whole
iteration), and its MFU is computed here with the lab's FLOPs per token and peak, so both columns count the same
work.

Meant for a GPU (the README's and guide's GPU tables come from it); `--device cpu --steps 12 --shapes nano:1
--modes eager` is a quick smoke run of the same code (at least 10 steps: the first of the logged steps, every 5th,
is dropped as warm-up). The targets it checks: the lab's compiled throughput at least nanoGPT's
(within 5%, run-to-run noise) for every shape both ran, and medium compiled at 40% MFU or more.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import benchlib

NANOGPT_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
RUN_TIMEOUT = 900


def lab_run(size: str, batch: int, compiled: bool, steps: int, device: str, env: dict, cwd: Path) -> dict:
    """One training run of the lab; what it logged."""
    from mlflow.tracking import MlflowClient

    name = f"{size}-b{batch}-{'compiled' if compiled else 'eager'}"
    command = [sys.executable, "-m", "pipeline.train", "--config", size, "--corpus", "tinystories",
               "--batch-size", str(batch), "--max-steps", str(steps), "--warmup-steps", "5",
               "--compile", str(compiled).lower(), "--device", device, "--log-interval", "5",
               "--eval-interval", "0", "--sample-interval", "0", "--checkpoint-interval", "0", "--run-name", name]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id],
                             f"attributes.run_name = '{name}'")[0]

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    memory = history("peak_gpu_mem_mb")
    return {"tokens_per_sec": statistics.median(history("tokens_per_sec")[1:]),
            "mfu": statistics.median(history("mfu")[1:]),
            "peak_gpu_mem_gb": max(memory) / 1024 if memory else None,
            "final_train_loss": history("train_loss")[-1]}


def nanogpt_run(nanogpt: Path, data_folder: Path, size: str, batch: int, steps: int, device: str) -> dict:
    """nanoGPT's train.py on the lab's shape and tokens; its tokens/s from the iterations it printed."""
    from model import NAMED_CONFIGS

    config = NAMED_CONFIGS[size]
    on_gpu = device.startswith("cuda")
    overrides = {"dataset": "lab_tinystories", "out_dir": str(data_folder / "out"), "batch_size": batch,
                 "block_size": config.context_length, "n_layer": config.n_layer, "n_head": config.n_head,
                 "n_embd": config.n_embd, "bias": config.bias,  # nanoGPT's default drops GPT-2's biases
                 "dropout": 0.0, "gradient_accumulation_steps": 1, "max_iters": steps,
                 "lr_decay_iters": steps, "warmup_iters": 5, "eval_interval": 10 * steps, "eval_iters": 1,
                 "log_interval": 1, "always_save_checkpoint": False, "device": device, "compile": on_gpu,
                 "dtype": "bfloat16" if on_gpu else "float32"}
    command, env = benchlib.nanogpt_command(nanogpt, data_folder, overrides)
    result = subprocess.run(command, env=env, cwd=data_folder, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    iterations = [(int(m.group(1)), float(m.group(2))) for m in map(NANOGPT_LINE.match, result.stdout.splitlines())
                  if m]
    if result.returncode != 0 or len(iterations) < 6:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    tokens_per_iter = batch * config.context_length
    # it reads the loss back (a sync) every iteration it logs, so each printed time is one whole iteration
    return {"tokens_per_sec": statistics.median(tokens_per_iter / (ms / 1000) for i, ms in iterations if i >= 5)}


def with_mfu(row: dict, size: str, device: str) -> dict:
    import torch

    from model import NAMED_CONFIGS
    from pipeline.training.flops import flops_per_token, mfu, peak_flops

    config = NAMED_CONFIGS[size]
    peak, _ = peak_flops(torch.device(device))
    row["mfu"] = mfu(row["tokens_per_sec"], flops_per_token(config, config.context_length), peak)
    return row


def describe(row: dict) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    memory = f", peak {row['peak_gpu_mem_gb']:.1f} GB" if row.get("peak_gpu_mem_gb") else ""
    return f"{row['tokens_per_sec']:,.0f} tokens/s, MFU {row['mfu']:.1%}{memory}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shapes", default="nano:64,small:32,medium:16", help="SIZE:BATCH,... (context: the size's)")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT to run beside the lab")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, help="also write every row here (rewritten after each run)")
    args = parser.parse_args()
    shapes = [(size, int(batch)) for size, batch in (item.split(":") for item in args.shapes.split(","))]
    modes = [mode for mode in args.modes.split(",") if mode]  # none: nanoGPT alone
    nanogpt = args.nanogpt.resolve() if args.nanogpt else None  # before the scratch folder becomes the cwd

    benchlib.header(f"training throughput, {args.steps} steps on TinyStories, as `python -m pipeline.train` runs")
    rows, checks = [], []

    def record(who: str, size: str, batch: int, mode: str, row: dict) -> dict:
        rows.append({"who": who, "size": size, "batch": batch, "mode": mode, **row})
        print(f"{who:7} {size:6} {batch:3} x {mode:8}: {describe(row)}", flush=True)
        if args.json:  # after every run, so a run cut short by a time limit keeps the rows before it
            args.json.write_text(json.dumps(rows, indent=1))
        return row

    with benchlib.scratch("bench-gpu-") as folder:
        env = {**benchlib.offline_environment(), "PYTHONUNBUFFERED": "1"}
        nanogpt_folder = benchlib.nanogpt_data(folder / "nanogpt") if nanogpt else None
        for size, batch in shapes:
            lab = {mode: record("lab", size, batch, mode, lab_run(size, batch, mode == "compiled", args.steps,
                                                                   args.device, env, folder)) for mode in modes}
            if nanogpt_folder:
                mode = "compiled" if args.device.startswith("cuda") else "eager"
                row = nanogpt_run(nanogpt, nanogpt_folder, size, batch, args.steps, args.device)
                row = record("nanoGPT", size, batch, mode, row if "error" in row else with_mfu(row, size, args.device))
                ours = lab.get(mode, {})
                if "error" not in row and "error" not in ours and ours:
                    ratio = ours["tokens_per_sec"] / row["tokens_per_sec"]
                    checks.append((f"{size} x {batch} {mode}: the lab at {ratio:.2f}x nanoGPT's tokens/s "
                                   "(target at least 0.95x)", ratio >= 0.95))
    checks += [(f"medium x {r['batch']} compiled at {r['mfu']:.1%} MFU (target at least 40% on an H100-class GPU)",
                r["mfu"] >= 0.40) for r in rows
               if r["who"] == "lab" and r["size"] == "medium" and r["mode"] == "compiled" and "error" not in r]
    checks += [(f"{r['who']} {r['size']} x {r['batch']} {r['mode']} ran", False) for r in rows if "error" in r]
    return benchlib.verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
