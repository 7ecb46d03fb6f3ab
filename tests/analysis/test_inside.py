"""A report reads what training logged inside its runs: the span where an induction head formed, in tokens seen,
with its attention before and after; and, for contexts that differ, the loss over each context's last eighth.
Runs made by hand in a real store, with the artifacts training writes."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from pipeline.analysis.curves import load_runs
from pipeline.analysis.inside import read_inside
from pipeline.interpret.heads import HeadScores
from pipeline.interpret.positions import PositionCurve


def logged_run(client, experiment: str, name: str, context: int, best_scores: list[float], late_loss: float) -> str:
    run_id = client.create_run(experiment, run_name=name).info.run_id
    for key, value in (("tokens_per_step", "1024"), ("context_length", str(context))):
        client.log_param(run_id, key, value)
    for index, best in enumerate(best_scores):
        step = 100 * (index + 1)
        scores = HeadScores([[0.02, 0.03], [0.04, best]], [[0.6, 0.1], [0.1, 0.1]], 0.03)
        client.log_dict(run_id, scores.as_json(step), f"heads/step_{step:06d}.json")
        for key, value in (("in_context_gain", best), ("val_loss", 5 - best), ("train_loss", 5 - best)):
            client.log_metric(run_id, key, value, step=step)
        client.log_image(run_id, np.full((8, 8, 3), index * 40, dtype=np.uint8), key="attention/layer_1", step=step,
                         synchronous=True)
    curve = PositionCurve([6.0] * (context - context // 8) + [late_loss] * (context // 8))
    client.log_dict(run_id, curve.as_json(100 * len(best_scores)),
                    f"val_loss_by_position/step_{100 * len(best_scores):06d}.json")
    client.set_terminated(run_id)
    return run_id


def test_the_report_names_the_span_an_induction_head_formed_and_reads_contexts_by_position(store, tmp_path):
    client = MlflowClient(store)
    experiment = client.create_experiment("inside")
    short = logged_run(client, experiment, "short", 16, [0.05, 0.1, 0.12], late_loss=5.5)
    long = logged_run(client, experiment, "long", 32, [0.05, 0.1, 0.7], late_loss=4.5)
    runs = load_runs(client, [short, long])
    inside = read_inside(client, runs, ["context_length"], tmp_path)

    names = [path.name for path in inside.files]
    assert names[:2] == ["loss_by_position.png", "induction_over_training.png"]
    assert names[2:] == [f"induction_head_before_{long[:8]}.png", f"induction_head_after_{long[:8]}.png"]
    assert all(path.is_file() and path.stat().st_size for path in inside.files)
    context, past, first, second = inside.lines
    assert "16 -> 5.500, 32 -> 4.500" in context and "1.000 better than the shortest" in context
    assert past.startswith("Past position 16, where the shortest context ends, the 32-token context's loss keeps "
                           "falling: 6.000 over positions 8-15, 4.500 over its last eighth, 1.500 ± 0.000 lower")
    assert inside.facts["context_beyond_gain"] == 1.5
    assert "context_length=16: no induction head formed (best score 0.12, layer 1 head 1" in first
    assert "raise max_tokens" in first
    assert ("context_length=32: an induction head, layer 1 head 1, formed between 205K tokens and 307K tokens "
            "(best induction score 0.10 -> 0.70); in the same span in_context_gain went 0.10 -> 0.70.") == second
    assert inside.facts["induction_formed"] == {"context_length=16": False, "context_length=32": True}
    assert inside.facts["context_late_gain"] == 1.0


def test_runs_that_logged_nothing_inside_add_nothing(store, tmp_path):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("plain")).info.run_id
    client.log_metric(run_id, "train_loss", 3.0, step=1)
    inside = read_inside(client, load_runs(client, [run_id]), [], tmp_path)
    assert (inside.files, inside.lines, inside.facts) == ((), (), {})


def test_heads_that_formed_nothing_go_unmentioned_unless_the_runs_asked_for_them(store, tmp_path):
    client = MlflowClient(store)
    experiment = client.create_experiment("quiet heads")
    run_id = logged_run(client, experiment, "plain", 16, [0.05, 0.1, 0.12], late_loss=5.5)
    inside = read_inside(client, load_runs(client, [run_id]), [], tmp_path)
    assert not any("induction" in line for line in inside.lines)
    assert [path.name for path in inside.files] == ["loss_by_position.png"]

    client.log_param(run_id, "inspect_interval", "100")
    inside = read_inside(client, load_runs(client, [run_id]), [], tmp_path)
    assert any("no induction head formed" in line for line in inside.lines)
