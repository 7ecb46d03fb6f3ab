"""Runs that started from other weights (--init-from) beside runs trained from scratch on the same corpus, read in
sentences: how much lower the fine-tuned run starts and ends, and how much of the text it came from it forgot
(its val loss on another corpus, --eval-corpus, against its source run's own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pipeline.analysis.curves import RunCurves

INIT_FROM_TAG = "lab.init_from"


@dataclass(frozen=True)
class Pair:
    """A fine-tuned run, the run on its corpus from scratch (if any), and the run its weights came from (if among
    the runs)."""

    tuned: RunCurves
    scratch: RunCurves | None
    source: RunCurves | None


def pairs(runs: Sequence[RunCurves]) -> list[Pair]:
    by_id = {run.run_id: run for run in runs}
    found = []
    for tuned in (run for run in runs if run.tags.get(INIT_FROM_TAG)):
        scratch = next((run for run in runs if not run.tags.get(INIT_FROM_TAG) and run.val
                        and run.value("corpus") == tuned.value("corpus")), None)
        found.append(Pair(tuned, scratch, by_id.get(tuned.tags.get(f"{INIT_FROM_TAG}_run", ""))))
    return found


def reading(runs: Sequence[RunCurves]) -> tuple[list[str], dict]:
    lines, facts = [], {}
    for pair in pairs(runs):
        tuned, scratch = pair.tuned, pair.scratch
        origin = pair.source.name if pair.source else tuned.tags[INIT_FROM_TAG]
        if scratch is None or not tuned.val or not scratch.val:
            lines.append(f"{tuned.name} was fine-tuned from {origin}, but no run trained on "
                         f"{tuned.value('corpus')} from scratch with evaluations to compare it with.")
            continue
        (step, tuned_first), (_, scratch_first) = tuned.val[0], scratch.val[0]
        start_gain, end_gain = scratch_first - tuned_first, scratch.final_val - tuned.final_val
        lines.append(f"Fine-tuned from {origin}, {tuned.name} starts at val loss {tuned_first:.3f} at step {step}, "
                     f"{start_gain:.3f} below the run from scratch ({scratch.name}: {scratch_first:.3f}), and ends "
                     f"at {tuned.final_val:.3f} against {scratch.final_val:.3f}: "
                     + (f"{end_gain:.3f} lower." if end_gain > 0 else f"{-end_gain:.3f} higher."))
        if end_gain <= 0:
            lines.append("The head start did not last to the end of the budget: fine-tune at a lower lr than training "
                         "from scratch (a high rate overwrites what pretraining learned), or for fewer steps.")
        facts.update({"finetune.start_gain": start_gain, "finetune.end_gain": end_gain})
        for name, curve in tuned.other_val.items():
            lines.append(_forgetting(pair, name, curve))
            facts["finetune.forgot"] = curve[-1][1] - _before(pair, name, curve)[0]
    return lines, facts


def _before(pair: Pair, name: str, curve) -> tuple[float, str]:
    """The val loss on corpus name before fine-tuning: its source run's last when that run trained on it, else the
    fine-tuned run's first evaluation."""
    source = pair.source
    if source is not None and source.value("corpus") == name and source.final_val is not None:
        return source.final_val, f"{source.name}'s last"
    return curve[0][1], f"at step {curve[0][0]}"


def _forgetting(pair: Pair, name: str, curve) -> str:
    before, when = _before(pair, name, curve)
    after = curve[-1][1]
    line = (f"What {pair.tuned.name} forgot of {name}: its {name} val loss went from {before:.3f} ({when}) to "
            f"{after:.3f} ({after - before:+.3f})")
    other = pair.scratch.other_val.get(name) if pair.scratch else None
    return line + (f"; {pair.scratch.name}, never trained on it, ends at {other[-1][1]:.3f}." if other else ".")
