"""Training end to end on a test-sized model: real tiktoken, a real SQLite MLflow store, real subprocesses."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.data.ngrams import NgramIndex
from pipeline.data.shards import load_shards
from pipeline.tracking import checkpoints
from pipeline.tracking.checkpoints import model_from_run
from pipeline.training.recording import SAMPLES_PER_NOVELTY
from pipeline.training.sampling import completions
from pipeline.errors import CheckpointError
from pipeline.settings import TrainSettings
from pipeline.training.trainer import default_run_name, train
from pipeline.files import child_python_path
from tests.conftest import (PROJECT_DIR, TINY_MODEL, TINY_MODEL_FIELDS, assert_one_line_error, limited,
                            run_command, run_module, wait_for)

TINY = TrainSettings(corpus="tiny", epochs=100, max_steps=40, lr=1e-2, min_lr=1e-3, warmup_steps=5,
                     log_interval=1, eval_interval=10, sample_interval=20, sample_tokens=8,
                     checkpoint_interval=20, **TINY_MODEL_FIELDS)


def run_statuses(uri: str) -> list[str]:
    client = MlflowClient(uri)
    return [r.info.status for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_loss_falls_on_tiny_and_the_run_records_everything(store):
    result = train(TINY)
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "nano-tiny-lr1e-2"
    assert client.get_experiment(run.info.experiment_id).name == "pretraining"

    losses = [m.value for m in sorted(client.get_metric_history(result.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == 40
    assert losses[-1] < losses[0] - 3, losses  # from ~10.8 (uniform guessing) to memorising 96 tokens

    for key in ("lr", "grad_norm", "tokens_per_sec", "tokens_seen", "peak_rss_mb", "mfu"):
        assert len(client.get_metric_history(result.run_id, key)) == 40, key
    val_steps = [m.step for m in client.get_metric_history(result.run_id, "val_loss")]
    assert sorted(val_steps) == [0, 10, 20, 30, 40]  # step 0: before the first step, as nanoGPT
    assert len(client.get_metric_history(result.run_id, "val_perplexity")) == 5
    tokens_seen = client.get_metric_history(result.run_id, "tokens_seen")
    assert max(m.value for m in tokens_seen) == 40 * 8 * 32
    assert all(0 < m.value < 1 for m in client.get_metric_history(result.run_id, "mfu"))

    params = run.data.params
    for key in ("config", "corpus", "lr", "batch_size", "stride", "seed", "n_layer", "n_head", "n_embd",
                "context_length", "vocab_size", "corpus_name", "shards_sha256", "train_tokens", "val_tokens",
                "n_params", "n_params_non_embedding", "device", "torch_version", "git_commit"):
        assert key in params, key
    assert params["n_layer"] == "2" and params["context_length"] == "32" and params["device"] == "cpu"
    assert int(params["train_tokens"]) + int(params["val_tokens"]) == 108
    assert params["tokenizer"] == "gpt2" and params["val_fraction"] == "0.1"

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"samples", "samples.json", "checkpoints"} <= artifacts
    samples = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert samples == {"samples/step_000020.txt", "samples/step_000040.txt"}
    table = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/samples.json")
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [row["step"] for row in rows] == [20, 40]
    assert all(row["prompt"] == "A language model" and row["generation"] for row in rows)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiny"]

    checkpoint = checkpoints.load_from_run(result.run_id)
    assert checkpoint["step"] == 40 and checkpoint["settings"]["lr"] == 1e-2

    # the last sample's novelty is the mean over the four continuations drawn with that step's seed
    model, enc = model_from_run(result.run_id, torch.device("cpu"))
    drawn = completions(model, enc, "A language model", SAMPLES_PER_NOVELTY, 8, TINY.temperature, TINY.top_k,
                        TINY.seed + 40, torch.device("cpu"))
    assert rows[-1]["generation"] == drawn[0].text
    index = NgramIndex.load_or_build(load_shards(Path(os.environ["CORPUS_CACHE"]) / "shards" / "tiny"))
    expected = sum(index.novelty(c.tokens) for c in drawn) / SAMPLES_PER_NOVELTY
    novelty = {m.step: m.value for m in client.get_metric_history(result.run_id, "novelty")}
    assert novelty[40] == pytest.approx(expected)


def test_max_steps_alone_runs_that_many_steps_and_prints_the_plan(store):
    result = run_module("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "12", "--log-interval",
                        "4", "--eval-interval", "0", "--sample-interval", "0", cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    assert "finished: 12 steps" in result.stdout
    plan = next(line for line in result.stdout.splitlines() if line.startswith("plan: "))
    assert plan.startswith("plan: 12 steps x 256 tokens = 3,072 tokens")  # 8 windows of 32 tokens a step
    passes, train_tokens = re.search(r"tokens, ([\d.]+) passes over the ([\d,]+) train tokens", plan).groups()
    assert float(passes) == pytest.approx(3072 / int(train_tokens.replace(",", "")), rel=2e-3)
    assert any(line.startswith("estimate: ") and "for the 8 steps left" in line for line in result.stdout.splitlines())


def test_run_names_read_like_the_settings():
    assert default_run_name(TrainSettings(lr=3e-4), "verdict") == "nano-verdict-lr3e-4"
    assert default_run_name(TrainSettings(), "verdict") == "nano-verdict-lr1e-3"
    assert default_run_name(TrainSettings(config="conf/big.yaml", lr=2.5e-3), "tiny") == "big-tiny-lr2.5e-3"
    assert default_run_name(TrainSettings(optimizer="muon", muon_lr=0.05), "tiny") == "nano-tiny-muon5e-2-lr1e-3"


def _start_cli(store: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


RESUMABLE = ["--corpus", "tiny", *TINY_MODEL, "--batch-size", "2", "--epochs", "1000", "--max-steps", "60",
             "--lr", "1e-2", "--warmup-steps", "5", "--log-interval", "1", "--eval-interval", "25",
             "--sample-interval", "0", "--checkpoint-interval", "0", "--dropout", "0.1"]


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_loss(store):
    """Ctrl-C part-way: checkpoint, KILLED; --resume finishes with the uninterrupted run's loss, to 1e-6."""
    client = MlflowClient(store)
    whole = run_command("pipeline.train", *RESUMABLE, "--run-name", "whole")  # the reference: no process of its own
    assert whole.returncode == 0, whole.stderr
    whole_run = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id],
                                   filter_string="attributes.run_name = 'whole'")[0]

    process = _start_cli(store, *RESUMABLE, "--run-name", "parts")
    for line in process.stdout:
        if line.startswith("step 10/"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=600)
    assert process.returncode == 130, err
    assert "resume with --resume" in err
    parts_run = client.search_runs([whole_run.info.experiment_id], filter_string="attributes.run_name = 'parts'")[0]
    assert parts_run.info.status == "KILLED"
    stopped_at = checkpoints.load_from_run(parts_run.info.run_id)["step"]
    assert 10 <= stopped_at < 60

    # the same command line plus --resume, as a user types it again
    resumed = run_module("pipeline.train", *RESUMABLE, "--run-name", "parts", "--resume", parts_run.info.run_id,
                         cwd=os.getcwd())
    assert resumed.returncode == 0, resumed.stderr
    assert client.get_run(parts_run.info.run_id).info.status == "FINISHED"

    def final_loss(run_id):
        history = client.get_metric_history(run_id, "train_loss")
        return max(history, key=lambda m: m.step).value

    assert final_loss(parts_run.info.run_id) == pytest.approx(final_loss(whole_run.info.run_id), abs=1e-6)
    steps = sorted(m.step for m in client.get_metric_history(parts_run.info.run_id, "train_loss"))
    assert steps == list(range(1, 61)), "every step logged exactly once across the interruption"


@pytest.mark.slow
def test_a_muon_run_resumes_exactly_after_ctrl_c_and_after_kill_9(store):
    client = MlflowClient(store)
    muon = [*RESUMABLE, "--max-steps", "40", "--optimizer", "muon", "--muon-lr", "0.03", "--checkpoint-interval", "10"]
    whole = run_command("pipeline.train", *muon, "--run-name", "whole")
    assert whole.returncode == 0, whole.stderr
    experiment = client.get_experiment_by_name("pretraining").experiment_id
    [whole_run] = client.search_runs([experiment], filter_string="attributes.run_name = 'whole'")

    process = _start_cli(store, *muon, "--run-name", "parts")
    _stop_at(process, "step 10/", signal.SIGINT)
    assert process.returncode == 130
    [parts] = client.search_runs([experiment], filter_string="attributes.run_name = 'parts'")
    process = _start_cli(store, "--resume", parts.info.run_id)
    _stop_at(process, "step 22/", signal.SIGKILL)  # no checkpoint at the end: it resumes from an interval's
    assert client.get_run(parts.info.run_id).info.status == "RUNNING"
    assert checkpoints.load_from_run(parts.info.run_id)["step"] in (20, 30)
    resumed = run_module("pipeline.train", "--resume", parts.info.run_id, cwd=os.getcwd())
    assert resumed.returncode == 0, resumed.stderr

    def losses(run_id):
        return {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}

    assert sorted(losses(parts.info.run_id)) == list(range(1, 41))
    assert losses(parts.info.run_id)[40] == pytest.approx(losses(whole_run.info.run_id)[40], abs=1e-6)
    assert client.get_run(parts.info.run_id).data.params["optimizer"] == "muon"


def _stop_at(process: subprocess.Popen, prefix: str, sig: signal.Signals) -> None:
    for line in process.stdout:
        if line.startswith(prefix):
            process.send_signal(sig)
            break
    process.communicate(timeout=600)


def test_sigterm_also_checkpoints_and_ends_killed(store):
    process = _start_cli(store, *RESUMABLE, "--max-steps", "100000", "--run-name", "term")
    for line in process.stdout:
        if line.startswith("step 5/"):
            process.send_signal(signal.SIGTERM)
            break
    process.communicate(timeout=600)
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])[0]
    assert run.info.status == "KILLED"
    assert checkpoints.load_from_run(run.info.run_id)["step"] >= 5


@pytest.mark.parametrize("args, message", [
    (["--config", "huge"], "unknown config 'huge'"),
    (["--n-layers", "2"], "No such option"),
    (["--lr", "0"], "lr must be a positive number"),
    (["--lr", "-1e-3"], "lr must be a positive number"),
    (["--optimizer", "sgd"], "unknown optimizer 'sgd' (known: adamw, muon)"),
    (["--muon-lr", "0"], "muon_lr must be a positive number"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--epochs", "-1"], "epochs must be zero or more"),
    (["--max-steps", "-5"], "max_steps must be zero or more"),
    (["--n-head", "3"], "must be a multiple of n_head"),
    (["--batch-size", "many"], "'many' is not a valid integer"),
    (["--corpus", "no-such-corpus"], "unknown corpus"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--prompt", "word " * 40], "prompt has"),
    (["--corpus", ""], "corpus must not be empty"),
    (["--corpus", "  "], "corpus must not be empty"),
    (["--sample-tokens", "0"], "sample_tokens must be at least 1"),
    (["--epochs", "nan"], "epochs must be zero or more"),
    (["--context-length", "100000000"], "GiB for its weights, gradients and AdamW state"),
    (["--n-layer", "100000", "--n-embd", "100000"], "lower --n-layer, --n-embd or --context-length"),
    (["--batch-size", "100000000000"], "out of memory at step 1"),
])
def test_bad_input_is_one_line_and_leaves_no_run_running(store, args, message):
    result = run_command("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "2", *args)
    assert_one_line_error(result, message)
    assert "RUNNING" not in run_statuses(store)


def test_resume_and_generate_refuse_runs_they_cannot_use(store):
    client = MlflowClient(store)
    not_training = client.create_run(client.create_experiment("other")).info.run_id
    client.set_terminated(not_training)
    for module, args in (("pipeline.train", ["--resume"]), ("pipeline.generate", ["--run-id"])):
        assert_one_line_error(run_command(module, *args, "f" * 32), "no MLflow run with id")
        assert_one_line_error(run_command(module, *args, not_training), "has no checkpoint")
    assert "RUNNING" not in run_statuses(store)


def test_non_finite_loss_stops_at_once_and_fails_the_run(store):
    result = run_command("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "50", "--lr", "1e30",
                         "--warmup-steps", "0", "--min-lr", "0")
    assert_one_line_error(result, "loss became", "lower --lr")
    assert run_statuses(store) == ["FAILED"]


def test_out_of_memory_is_one_line_with_advice(store):
    # 400k windows of 32 tokens at width 512: the token embeddings alone need 26 GB, and half of them 13 GB twice
    # (with the positions added), past the process's 16 GiB; they fail before any large matmul runs (the logits,
    # made a chunk at a time, would never be the largest)
    result = run_module("pipeline.train", "--corpus", "tiny", "--n-layer", "1", "--n-head", "1", "--n-embd", "512",
                        "--context-length", "32", "--batch-size", "400000", "--max-steps", "1", cwd=os.getcwd(),
                        preexec_fn=limited(resource.RLIMIT_AS, 16 << 30))
    assert_one_line_error(result, "out of memory at step 1 even with the micro-batch halved", "--batch-size")
    assert run_statuses(store) == ["FAILED"]
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.data.tags["lab.oom_adjusted"] == "batch_size 400000 -> 200000, grad_accum 1 -> 2"


def test_unreachable_tracking_server_fails_before_training(store, tmp_path):
    # MLflow's own retries would take minutes before the first error: the deadline fails the test then
    result = run_module("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "2", cwd=tmp_path,
                        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, timeout=150)
    assert_one_line_error(result, "cannot reach the MLflow tracking store at http://127.0.0.1:9")
    assert result.stdout == ""  # refused before anything was planned or fetched


def test_generate_continues_a_prompt_from_a_runs_checkpoint(store):
    result = train(replace(TINY, max_steps=30))
    out = run_module("pipeline.generate", "--run-id", result.run_id, "--prompt", "A language model",
                     "--max-new-tokens", "12", "--temperature", "0", cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("A language model") and len(out.stdout) > len("A language model") + 5
    again = run_command("pipeline.generate", "--run-id", result.run_id, "--prompt", "A language model",
                        "--max-new-tokens", "12", "--temperature", "0")  # in this process: the same text
    assert again.stdout == out.stdout

    assert_one_line_error(run_command("pipeline.generate", "--run-id", "0" * 32), "no MLflow run")
    assert_one_line_error(run_command("pipeline.generate", "--run-id", result.run_id, "--prompt", ""),
                          "prompt is empty")
    assert_one_line_error(run_command("pipeline.generate", "--run-id", result.run_id, "--prompt", "word " * 40),
                          "longer than the model's context")


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": subprocess.Popen}, path)  # a class: only loadable by unpickling code
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        checkpoints.load(path)
    truncated = tmp_path / "cut.pt"
    checkpoints.save(tmp_path / "good.pt", {"step": 1})
    truncated.write_bytes((tmp_path / "good.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError):
        checkpoints.load(truncated)


def test_mlflow_run_entry_point_with_local_env_manager(store):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    result = subprocess.run(
        [mlflow_cli, "run", str(PROJECT_DIR), "-e", "train", "--env-manager", "local", "--experiment-name",
         "pretraining", "-P", "corpus=tiny", "-P", "max_steps=3", "-P", "lr=3e-3", "-P", "n_layer=2",
         "-P", "n_head=2", "-P", "n_embd=32", "-P", "context_length=32"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("pretraining").experiment_id
    # the run `mlflow run` made goes on as one of ours, and is deleted by a process of its own once ended
    [run] = wait_for(lambda: len(runs := client.search_runs([experiment_id])) == 1 and runs, timeout=300,
                     what="the run mlflow run made to be deleted")
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "3" and run.data.params["n_layer"] == "2"
    assert run.data.params["lr"] == "3e-3"  # as the user typed it: logged by `mlflow run`, kept by the trainer
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1


def test_model_files_from_yaml_are_checked_and_an_unpadded_vocabulary_trains_and_generates(store, tmp_path):
    small_vocab = tmp_path / "small-vocab.yaml"
    small_vocab.write_text("n_layer: 1\nn_head: 2\nn_embd: 32\ncontext_length: 32\nvocab_size: 1000\n")
    result = run_command("pipeline.train", "--config", str(small_vocab), "--corpus", "tiny", "--max-steps", "2")
    assert_one_line_error(result, "vocab_size must hold the tokenizer's 50257 tokens, got 1000")
    for bad, message in (("bias: maybe\n", "model field 'bias'"), ("n_layer: 0\n", "n_layer must be at least 1")):
        (tmp_path / "bad.yaml").write_text(bad)
        assert_one_line_error(run_command("pipeline.train", "--config", str(tmp_path / "bad.yaml"), "--corpus",
                                          "tiny", "--max-steps", "2"), message)
    assert "RUNNING" not in run_statuses(store)

    exact = tmp_path / "exact-vocab.yaml"
    exact.write_text("n_layer: 1\nn_head: 2\nn_embd: 32\ncontext_length: 32\nvocab_size: 50257\n")
    trained = train(replace(TINY, config=str(exact), max_steps=4, sample_interval=0))
    out = run_module("pipeline.generate", "--run-id", trained.run_id, "--prompt", "A language model",
                     "--max-new-tokens", "20", cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("A language model")
