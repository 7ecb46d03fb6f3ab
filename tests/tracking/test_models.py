"""A finished run's LoggedModel: linked to the run with its metrics, loaded and served as a text generator,
registered by name, refused when tampered with. Real store, real tiny runs, a real `mlflow models serve`."""

from __future__ import annotations

import math
import urllib.error
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.errors import CheckpointError
from pipeline.settings import TrainSettings
from pipeline.tracking.models import register
from pipeline.training.trainer import train
from pipeline.tracking.checkpoints import model_from_run
from pipeline.training.sampling import complete
from tests.conftest import (TINY_MODEL, TINY_MODEL_FIELDS, assert_one_line_error, post_invocation, run_command,
                            run_module, serve_model, stop_server)

TINY = TrainSettings(corpus="tiny", epochs=100, max_steps=20, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                     log_interval=1, eval_interval=10, sample_interval=0, checkpoint_interval=0,
                     **TINY_MODEL_FIELDS)
PROMPT = "A language model"
PARAMS = {"max_new_tokens": 6, "temperature": 0.8, "top_k": 40, "seed": 7}


def test_a_finished_run_logs_a_model_linked_to_its_step_and_metrics_that_predicts_and_ranks(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # samples within a tiny run
    good = train(replace(TINY, register="tiny-gpt"))
    poor = train(replace(TINY, lr=1e-4, min_lr=1e-5, run_name="poor"))
    client = MlflowClient(store)
    run = client.get_run(good.run_id)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    # the run's Models tab: one model, at the last step, with the run's final metrics linked to it
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(good.model_id, 20)]
    model = mlflow.get_logged_model(good.model_id)
    assert model.source_run_id == good.run_id and str(model.status) == "READY"
    linked = {m.key: m for m in model.metrics}
    assert {"val_loss", "val_bpb", "train_loss"} <= set(linked) and linked["val_loss"].step == 20
    assert linked["val_loss"].value == pytest.approx(good.val_loss)
    assert model.params["lr"] == "0.01"

    # val_bpb beside every val_loss: nats per token x tokens per byte of the val text / ln 2
    per_byte = float(run.data.params["val_tokens_per_byte"])
    assert 0.15 < per_byte < 0.5  # GPT-2 BPE on English: 2-6 bytes a token
    bpb = {m.step: m.value for m in client.get_metric_history(good.run_id, "val_bpb")}
    loss = {m.step: m.value for m in client.get_metric_history(good.run_id, "val_loss")}
    assert set(bpb) == set(loss) == {0, 10, 20}  # step 0: before the first step, as nanoGPT
    assert all(bpb[s] == pytest.approx(loss[s] * per_byte / math.log(2), rel=1e-5) for s in bpb)

    # system metrics in the run's System metrics tab
    system = {key for key in run.data.metrics if key.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system

    # the best model of the experiment by val_loss is the better run's
    ranked = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         order_by=[{"field_name": "metrics.val_loss", "ascending": True}])
    assert [m.model_id for m in ranked] == [good.model_id, poor.model_id]

    # a pyfunc from code and plain tensors, no pickle; it continues a prompt as the run's checkpoint does
    files = {p.name for p in Path(model.artifact_location).rglob("*")}
    assert {"MLmodel", "generator.py", "weights.pt", "weights.pt.sha256", "config.json"} <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle"))]
    generator = mlflow.pyfunc.load_model(model.model_uri)
    completions = generator.predict([PROMPT, "The"], params=PARAMS)
    assert len(completions) == 2 and all(isinstance(c, str) and c for c in completions)
    checkpoint_model, enc = model_from_run(good.run_id, torch.device("cpu"))
    expected = complete(checkpoint_model, enc, PROMPT, 6, 0.8, 40, 7, torch.device("cpu")).text
    assert completions[0] == expected
    defaults = generator.predict([PROMPT])  # the run's own sampling settings
    assert len(defaults) == 1 and defaults[0]

    # --register made version 1; the registry loads it by name, and registering again makes version 2
    assert generator.predict([PROMPT], params=PARAMS) == mlflow.pyfunc.load_model("models:/tiny-gpt/1").predict(
        [PROMPT], params=PARAMS)
    assert register(client, good.run_id, "tiny-gpt") == 2
    assert client.get_model_version("tiny-gpt", "2").source == f"models:/{good.model_id}"


@pytest.mark.slow
def test_the_model_is_served_answers_a_post_and_is_refused_once_tampered_with(store, tmp_path):
    trained = run_command("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    model_line = next(line for line in trained.stdout.splitlines() if line.startswith("model: "))
    uri = model_line.split()[1]
    ui_line = next(line for line in trained.stdout.splitlines() if line.startswith("MLflow UI: "))
    assert ui_line.endswith("?workflowType=machine_learning") and "/#/experiments/" in ui_line
    expected = mlflow.pyfunc.load_model(uri).predict([PROMPT], params=PARAMS)[0]

    generated = run_module("pipeline.generate", "--model", uri, "--prompt", PROMPT, "--max-new-tokens", "6",
                           "--seed", "7", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.rstrip("\n") == PROMPT + expected

    server, port = serve_model(uri, store, tmp_path)
    try:
        answer = post_invocation(port, {"inputs": [PROMPT], "params": PARAMS})
        assert answer == {"predictions": [expected]}
        with pytest.raises(urllib.error.HTTPError) as refused:  # longer than the 32-token context
            post_invocation(port, {"inputs": ["word " * 40], "params": PARAMS})
        assert refused.value.code == 400 and "longer than the model's context" in refused.value.read().decode()
    finally:
        stop_server(server)

    weights = next(Path(mlflow.get_logged_model(uri.split("/")[-1]).artifact_location).rglob("weights.pt"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert_one_line_error(run_command("pipeline.generate", "--model", uri, cwd=tmp_path), "is corrupt")
    with pytest.raises(CheckpointError, match="is corrupt"):
        mlflow.pyfunc.load_model(uri)


def test_model_options_are_checked_in_one_line(store, tmp_path):
    assert_one_line_error(run_command("pipeline.train", "--corpus", "tiny", "--register", "a/b", cwd=tmp_path),
                          "registered model's name")
    assert_one_line_error(run_command("pipeline.generate", cwd=tmp_path), "give either --run-id or --model")
    assert_one_line_error(run_command("pipeline.generate", "--model", "models:/m-nope", cwd=tmp_path),
                          "cannot load model models:/m-nope")
    client = MlflowClient(store)
    bare = client.create_run(client.create_experiment("bare")).info.run_id
    with pytest.raises(Exception, match="has no logged model"):
        register(client, bare, "x")

