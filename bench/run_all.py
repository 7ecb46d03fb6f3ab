"""Every benchmark, one after the other, each in a process of its own; a table of verdicts at the end.

    python bench/run_all.py [--only NAME ...] [--skip NAME ...] [--write-table [PATH]]

Each benchmark prints its own figures and its ratio against a reference measured in the same run, ends with a line
`result: <short value>`, and exits 1 when it misses its target; this exits 1 when any did. `--write-table`
rewrites, in docs/benchmarks.md (or PATH), the row of each benchmark that printed its result: the value, today's
date and this machine; the other rows stay as they are. The tokenize benchmark runs on a 50 MB corpus here
(200 MB when run alone). They run one at a time: the timings would disturb each other. The store benchmark
builds its store of 1,000 runs once (~8 min) and keeps it in the temporary folder for the next time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TABLE = BENCH_DIR.parent / "docs" / "benchmarks.md"
RESULT_PREFIX = "result: "

# (name, script and arguments, what it checks)
SUITE = [
    ("tracking_overhead", ["tracking_overhead.py"], "train() logging every step at most 3% slower than a bare loop"),
    ("freed_memory", ["freed_memory.py"], "nano steps with freed memory kept at least 1.2x glibc's defaults, peak "
                                          "RSS at most 1.25x"),
    ("data_throughput", ["data_throughput.py"], "WindowSampler at least 20x faster than nano's training steps"),
    ("eval_share", ["eval_share.py"], "eval + sample at most 10% of a nano run's wall time"),
    ("optimizer_step", ["optimizer_step.py"], "the lab's AdamW step at most 1.05x torch.optim.AdamW's, same weights"),
    ("startup", ["startup.py"], "a one-step tiny run at most 1.3x `import torch, mlflow`; --help and bad input 0.5 s"),
    ("memory", ["memory.py"], "training RSS flat in corpus size (10%) and run length (5%)"),
    ("compile", ["compile.py"], "torch.compile works and matches eager (speed reported)"),
    ("tokenize_throughput", ["tokenize_throughput.py", "--size-mb", "50"], "tokenize at least 0.9x bare tiktoken"),
    ("store_scale", ["store_scale.py"], "1,000 runs: run list and curves under 1 s and 2x a bare search, a "
                                        "100-run report under 30 s, dashboard RSS flat over 10 min of polling"),
    ("lr_search", ["lr_search.py"], "bayes lr_search: best lr within 2x of a grid's, fewer tokens than the grid"),
    ("logits_memory", ["logits_memory.py"], "nano's peak RSS at least 35% lower with the chunked loss, tokens/s at "
                                            "least 0.98x, equal losses"),
    ("tokenizer_speed", ["tokenizer_speed.py"], "bpe:4096 reaches GPT-2's val_bpb after 10 min in at most a "
                                                "third of the time, same model"),
]


def run_benchmark(command: list[str], cwd: Path) -> tuple[int, str | None]:
    """Run one benchmark, its output passed through line by line; its exit code and the value of its last
    `result: ` line (None when it printed none)."""
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1)
    result = None
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(RESULT_PREFIX):
            result = line[len(RESULT_PREFIX):].strip()
    return child.wait(), result


def machine() -> str:
    """This machine as the table names it: the CPU's model and cores, and the GPUs nvidia-smi lists."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        gpus = []
    gpus = sorted({g.strip() for g in gpus if g.strip()})
    return f"{model}, {cores} cores" + "".join(f", {gpu}" for gpu in gpus)


def cell(text: str) -> str:
    return text.replace("|", "/").strip()


def write_table(path: Path, results: dict[str, str], date: str, where: str) -> list[str]:
    """Rewrite the rows of path whose first cell starts with `name` (in backticks) for each name in results: their
    value, date and machine columns (2, 4 and 5); the names that have no row there."""
    lines = path.read_text().split("\n")
    missing = set(results)
    for i, line in enumerate(lines):
        cells = line.split("|")
        if len(cells) != 7 or cells[0].strip() or cells[-1].strip():
            continue  # | benchmark | value | target | date | machine |, and nothing else
        name = cells[1].strip().split("`")[1] if cells[1].strip().startswith("`") else None
        if name in results:
            cells[2], cells[4], cells[5] = f" {cell(results[name])} ", f" {date} ", f" {cell(where)} "
            lines[i] = "|".join(cells)
            missing.discard(name)
    path.write_text("\n".join(lines))
    return sorted(missing)


def main() -> int:
    names = [name for name, _, _ in SUITE]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"run only these ({', '.join(names)})")
    parser.add_argument("--skip", nargs="+", choices=names, metavar="NAME", default=[], help="leave these out")
    parser.add_argument("--write-table", nargs="?", const=TABLE, type=Path, metavar="PATH",
                        help="after running, rewrite their rows (value, date, machine) in PATH "
                             f"(default {TABLE.relative_to(BENCH_DIR.parent)})")
    args = parser.parse_args()

    rows = []
    for name, command, target in SUITE:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        print(f"\n######## {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code, result = run_benchmark([sys.executable, str(BENCH_DIR / command[0]), *command[1:]], BENCH_DIR.parent)
        rows.append((name, code, time.perf_counter() - start, target, result))

    print("\n######## summary")
    for name, code, seconds, target, result in rows:
        verdict = "PASS  " if code == 0 else f"MISSED (exit {code})"
        print(f"{verdict:16s} {name:20s} {seconds:7.0f} s  {result or 'no result line'}  (target: {target})")
    if args.write_table:
        results = {name: result for name, _, _, _, result in rows if result}
        missing = write_table(args.write_table, results, datetime.date.today().isoformat(), machine())
        print(f"rewrote {len(results) - len(missing)} row(s) of {args.write_table}"
              + (f"; no row for {', '.join(missing)}" if missing else ""))
        if missing:
            return 1
    return 0 if all(code == 0 for _, code, _, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
