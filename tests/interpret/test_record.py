"""Inspection in training and from the command: a tiny run logs its attention images by step, its head scores,
the lens, its loss by position and a page with nothing from outside; `pipeline.inspect` adds a step of its own
and refuses bad input in one line. Real tiny runs, a real store."""

from __future__ import annotations

import re
from dataclasses import replace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.training.trainer import train
from tests.conftest import assert_one_line_error, run_command, run_module
from tests.training.test_train import TINY

INSPECTED = replace(TINY, max_steps=20, eval_interval=10, sample_interval=0, inspect_interval=10,
                    checkpoint_interval=10)
IMAGE = re.compile(r"^images/attention~layer_(\d+)\+step\+(\d+)\+.*\.png$")


def image_steps(client, run_id: str) -> list[tuple[int, int]]:
    """(layer, step) of every attention image in the run, sorted (one entry an image)."""
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    return sorted((int(m.group(1)), int(m.group(2))) for m in map(IMAGE.match, names) if m)


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_training_logs_attention_images_head_scores_lens_and_loss_by_position(store):
    result = train(INSPECTED)
    client = MlflowClient(store)
    run_id = result.run_id
    # step 0 is the untrained model: the "before" picture, and the step MLflow's image view opens at
    assert image_steps(client, run_id) == [(layer, step) for layer in (0, 1) for step in (0, 10, 20)]
    for key in ("heads/induction_max", "heads/prev_token_max"):
        assert metric_steps(client, run_id, key) == [0, 10, 20], key
    for key in ("lens/loss_layer_0", "lens/loss_layer_1", "in_context_gain", "val_loss_first_eighth",
                "val_loss_last_eighth"):
        assert metric_steps(client, run_id, key) == [0, 10, 20], key
    val_loss = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    last_layer = {m.step: m.value for m in client.get_metric_history(run_id, "lens/loss_layer_1")}
    # tiny's val split holds fewer windows than LENS_WINDOWS: the lens reads them all, so its last layer is val_loss
    assert all(abs(val_loss[step] - last_layer[step]) < 1e-5 for step in (0, 10, 20))

    curve = mlflow.artifacts.load_dict(f"runs:/{run_id}/val_loss_by_position/step_000020.json")
    positions = len(curve["loss_by_position"])  # tiny's val split is shorter than the context: its windows too
    assert 1 < positions <= 32 and curve["step"] == 20
    assert abs(sum(curve["loss_by_position"]) / positions - val_loss[20]) < 1e-5

    heads = mlflow.artifacts.load_dict(f"runs:/{run_id}/heads/step_000020.json")
    assert len(heads["induction"]) == 2 and len(heads["induction"][0]) == 2
    best = {m.step: m.value for m in client.get_metric_history(run_id, "heads/induction_max")}
    assert best[20] == max(max(row) for row in heads["induction"])

    page = mlflow.artifacts.load_text(f"runs:/{run_id}/inspect/step_000020.html")
    assert page.count("data:image/png;base64,") == 2 and "A language model" in page
    assert not re.search(r"https?://|src=\"//|<script", page)  # nothing fetched, nothing run


def test_inspect_command_logs_a_checkpoints_attention_at_its_step(store, tmp_path):
    result = train(INSPECTED)
    client = MlflowClient(store)
    trained = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/heads/step_000010.json")
    done = run_module("pipeline.inspect", "--run-id", result.run_id, "--step", "10", "--prompt",
                      "A language model is a model", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "step 10:" in done.stdout and "best induction head: layer" in done.stdout
    # the checkpoint of step 10 scored on training's logged pool: the very numbers training logged at step 10
    assert "scored on the run's val tokens" in done.stdout
    inspected = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/heads/step_000010.json")
    for key in ("induction", "prev_token"):
        assert sum(inspected[key], []) == pytest.approx(sum(trained[key], []), abs=1e-5), key
    page = mlflow.artifacts.load_text(f"runs:/{result.run_id}/inspect/step_000010.html")
    assert "A language model is a model" in page  # the command's prompt replaced training's page of step 10
    assert len([step for _, step in image_steps(client, result.run_id) if step == 10]) == 4  # training's and ours

    by_model = run_module("pipeline.inspect", "--model", f"models:/{result.model_id}", cwd=tmp_path)
    assert by_model.returncode == 0, by_model.stderr
    assert "step 20:" in by_model.stdout


def test_inspect_refuses_bad_input_in_one_line(store, tmp_path):
    result = train(replace(INSPECTED, inspect_interval=0, checkpoint_interval=0))
    assert_one_line_error(run_command("pipeline.inspect", "--run-id", result.run_id, "--step", "7", cwd=tmp_path),
                          "no checkpoint of step 7", "steps 20")
    assert_one_line_error(run_command("pipeline.inspect", "--run-id", "0123456789abcdef0123456789abcdef",
                                      cwd=tmp_path), "no MLflow run")
    assert_one_line_error(run_command("pipeline.inspect", "--run-id", result.run_id, "--prompt", "word " * 40,
                                      cwd=tmp_path), "prompt has", "context holds 32")
    assert_one_line_error(run_command("pipeline.inspect", cwd=tmp_path), "either --run-id or --model")
