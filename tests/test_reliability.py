"""Faults a learner's runs must survive: kill -9, corrupt checkpoints, a full disk, a tracking server that goes
away, and several writers on one store. Each test runs the real CLI in real processes."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import checkpoints
from pipeline.errors import CheckpointError
from pipeline.files import child_python_path
from tests.conftest import (TINY_MODEL, assert_one_line_error, free_port, limited, run_command, run_module,
                            start_server, stop_server)

LONG_RUN = ["--corpus", "tiny", *TINY_MODEL, "--epochs", "1000", "--lr", "1e-2", "--warmup-steps", "5",
            "--log-interval", "1", "--eval-interval", "20", "--sample-interval", "0", "--dropout", "0.1"]


def start_train(store: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, prefix: str) -> None:
    for line in process.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {process.stderr.read()[-2000:]}")


def the_run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("pretraining")
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run


def final_loss(client: MlflowClient, run_id: str) -> float:
    return max(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step).value


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_last_checkpoint(store):
    client = MlflowClient(store)
    budget = ["--max-steps", "100", "--checkpoint-interval", "20"]
    whole = run_command("pipeline.train", *LONG_RUN, *budget, "--run-name", "whole")  # the reference, in-process
    assert whole.returncode == 0, whole.stderr

    process = start_train(store, *LONG_RUN, *budget, "--run-name", "killed")
    # step 21 is printed after step 20's checkpoint is stored: killed with one checkpoint at least, and 79 steps
    # before the end, so wherever the kill lands the run is part-way
    wait_for_line(process, "step 21/")
    process.kill()  # SIGKILL: no handler runs, no checkpoint, no status update
    process.wait()
    killed = the_run(client, "killed")
    assert killed.info.status == "RUNNING"
    last_checkpoint = checkpoints.load_from_run(killed.info.run_id, client)["step"]
    assert last_checkpoint in (20, 40, 60, 80)

    resumed = run_module("pipeline.train", "--resume", killed.info.run_id, cwd=os.getcwd())
    assert resumed.returncode == 0, resumed.stderr
    assert client.get_run(killed.info.run_id).info.status == "FINISHED"
    whole = the_run(client, "whole")
    assert final_loss(client, killed.info.run_id) == pytest.approx(final_loss(client, whole.info.run_id), abs=1e-6)
    for key in ("train_loss", "lr", "tokens_seen"):
        steps = [m.step for m in client.get_metric_history(killed.info.run_id, key)]
        assert sorted(steps) == list(range(1, 101)), key  # nothing twice, nothing missing
    assert sorted(m.step for m in client.get_metric_history(killed.info.run_id, "val_loss")) == [0, 20, 40, 60, 80, 100]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(store, caplog):
    client = MlflowClient(store)
    result = run_module("pipeline.train", *LONG_RUN, "--max-steps", "30", "--checkpoint-interval", "10",
                        "--run-name", "ckpt", cwd=os.getcwd())
    assert result.returncode == 0, result.stderr
    run = the_run(client, "ckpt")
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert names == ["checkpoints/step_00000020.pt", "checkpoints/step_00000020.pt.sha256",
                     "checkpoints/step_00000030.pt", "checkpoints/step_00000030.pt.sha256"]  # newest two kept
    newest = Path(urlparse(run.info.artifact_uri).path) / "checkpoints" / "step_00000030.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert checkpoints.load_from_run(run.info.run_id, client)["step"] == 20
    assert "is corrupt" in caplog.text

    newest.write_bytes(bytes(data[:1000]))  # truncated, and its checksum file gone too
    Path(str(newest) + ".sha256").unlink()
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        checkpoints.load(newest)
    assert checkpoints.load_from_run(run.info.run_id, client)["step"] == 20


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoint(store):
    client = MlflowClient(store)
    # a budget no run reaches: stopped by Ctrl-C wherever it lands, and the resumed run meets its next checkpoint
    process = start_train(store, *LONG_RUN, "--max-steps", "100000", "--checkpoint-interval", "20",
                          "--run-name", "full")
    wait_for_line(process, "step 12/")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=600)
    run = the_run(client, "full")
    stopped_at = checkpoints.load_from_run(run.info.run_id, client)["step"]
    assert run.info.status == "KILLED" and stopped_at >= 12
    # resume under a 4 MB file-size limit: the next checkpoint (about 20 MB, within 20 steps) cannot be written
    result = run_module("pipeline.train", "--resume", run.info.run_id, cwd=os.getcwd(),
                        env={"MLFLOW_TRACKING_URI": store}, preexec_fn=limited(resource.RLIMIT_FSIZE, 4 << 20))
    assert_one_line_error(result, "could not write checkpoint")
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert checkpoints.load_from_run(run.info.run_id, client)["step"] == stopped_at  # the earlier one is intact


def test_a_full_disk_while_tokenizing_is_one_line_and_leaves_no_half_shards(tmp_path):
    env = {"CORPUS_CACHE": str(tmp_path / "cache")}
    ok = run_module("pipeline.tokenize", "--corpus", "shakespeare", env=env)
    assert ok.returncode == 0, ok.stderr
    before = sorted((tmp_path / "cache" / "shards" / "shakespeare").iterdir())
    result = run_module("pipeline.tokenize", "--corpus", "shakespeare", "--val-fraction", "0.2", env=env,
                        preexec_fn=limited(resource.RLIMIT_FSIZE, 100_000))
    assert_one_line_error(result, "could not write", "File too large")
    assert sorted((tmp_path / "cache" / "shards" / "shakespeare").iterdir()) == before
    assert not [p for p in (tmp_path / "cache" / "shards").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_training_survives_the_tracking_server_going_away(tmp_path, corpus_cache):
    """The chosen behaviour: training goes on, metrics wait in memory and arrive when the server is back."""
    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    process = None
    try:
        # If the run ends while the server is still away, its last flush and checkpoint wait for it: also tested.
        # 130 steps still to go when the server stops: training goes on through the outage
        process = start_train(uri, *LONG_RUN, "--max-steps", "150", "--run-name", "outage")
        wait_for_line(process, "step 20/")
        stop_server(server)
        wait_for_line(process, "cannot reach the tracking store")  # a flush failed: training goes on regardless
        server = start_server(tmp_path, port)
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        assert "is back" in out
        client = MlflowClient(uri)
        run = the_run(client, "outage")
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, 151))
    finally:
        if process and process.poll() is None:
            process.kill()
        stop_server(server)


@pytest.mark.slow
def test_two_sweeps_and_a_run_writing_to_one_store_lose_nothing(store, tmp_path):
    import yaml

    base = {"corpus": "tiny", "n_layer": 2, "n_head": 2, "n_embd": 32, "context_length": 32, "epochs": 100,
            "max_steps": 15, "log_interval": 1, "eval_interval": 5, "sample_interval": 0}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"sweeps": {
        "one": {"base": base, "parameters": {"lr": {"values": [0.01, 0.003]}}},
        "two": {"base": base, "parameters": {"seed": {"values": [1, 2]}}},
    }}))
    MlflowClient(store).search_experiments()  # create the database once, before the writers start
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline.sweep", "--name", name, "--file", str(path),
                                   "--workers", "2"], env=env, cwd=os.getcwd(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    processes.append(start_train(store, *LONG_RUN, "--max-steps", "15", "--eval-interval", "5", "--run-name", "single"))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("pretraining")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("lab.role") != "sweep"]
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(1, 16))
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 5, 10, 15]
