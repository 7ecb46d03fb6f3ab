"""A shared tracking server: training, sweeps and reports over HTTP work as against the embedded store."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from tests.conftest import TINY_MODEL, run_module


def test_training_sweep_and_report_against_a_real_server(server, tmp_path):
    env = {"MLFLOW_TRACKING_URI": server}
    trained = run_module("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "8", "--epochs", "100",
                         "--log-interval", "1", "--eval-interval", "4", "--sample-interval", "8",
                         "--run-name", "over-http", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("pretraining")
    [run] = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'over-http'")
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 8
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoints", "samples", "samples.json"}
    assert "diagnosis" in run.data.tags

    swept = run_module("pipeline.sweep", "--name", "smoke", "--workers", "2", cwd=tmp_path, env=env)
    assert swept.returncode == 0, swept.stderr
    [parent] = client.search_runs([experiment.experiment_id], filter_string="tags.`lab.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and all(len(client.get_metric_history(c.info.run_id, "train_loss")) == 6
                                      for c in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/loss_curves.png", "report/runs.csv"}

    report = run_module("pipeline.report", "--parent-run-id", parent.info.run_id, "--out", str(tmp_path / "r"),
                        cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "r" / "loss_curves.png").stat().st_size > 5000


def test_print_commands_hands_children_to_a_scheduler(server, tmp_path):
    env = {"MLFLOW_TRACKING_URI": server}
    printed = run_module("pipeline.sweep", "--name", "smoke", "--print-commands", cwd=tmp_path, env=env)
    assert printed.returncode == 0, printed.stderr
    commands = printed.stdout.strip().splitlines()
    assert len(commands) == 2 and all("MLFLOW_RUN_ID=" in c and "pipeline.train" in c for c in commands)
    for command in commands:  # what a Slurm array or a Kubernetes Job would run, each on its own machine
        activated = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-c", command], env=activated, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    again = run_module("pipeline.sweep", "--name", "smoke", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip smoke-") == 2  # the scheduled children finished: only the report is left
    assert "report: " in again.stdout
