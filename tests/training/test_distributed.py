"""DistributedDataParallel on CPU: torchrun with 2 gloo processes against 1 process, real runs, one store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import checkpoints
from pipeline.files import child_python_path
from tests.conftest import TINY_MODEL, run_command

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# dropout 0: each process draws its own dropout masks, which a single process cannot reproduce
RUN = ["--corpus", "tiny", *TINY_MODEL, "--epochs", "1000", "--lr", "1e-2", "--warmup-steps", "5",
       "--batch-size", "4", "--log-interval", "1", "--eval-interval", "10",
       "--sample-interval", "0", "--dropout", "0"]


def torchrun(store: str, *args: str, processes: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([TORCHRUN, "--standalone", f"--nproc_per_node={processes}", "-m", "pipeline.train",
                             *args], cwd=os.getcwd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def runs_named(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("pretraining")
    return client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")


def curve(client: MlflowClient, run_id: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)]


def test_two_processes_match_one_with_the_default_batch_split_by_windows(store):
    client = MlflowClient(store)
    single = run_command("pipeline.train", *RUN, "--max-steps", "20", "--run-name", "single")  # in this process
    assert single.returncode == 0, single.stderr
    process = torchrun(store, *RUN, "--max-steps", "20", "--run-name", "ddp")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert out.count("finished: 20 steps") == 1  # only rank 0 reports

    [ddp] = runs_named(client, "ddp")  # exactly one MLflow run for the two processes
    [one] = runs_named(client, "single")
    assert ddp.info.status == "FINISHED" and ddp.data.params["world_size"] == "2"
    assert ddp.data.params["tokens_per_step"] == one.data.params["tokens_per_step"]  # same effective batch
    ddp_curve, one_curve = curve(client, ddp.info.run_id), curve(client, one.info.run_id)
    assert len(ddp_curve) == len(one_curve) == 20
    assert ddp_curve == pytest.approx(one_curve, abs=1e-5)
    assert ddp_curve[-1] < ddp_curve[0] - 1


def stop_at(process: subprocess.Popen, step: int) -> None:
    """SIGTERM to the whole process group at a step, as a scheduler would send it."""
    for line in process.stdout:
        if line.startswith(f"step {step}/"):
            os.killpg(process.pid, signal.SIGTERM)
            break
    process.communicate(timeout=600)


@pytest.mark.slow
def test_resume_moves_from_two_processes_to_one_and_back(store):
    client = MlflowClient(store)
    stop_at(torchrun(store, *RUN, "--max-steps", "16", "--run-name", "moving"), 4)
    [run] = runs_named(client, "moving")
    assert run.info.status == "KILLED"
    assert 4 <= checkpoints.load_from_run(run.info.run_id, client)["step"] < 16

    env = {**os.environ, "PYTHONPATH": child_python_path(), "MLFLOW_TRACKING_URI": store}
    single = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--resume", run.info.run_id], env=env,
                              cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    stop_at(single, 9)
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert 9 <= checkpoints.load_from_run(run.info.run_id, client)["step"] < 16

    back = torchrun(store, "--resume", run.info.run_id)
    _, err = back.communicate(timeout=300)
    assert back.returncode == 0, err[-3000:]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(1, 17))

    reference = run_command("pipeline.train", *RUN, "--max-steps", "16", "--run-name", "reference")
    assert reference.returncode == 0, reference.stderr
    [ref] = runs_named(client, "reference")
    assert curve(client, run.info.run_id) == pytest.approx(curve(client, ref.info.run_id), abs=1e-4)


def test_a_step_that_cannot_split_evenly_is_refused_with_what_to_pass(store):
    process = torchrun(store, *RUN, "--batch-size", "3", "--max-steps", "2")
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "a step's 3 windows (batch_size x grad_accum) cannot be split evenly over 2 processes" in err
    assert "RUNNING" not in {r.info.status for r in MlflowClient(store).search_runs(
        [e.experiment_id for e in MlflowClient(store).search_experiments()])}
