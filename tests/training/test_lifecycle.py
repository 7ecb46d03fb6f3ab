"""The edges of a run: resuming only what may be resumed, and ending in a final state through a store outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.training.trainer import close_run
from pipeline.files import child_python_path
from tests.conftest import (TINY_MODEL, assert_one_line_error, free_port, run_module, start_server,
                            stop_server)

ENDLESS = ["--corpus", "tiny", *TINY_MODEL, "--max-steps", "100000000", "--log-interval", "1", "--eval-interval",
           "0", "--sample-interval", "0", "--checkpoint-interval", "0"]


def start_trainer(store: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *args], cwd=os.getcwd(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_until(process: subprocess.Popen, prefix: str) -> list[str]:
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the trainer ended before printing {prefix!r}: {''.join(seen)[-2000:]}")


def only_run(store: str):
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    return run


def test_a_run_trained_right_now_is_not_resumed_twice_and_a_day_long_plan_is_warned(store):
    trainer = start_trainer(store, *ENDLESS)
    try:
        seen = lines_until(trainer, "step 2/")
        assert any("give it a budget, e.g. --max-tokens" in line for line in seen), "".join(seen)
        run = only_run(store)
        resumed = run_module("pipeline.train", "--resume", run.info.run_id, cwd=os.getcwd())
        assert_one_line_error(resumed, f"run {run.info.run_id} is still being trained",
                              f"process {trainer.pid}")
    finally:
        trainer.send_signal(signal.SIGINT)
        trainer.communicate(timeout=600)
    assert only_run(store).info.status == "KILLED"


def test_a_crashed_trainers_run_resumes_although_it_is_left_running(store):
    command = [*ENDLESS[:-2], "--checkpoint-interval", "3"]
    trainer = start_trainer(store, *command)
    lines_until(trainer, "step 4/")
    trainer.kill()  # kill -9: no checkpoint at the end, the run stays RUNNING with a fresh heartbeat
    trainer.communicate(timeout=600)
    run = only_run(store)
    assert run.info.status == "RUNNING" and tracking.live_trainer(MlflowClient(store).get_run(run.info.run_id)) is None
    resumed = start_trainer(store, *command, "--resume", run.info.run_id)  # its own command line, plus --resume
    try:
        lines_until(resumed, "step 5/")
    finally:
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=600)
    assert only_run(store).info.status == "KILLED"


@pytest.mark.slow
def test_the_end_of_a_run_waits_for_a_tracking_server_that_is_away(tmp_path, monkeypatch, corpus_cache):
    """Diagnosis, tags and FINISHED are retried as metrics are; FAILED is one warning when the store is away."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    port = free_port()
    server = start_server(tmp_path, port)
    client = tracking.client_for(f"http://127.0.0.1:{port}")
    experiment_id = client.create_experiment("end")
    finishing, failing = (client.create_run(experiment_id).info.run_id for _ in range(2))
    for step, loss in enumerate([10.0, 8.0, 6.0, 5.0, 4.5], start=1):
        client.log_metric(finishing, "train_loss", loss, step=step)
    stop_server(server)

    # the server is away: FAILED is reported in one warning and close_run returns
    close_run(client, failing, tracking.STATUS_FAILED, RuntimeError("boom"))

    monkeypatch.setenv("LAB_TRACKING_RETRY_SECONDS", "600")
    restarted = {}  # the server takes seconds to come back; close_run meanwhile finds it away and retries
    starting = threading.Thread(target=lambda: restarted.setdefault("server", start_server(tmp_path, port)))
    starting.start()
    try:
        close_run(client, finishing, tracking.STATUS_FINISHED, None)  # returns once the server is back
    finally:
        starting.join()
    server = restarted["server"]
    try:
        finished, failed = client.get_run(finishing), client.get_run(failing)
        assert finished.info.status == "FINISHED" and finished.data.tags["diagnosis"]
        assert failed.info.status == "RUNNING"  # it could not be told; a resume takes it from here
    finally:
        stop_server(server)
