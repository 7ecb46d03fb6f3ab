"""A shared tracking server: training, sweeps and reports over HTTP work as against the embedded store; the
server script, and its login when exposed."""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (PROJECT_DIR, TINY_MODEL, assert_one_line_error, free_port, run_module, stop_server,
                            wait_until_listening)


@pytest.mark.slow
def test_training_sweep_and_report_against_a_real_server(server, tmp_path):
    train_sweep_and_report(server, tmp_path)


def train_sweep_and_report(server: str, folder: Path) -> str:
    """Through the server at URI server: a training run, a two-worker sweep and a report, each read back whole;
    the sweep's parent run id."""
    env = {"MLFLOW_TRACKING_URI": server}
    trained = run_module("pipeline.train", "--corpus", "tiny", *TINY_MODEL, "--max-steps", "8", "--epochs", "100",
                         "--log-interval", "1", "--eval-interval", "4", "--sample-interval", "8",
                         "--run-name", "over-http", cwd=folder, env=env)
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("pretraining")
    [run] = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'over-http'")
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 4, 8]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoints", "samples", "samples.json"}
    assert run.data.params["max_steps"] == "8" and "diagnosis" in run.data.tags

    swept = run_module("pipeline.sweep", "--name", "smoke", "--workers", "2", cwd=folder, env=env)
    assert swept.returncode == 0, swept.stderr
    [parent] = client.search_runs([experiment.experiment_id], filter_string="tags.`lab.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" and
                                      len(client.get_metric_history(c.info.run_id, "train_loss")) == 6
                                      for c in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/loss_curves.png", "report/runs.csv"}

    report = run_module("pipeline.report", "--parent-run-id", parent.info.run_id, "--out", str(folder / "r"),
                        cwd=folder, env=env)
    assert report.returncode == 0, report.stderr
    assert (folder / "r" / "loss_curves.png").stat().st_size > 5000
    logged = Path(client.download_artifacts(parent.info.run_id, "report/runs.csv", str(folder)))
    assert logged.read_text() == (folder / "r" / "runs.csv").read_text()
    assert sorted(pd.read_csv(logged)["run_id"]) == sorted(c.info.run_id for c in children)
    return parent.info.run_id


@pytest.mark.slow
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


SERVER_SCRIPT = PROJECT_DIR / "run-tracking-server.sh"


def test_server_script_explains_itself_and_refuses_bad_options():
    shown = subprocess.run(["bash", str(SERVER_SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--expose" in shown.stdout and "--host ADDRESS" in shown.stdout
    for args, message in [(["--no-such-option"], "unknown option --no-such-option"),
                          (["--port"], "--port needs a value")]:
        refused = subprocess.run(["bash", str(SERVER_SCRIPT), *args], capture_output=True, text=True, timeout=30)
        assert_one_line_error(refused, message)
    # bash 3.2 (macOS) takes "${a[@]}" of an empty array for an unbound variable under `set -u`; newer bash does
    # not, so no run here can show it: every array expansion must be the guarded ${a[@]+"${a[@]}"}.
    assert not re.findall(r'(?<!\[@\]\+)"\$\{\w+\[@\]\}"', SERVER_SCRIPT.read_text())


def test_exposed_server_answers_only_with_a_login(tmp_path):
    pytest.importorskip("flask_wtf", reason="MLflow's login (--expose) needs the server extra: "
                                            "pip install -c constraints.txt -e '.[test,server]'")
    import mlflow.server.auth

    config = configparser.ConfigParser()
    config.read(Path(mlflow.server.auth.__file__).parent / "basic_auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'users.db'}"  # not basic_auth.db in the project
    with open(tmp_path / "basic_auth.ini", "w") as file:
        config.write(file)
    admin, password = config["mlflow"]["admin_username"], "a-long-test-password"  # MLflow ships no password
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY", None)  # the script makes one up
    with open(tmp_path / "server.log", "w") as log:
        process = subprocess.Popen(
            ["bash", str(SERVER_SCRIPT), "--expose", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_until_listening(process, port)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=60)
        assert refused.value.code == 401
        login = base64.b64encode(f"{admin}:{password}".encode()).decode()
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Basic {login}"}),
                                    timeout=60) as answered:
            assert answered.status == 200 and "experiments" in json.load(answered)
    finally:
        stop_server(process)
    assert not (PROJECT_DIR / "basic_auth.db").exists()
