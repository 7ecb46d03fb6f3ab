"""Every benchmark, one after the other, each in a process of its own; a table of verdicts at the end.

    python bench/run_all.py [--only NAME ...] [--skip NAME ...]

Each benchmark prints its own figures and its ratio against a reference measured in the same run, and exits 1
when it misses its target; this exits 1 when any did. The tokenize benchmark runs on a 50 MB corpus here
(200 MB when run alone). They run one at a time: the timings would disturb each other. The store benchmark
builds its store of 1,000 runs once (~8 min) and keeps it in the temporary folder for the next time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

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
]


def main() -> int:
    names = [name for name, _, _ in SUITE]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"run only these ({', '.join(names)})")
    parser.add_argument("--skip", nargs="+", choices=names, metavar="NAME", default=[], help="leave these out")
    args = parser.parse_args()

    rows = []
    for name, command, target in SUITE:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        print(f"\n######## {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(BENCH_DIR / command[0]), *command[1:]], cwd=BENCH_DIR.parent).returncode
        rows.append((name, code, time.perf_counter() - start, target))

    print("\n######## summary")
    for name, code, seconds, target in rows:
        verdict = "PASS  " if code == 0 else f"MISSED (exit {code})"
        print(f"{verdict:16s} {name:20s} {seconds:7.0f} s  {target}")
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
