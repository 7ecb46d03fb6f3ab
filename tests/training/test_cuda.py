"""On a CUDA GPU: a run interrupted and resumed matches an uninterrupted one, dropout masks and all.

Skipped where PyTorch sees no GPU (CI has none); run on a GPU machine with `pytest tests/training/test_cuda.py`.
Eager only: compiled kernels are not bit-reproducible from run to run, with or without a resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.files import child_python_path
from tests.conftest import TINY_MODEL, run_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; PyTorch sees none here")

RUN = ["--corpus", "tiny", *TINY_MODEL, "--device", "cuda", "--max-steps", "40", "--lr", "1e-2", "--warmup-steps",
       "5", "--log-interval", "1", "--eval-interval", "20", "--sample-interval", "0", "--checkpoint-interval", "0",
       "--dropout", "0.1"]


def losses(client: MlflowClient, run_id: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]


def test_a_cuda_run_resumes_to_the_same_losses(store):
    client = MlflowClient(store)
    whole = run_module("pipeline.train", *RUN, "--run-name", "whole", cwd=os.getcwd())
    assert whole.returncode == 0, whole.stderr
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    parts = subprocess.Popen([sys.executable, "-m", "pipeline.train", *RUN, "--run-name", "parts"], env=env,
                             cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in parts.stdout:
        if line.startswith("step 10/"):
            parts.send_signal(signal.SIGINT)
            break
    parts.communicate(timeout=300)
    assert parts.returncode == 130
    experiment = client.get_experiment_by_name("pretraining").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    resumed = run_module("pipeline.train", "--resume", runs["parts"].info.run_id, "--device", "cuda",
                         cwd=os.getcwd())
    assert resumed.returncode == 0, resumed.stderr

    whole_losses, resumed_losses = losses(client, runs["whole"].info.run_id), losses(client, runs["parts"].info.run_id)
    assert len(whole_losses) == len(resumed_losses) == 40
    assert resumed_losses == pytest.approx(whole_losses, abs=1e-6)
    speeds = [m.value for m in client.get_metric_history(runs["whole"].info.run_id, "tokens_per_sec")]
    assert speeds and all(speed > 0 for speed in speeds)
    assert client.get_run(runs["whole"].info.run_id).data.params["device"].startswith("cuda")
