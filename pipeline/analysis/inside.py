"""What a set of runs shows from inside, read from what training logged (pipeline/interpret/): the val loss at
each position of the context, newest evaluation, and, where runs scored their heads, the best induction score
and in_context_gain over training with the span where an induction head formed, and its attention before and
after."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mlflow.tracking import MlflowClient

from pipeline.analysis import plots
from pipeline.analysis.curves import RunCurves, count_text, number
from pipeline.interpret.heads import FORMED, HeadScores, Reading, phase_change
from pipeline.interpret.positions import PositionCurve

POSITIONS_DIR = "val_loss_by_position"
HEADS_DIR = "heads"
_STEP_FILE = re.compile(r"step_(\d+)\.json$")
_IMAGE = re.compile(r"attention~layer_(\d+)\+step\+(\d+)\+")


@dataclass(frozen=True)
class Inside:
    files: tuple[Path, ...]  # plots and pictures written to the report folder
    lines: tuple[str, ...]  # findings, one sentence each
    facts: dict  # the numbers behind them, by name (bench/exercises.py checks the lessons on them)


def read_inside(client: MlflowClient, runs: Sequence[RunCurves], swept: Sequence[str], out_dir: Path) -> Inside:
    """Plots and findings from the runs' loss by position and head scores; nothing for runs that logged neither."""
    files, lines, facts = [], [], {}
    curves = {run.run_id: curve for run in runs if (curve := newest_position_curve(client, run.run_id))}
    if curves:
        plots.loss_by_position(runs, curves, swept, out_dir / "loss_by_position.png")
        files.append(out_dir / "loss_by_position.png")
        if "context_length" in swept:
            lines += context_by_position(runs, curves, facts)
    readings = {run.run_id: found for run in runs if (found := head_readings(client, run))}
    # every run scores its heads with its samples; only a sweep that asked (inspect_interval) or saw a head form
    # hears about induction heads: elsewhere "none formed" is true of every small run and says nothing
    asked = any(run.params.get("inspect_interval") not in (None, "-1") for run in runs)
    if readings and (asked or any(phase_change(found) for found in readings.values())):
        plots.inside_over_training(runs, readings, swept, out_dir / "induction_over_training.png")
        files.append(out_dir / "induction_over_training.png")
        facts["induction_formed"] = {}
        for run in runs:
            if run.run_id in readings:
                line, pictures = _induction(client, run, readings[run.run_id], swept, out_dir)
                lines.append(line)
                files += pictures
                facts["induction_formed"][run.label(swept)] = phase_change(readings[run.run_id]) is not None
    return Inside(tuple(files), tuple(lines), facts)


def context_by_position(runs: Sequence[RunCurves], curves: dict[str, PositionCurve], facts: dict) -> list[str]:
    """Whether the longest context predicts its later tokens better than the shortest can at its own end, whether
    the mean loss hides it (the longer context's early positions pull its mean up), and how much the longest
    context's loss falls past the shortest's end."""
    by_length = sorted((int(length), curves[run.run_id]) for run in runs if run.run_id in curves
                       and (length := number(run.value("context_length"))) is not None)
    if len(by_length) < 2:
        return []
    (short, short_curve), (long, long_curve) = by_length[0], by_length[-1]
    ends = ", ".join(f"{length} -> {curve.last_eighth:.3f}" for length, curve in by_length)
    gain = short_curve.last_eighth - long_curve.last_eighth
    facts["context_late_gain"] = gain
    facts["context_last_eighth"] = {length: curve.last_eighth for length, curve in by_length}
    shared = PositionCurve(long_curve.losses[:short])
    verdict = (f"the longest context predicts its last tokens {gain:.3f} better than the shortest can at its own "
               "end: reading more of the text before a token helps" if gain > 0 else
               f"the longest context predicts its last tokens {-gain:.3f} worse than the shortest at its own end: "
               "at this budget it has not learned to use the extra context; raise max_tokens")
    # within the longest context, what its tokens past the shortest's end buy: a comparison of one model with
    # itself, which holds however far behind the shortest it is overall (less trained per window at equal tokens)
    before_end = long_curve.band(short // 2, short)
    beyond = before_end - long_curve.last_eighth
    error = math.hypot(long_curve.band_error(short // 2, short),
                       long_curve.band_error(long_curve.last_eighth_start, len(long_curve.losses)))
    facts["context_beyond_gain"], facts["context_beyond_error"] = beyond, error
    past = (f"Past position {short}, where the shortest context ends, the {long}-token context's loss keeps falling: "
            f"{before_end:.3f} over positions {short // 2}-{short - 1}, {long_curve.last_eighth:.3f} over its last "
            f"eighth, {beyond:.3f} ± {error:.3f} lower: what reading more of the text buys, which a {short}-token "
            "context cannot have" if beyond > 0 else
            f"Past position {short}, where the shortest context ends, the {long}-token context's loss does not fall "
            f"({before_end:.3f} over positions {short // 2}-{short - 1}, {long_curve.last_eighth:.3f} over its last "
            "eighth): it has not learned to use the extra context; raise max_tokens")
    return [f"Loss over the last eighth of each context: {ends}; {verdict}. Over the first {short} positions, "
            f"which both read, the longest context's loss is {shared.mean:.3f} against the shortest's "
            f"{short_curve.mean:.3f} (mean val loss {long_curve.mean:.3f} against {short_curve.mean:.3f}): "
            f"in_context_gain {short_curve.in_context_gain:.3f} at {short} tokens, {long_curve.in_context_gain:.3f} "
            f"at {long}.", past + "."]


def newest_position_curve(client: MlflowClient, run_id: str) -> PositionCurve | None:
    files = _step_files(client, run_id, POSITIONS_DIR)
    if not files:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, files[max(files)], folder)
        return PositionCurve(json.loads(Path(path).read_text())["loss_by_position"])


def head_readings(client: MlflowClient, run: RunCurves) -> list[Reading]:
    """Every inspection of the run, oldest first, with the in_context_gain of its step (or the one before)."""
    if not _step_files(client, run.run_id, HEADS_DIR):
        return []
    gains = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "in_context_gain"))
    readings = []
    with tempfile.TemporaryDirectory() as folder:
        local = Path(client.download_artifacts(run.run_id, HEADS_DIR, folder))
        for path in sorted(local.glob("step_*.json")):
            found = json.loads(path.read_text())
            gain = next((value for step, value in reversed(gains) if step <= found["step"]), None)
            readings.append(Reading(found["step"], HeadScores(found["induction"], found["prev_token"],
                                                              found["chance"]), gain))
    return sorted(readings, key=lambda reading: reading.step)


def _induction(client: MlflowClient, run: RunCurves, readings: list[Reading], swept: Sequence[str],
               out_dir: Path) -> tuple[str, list[Path]]:
    """The run's phase change in words (in tokens seen), and its head's attention before and after it."""
    formed = phase_change(readings)
    layers = number(run.value("n_layer"))
    label = run.label(swept) + (f" ({layers:.0f} layer{'s' if layers != 1 else ''})" if layers else "")
    if formed is None:
        layer, head, best = max((reading.scores.best("induction") for reading in readings), key=lambda b: b[2])
        advice = ("one layer cannot form one: it needs a previous-token head in a layer below it" if layers == 1
                  else "raise max_tokens (the head forms after a plateau), or keep the learning rate from decaying")
        return (f"{label}: no induction head formed (best score {best:.2f}, layer {layer} head {head}, chance "
                f"{readings[-1].scores.chance:.2f}; {FORMED} counts as formed): {advice}."), []
    per_step = number(run.params.get("tokens_per_step"))
    at = (lambda step: f"{count_text(step * per_step)} tokens") if per_step else (lambda step: f"step {step}")
    pictures = []
    for moment, step in (("before", formed.before.step), ("after", readings[-1].step)):
        path = out_dir / f"induction_head_{moment}_{run.run_id[:8]}.png"
        if _copy_attention_image(client, run.run_id, formed.layer, step, path):
            pictures.append(path)
    return f"{label}: {formed.describe(at)}.", pictures


def _copy_attention_image(client: MlflowClient, run_id: str, layer: int, step: int, target: Path) -> bool:
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    wanted = [name for name in names if name.endswith(".png") and (m := _IMAGE.search(name))
              and (int(m.group(1)), int(m.group(2))) == (layer, step)]
    if not wanted:
        return False
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(client.download_artifacts(run_id, sorted(wanted)[-1], folder), target)
    return True


def _step_files(client: MlflowClient, run_id: str, folder: str) -> dict[int, str]:
    return {int(m.group(1)): artifact.path for artifact in client.list_artifacts(run_id, folder)
            if (m := _STEP_FILE.search(artifact.path))}
