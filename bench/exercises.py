"""The eight exercises at CPU scale, end to end on a fresh store, each checked for the lesson it exists to teach.

    python bench/exercises.py [--only memorization lr_sensitivity context_length scaling tokenizers finetune
                              induction optimizers] [--keep DIR]

Not a test (each exercise trains for minutes): it runs `pipeline.sweep`'s library on NAME_cpu from
experiments.yaml, prints the wall time, the findings the report wrote and a PASS/MISSED line per lesson, and
exits 1 when any lesson did not show. --keep leaves the store and the reports in DIR to look at.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from benchlib import offline_environment, quiet_logging, scratch

# exercise -> the lessons its findings must show, each (what it says, check on the findings' facts)
LESSONS = {
    "memorization": [
        ("verdict memorised: train loss under 0.5", lambda f: f["verdict.train_loss"] < 0.5),
        ("verdict samples recite the story: novelty under 0.2",
         lambda f: f["verdict.novelty"] is not None and f["verdict.novelty"] < 0.2),
        ("tinystories generalises: val loss within 0.5 of train loss", lambda f: abs(f["tinystories.gap"]) < 0.5),
        ("tinystories samples are new: novelty over 0.5",
         lambda f: f["tinystories.novelty"] is not None and f["tinystories.novelty"] > 0.5),
    ],
    "lr_sensitivity": [
        ("at least four rates over 1.5 decades",
         lambda f: len(f["rates"]) >= 4 and math.log10(max(f["rates"]) / min(f["rates"])) >= 1.5),
        ("one rate is unstable or diverges", lambda f: f["unstable_from"] is not None),
        ("one stable rate is clearly best", lambda f: f.get("best_margin") is not None and f["best_margin"] >= 0.05),
    ],
    "context_length": [
        ("three contexts, each with a val loss", lambda f: len(f["context_val_loss"]) >= 3),
        ("read by position, the longest context's loss keeps falling past the shortest context's end, by more "
         "than twice its noise", lambda f: f["context_beyond_gain"] > 2 * f["context_beyond_error"]),
    ],
    "scaling": [
        ("four sizes or more over a decade of parameters", lambda f: f["sizes"] >= 4 and f["size_span"] >= 10),
        ("loss falls with size as a power law, plain or toward the budget's floor (alpha > 0, R² >= 0.9)",
         lambda f: f["alpha"] > 0 and max(f["r_squared"], f.get("floor_r_squared", 0)) >= 0.9),
    ],
    "tokenizers": [
        ("three tokenizers compared at the same wall time", lambda f: len(f.get("bpb_at_common", {})) == 3),
        ("the small BPE learned the most per second", lambda f: f.get("most_per_second", "").startswith("bpe:")),
    ],
    "finetune": [
        ("the fine-tuned run starts lower than the one from scratch", lambda f: f["finetune.start_gain"] > 0),
        ("and ends lower, at the same budget", lambda f: f["finetune.end_gain"] > 0),
        ("it forgot some TinyStories: its val loss there rose", lambda f: f["finetune.forgot"] > 0),
    ],
    "induction": [
        ("an induction head formed in the deeper run", lambda f: list(f["induction_formed"].values())[-1]),
        ("none in the one-layer run", lambda f: not list(f["induction_formed"].values())[0]),
    ],
    "optimizers": [
        ("AdamW and Muon each reached the common val loss",
         lambda f: all(f["tokens_to_target"][name] is not None for name in ("adamw", "muon"))),
        ("neither best rate at the edge of the rates tried",
         lambda f: all(min(f["rates_tried"][name]) < f["best_rate"][name] < max(f["rates_tried"][name])
                       for name in ("adamw", "muon"))),
        ("one optimizer got there first in tokens", lambda f: f["first_in_tokens"] is not None),
    ],
}


def run_exercise(name: str, keep: Path | None) -> tuple[float, list[tuple[str, bool]], str]:
    """Train the exercise's CPU sweep on a fresh store; (wall seconds, lessons with verdicts, findings text)."""
    from pipeline import tracking
    from pipeline.sweeps.runner import run_sweep
    from pipeline.sweeps.spec import load_sweep

    sweep = load_sweep(name, scale="cpu")
    start = time.perf_counter()
    result = run_sweep(tracking.connect(), sweep)
    seconds = time.perf_counter() - start
    if result.findings is None:
        return seconds, [(f"the sweep wrote a report ({result.status})", False)], ""
    verdicts = []
    for lesson, check in LESSONS[name]:
        try:
            verdicts.append((lesson, bool(check(result.findings.facts))))
        except (KeyError, TypeError):  # the number the lesson rests on was not measured
            verdicts.append((lesson, False))
    if keep:
        print(f"reports: {', '.join(str(Path.cwd() / f) for f in result.report_files if f.suffix == '.md')}")
    return seconds, verdicts, result.findings.text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(LESSONS), metavar="NAME", default=list(LESSONS))
    parser.add_argument("--keep", type=Path, help="a folder to keep the store, corpus cache and reports in")
    args = parser.parse_args()
    offline_environment()
    quiet_logging()

    rows = []
    for name in args.only:
        print(f"\n######## {name} ({name}_cpu)", flush=True)
        if args.keep:
            folder = (args.keep / name).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            os.chdir(folder)
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
            seconds, verdicts, text = run_exercise(name, args.keep)
        else:
            with scratch(f"exercise-{name}-"):
                seconds, verdicts, text = run_exercise(name, None)
        print(f"wall time: {seconds / 60:.1f} min\nfindings:\n{text}")
        for lesson, held in verdicts:
            print(f"  {'PASS  ' if held else 'MISSED'} {lesson}")
        rows.append((name, seconds, all(held for _, held in verdicts)))

    print("\n######## summary")
    for name, seconds, held in rows:
        print(f"{'PASS  ' if held else 'MISSED'} {name:16s} {seconds / 60:5.1f} min")
    return 0 if all(held for _, _, held in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
