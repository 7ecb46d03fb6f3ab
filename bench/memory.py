"""Training memory: peak RSS must not grow with the corpus, nor RSS with the length of the run.

    python bench/memory.py [--small-mb 1] [--large-mb 50] [--steps 200]

Builds two corpora by repeating TinyStories' train-sample.txt from $CORPUS_MIRROR (as bench/tokenize_throughput.py
does), of --small-mb and --large-mb MB, and tokenizes each and builds its 8-gram index in a child process of its
own (their peak RSS is printed, for information: that is the tokenize step's and the first run's extra).
Then trains on each, in a child process of its own: `python -m pipeline.train` with a small model
(2 layers, 64 wide, context 64, batch 8), --steps steps, eval, sample and checkpoint every 25 steps so every
periodic action has run by step 50, MLflow SQLite store in a temporary folder. The parent reads each child's
peak RSS from os.wait4; the child also records its current RSS (VmRSS) and peak RSS at every logged step.

Targets: the large corpus's training peak RSS within 10% of the small one's (the reference); and in each run,
RSS after --steps steps within 5% of RSS after 50 steps (both the current RSS and the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import benchlib

MAX_CORPUS_GROWTH = 0.10
MAX_LENGTH_GROWTH = 0.05
EARLY_STEP = 50
SAMPLE = Path("tinystories") / "train-sample.txt"


def build_corpus(folder: Path, size_mb: float) -> Path:
    """The sample repeated (or cut) to size_mb MB, ending at a line end."""
    sample = (Path(os.environ["CORPUS_MIRROR"]) / SAMPLE).read_bytes()
    wanted = int(size_mb * 1_000_000)
    text = sample * (wanted // len(sample) + 1)
    path = folder / f"corpus-{size_mb:g}mb.txt"
    path.write_bytes(text[: text.rfind(b"\n", 0, wanted) + 1])
    return path


def train_command(corpus: Path, steps: int) -> list[str]:
    model = [f"--{k.replace('_', '-')}={v}" for k, v in benchlib.SMALL_MODEL.items()]
    return ["--corpus", str(corpus), "--config", "nano", *model, "--batch-size", "8", "--max-steps", str(steps),
            "--log-interval", "10", "--eval-interval", "25", "--sample-interval", "25", "--checkpoint-interval",
            "25", "--device", "cpu"]


# ---------------------------------------------------------------- children


def child_prepare(corpus: str) -> dict:
    from pipeline.data.corpora import fetch
    from pipeline.data.ngrams import NgramIndex
    from pipeline.data.sharding import shard_corpus

    shards = shard_corpus(fetch(corpus).corpus).shards
    index = NgramIndex.load_or_build(shards)
    return {"train_tokens": shards.train_tokens, "val_tokens": shards.val_tokens, "ngrams": len(index)}


def child_train(args: list[str]) -> dict:
    """pipeline.train's CLI, with RSS recorded at each logged step."""
    from pipeline import tracking
    from pipeline import train as entry
    from pipeline.errors import run_cli

    rss: dict[int, tuple[float, float, float, float]] = {}  # step: (current RSS, peak RSS, anon, file) in MB
    original = tracking.MetricBuffer.log

    def log(self, step, **values):
        if "train_loss" in values:
            parts = rss_parts_mb()
            rss[step] = (parts.get("VmRSS", float("nan")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         parts.get("RssAnon", float("nan")), parts.get("RssFile", float("nan")))
        return original(self, step, **values)

    tracking.MetricBuffer.log = log
    sys.argv = ["pipeline.train", *args]
    code = 0
    try:
        run_cli(entry.main)
    except SystemExit as done:
        code = done.code or 0
    if code:
        raise SystemExit(code)
    return {"rss": rss}


def current_rss_mb() -> float:
    return rss_parts_mb().get("VmRSS", float("nan"))


def rss_parts_mb() -> dict[str, float]:
    """VmRSS and its parts (RssAnon: heap and tensors; RssFile: mapped files, the shards and libraries), in MB."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:"))}


def run_child(args: list[str], env: dict, cwd: Path) -> tuple[dict, float]:
    """Run this script as a child; its JSON result (last line starting with '{') and its peak RSS in MB."""
    output, code, peak = benchlib.run_measured([sys.executable, str(Path(__file__).resolve()), *args], env, cwd)
    if code != 0:
        raise SystemExit(f"child {' '.join(args)} failed (exit {code}):\n{output[-4000:]}")
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    return result, peak / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=float, default=1.0, help="the reference corpus, in MB (default 1)")
    parser.add_argument("--large-mb", type=float, default=50.0, help="the large corpus, in MB (default 50)")
    parser.add_argument("--steps", type=int, default=200, help="steps per training run (default 200)")
    parser.add_argument("--child", choices=("prepare", "train"), help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        benchlib.offline_environment()
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        result = child_prepare(rest[0]) if args.child == "prepare" else child_train(rest)
        print(json.dumps(result), flush=True)
        return 0
    if args.steps <= EARLY_STEP:
        parser.error(f"--steps must be over {EARLY_STEP}")

    benchlib.header("memory: training RSS against corpus size and run length")
    results = {}
    with benchlib.scratch("bench-memory-") as folder:
        env = benchlib.offline_environment()
        for label, size in (("small", args.small_mb), ("large", args.large_mb)):
            corpus = build_corpus(folder, size)
            prep, prep_peak = run_child(["--child", "prepare", "--", str(corpus)], env, folder)
            print(f"   {label} corpus {corpus.stat().st_size / 1e6:.1f} MB: {prep['train_tokens']:,} train tokens, "
                  f"{prep['ngrams']:,} distinct 8-grams; tokenize + index peak RSS {prep_peak:.0f} MB")
            results[label] = {"corpus": corpus, "size": corpus.stat().st_size / 1e6}
        for label in ("small", "large"):
            run, peak = run_child(["--child", "train", "--", *train_command(results[label]["corpus"], args.steps)],
                                  env, folder)
            rss = {int(k): v for k, v in run["rss"].items()}
            results[label].update(peak=peak, rss=rss)
            early, late = rss[EARLY_STEP], rss[args.steps]
            print(f"   {label} corpus training: peak RSS {peak:.0f} MB (whole process); at step {EARLY_STEP} RSS "
                  f"{early[0]:.0f} MB (anon {early[2]:.0f} + file {early[3]:.0f}; peak {early[1]:.0f}), at step "
                  f"{args.steps} RSS {late[0]:.0f} MB (anon {late[2]:.0f} + file {late[3]:.0f}; peak {late[1]:.0f})")

    small, large = results["small"], results["large"]
    corpus_ratio = large["peak"] / small["peak"]
    print(f"ratio peak RSS {large['size']:.0f} MB corpus / {small['size']:.0f} MB corpus: {corpus_ratio:.3f}x "
          f"(target <= {1 + MAX_CORPUS_GROWTH:.2f}x)")
    checks = [(f"training peak RSS {100 * (corpus_ratio - 1):+.1f}% from a {small['size']:.0f} MB to a "
               f"{large['size']:.0f} MB corpus (target within {MAX_CORPUS_GROWTH:.0%})",
               corpus_ratio <= 1 + MAX_CORPUS_GROWTH)]
    for label in ("small", "large"):
        rss = results[label]["rss"]
        current = rss[args.steps][0] / rss[EARLY_STEP][0]
        peak = rss[args.steps][1] / rss[EARLY_STEP][1]
        print(f"ratio RSS step {args.steps} / step {EARLY_STEP}, {label} corpus: current {current:.3f}x, "
              f"peak {peak:.3f}x (target <= {1 + MAX_LENGTH_GROWTH:.2f}x)")
        checks.append((f"{label} corpus: RSS {100 * (current - 1):+.1f}% (peak {100 * (peak - 1):+.1f}%) from step "
                       f"{EARLY_STEP} to {args.steps} (target within {MAX_LENGTH_GROWTH:.0%})",
                       max(current, peak) <= 1 + MAX_LENGTH_GROWTH))
    length = max(results[label]["rss"][args.steps][i] / results[label]["rss"][EARLY_STEP][i]
                 for label in ("small", "large") for i in (0, 1))
    return benchlib.verdict(checks, result=f"{corpus_ratio:.3f}x; {length:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
