"""Running a sweep (sweeps/runner.py, children.py): planned, run as nested MLflow runs in parallel processes,
re-run skipping what finished, a failing child, the experiment `mlflow run` names, and Ctrl-C."""

from __future__ import annotations

import os

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.files import child_python_path
from pipeline.sweeps.children import CHILD_ROLE
from pipeline.sweeps.runner import describe, plan, run_sweep, scheduler_commands
from pipeline.sweeps.spec import load_sweep
from tests.conftest import PROJECT_DIR, run_module
from tests.sweeps.test_spec import EXERCISES, TINY_BASE, write_sweeps


def test_every_exercise_plans_at_both_scales(store):
    """A dry run of each exercise at each scale: the GPU sweeps stay valid though no test machine trains them."""
    client = MlflowClient(store)
    for name in EXERCISES:
        for scale in ("cpu", "gpu"):
            sweep = load_sweep(name, scale=scale)
            lines = describe(plan(client, sweep))
            assert len(lines) == len(sweep.points) >= 2 and all(line.endswith("(to run)") for line in lines)


def children_of(client, parent_id):
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_smoke_sweep_with_two_workers_nests_runs_loses_nothing_and_reruns_skip(store, tmp_path):
    client = tracking.connect()
    sweep = load_sweep("smoke")
    result = run_sweep(client, sweep, workers=2)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["lab.sweep"] == "smoke"
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"sweep.yaml", "summary.json"}
    children = children_of(client, result.parent_run_id)
    ended = {c.info.run_name: (c.info.status, c.data.tags.get("error")) for c in children}
    assert len(children) == 2 and {status for status, _ in ended.values()} == {"FINISHED"}, (
        ended, [(c.point.name, c.status, c.error) for c in result.children])
    assert sorted(float(c.data.params["lr"]) for c in children) == [0.003, 0.01]
    for child in children:  # two processes wrote to one SQLite store at once: every point is there
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train_loss"))
        assert steps == [1, 2, 3, 4, 5, 6]
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss")) == [0, 3, 6]
        assert child.data.tags["lab.role"] == CHILD_ROLE

    report = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/loss_curves.png", "report/final_val_loss.png", "report/runs.csv", "report/runs.md"} <= report
    assert all(path.stat().st_size > 0 for path in result.report_files)
    assert all(c.data.tags.get("diagnosis") for c in children)

    again = run_sweep(client, sweep, workers=2)
    assert again.parent_run_id == result.parent_run_id
    assert all(c.skipped for c in again.children)
    assert len(children_of(client, result.parent_run_id)) == 2

    dry = run_module("pipeline.sweep", "--name", "smoke", "--dry-run", cwd=os.getcwd())
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("skip") == 2 and "smoke-01-lr=1e-2" in dry.stdout


@pytest.mark.slow
def test_a_failing_child_is_failed_and_the_sweep_goes_on(store, tmp_path):
    path = write_sweeps(tmp_path / "e.yaml", {
        "mixed": {"base": TINY_BASE, "method": "list", "runs": [{"lr": 1e30, "warmup_steps": 0, "min_lr": 0.0},
                                                                 {"lr": 0.01}]},
        "doomed": {"base": {**TINY_BASE, "warmup_steps": 0, "min_lr": 0.0}, "method": "list", "runs": [{"lr": 1e30}]},
    })
    client = tracking.connect()
    result = run_sweep(client, load_sweep("mixed", path))
    assert result.status == "FINISHED"
    statuses = {c.point.settings.lr: c.status for c in result.children}
    assert statuses == {1e30: "FAILED", 0.01: "FINISHED"}
    [failure] = result.failures
    assert "loss became" in failure.error
    assert "mixed-01" in client.get_run(result.parent_run_id).data.tags["lab.summary"]

    doomed = run_sweep(client, load_sweep("doomed", path))
    assert doomed.status == "FAILED" and client.get_run(doomed.parent_run_id).info.status == "FAILED"
    assert len(plan(client, load_sweep("doomed", path))) == 1  # a failed child runs again on a rerun


def test_under_mlflow_run_experiment_name_the_parent_and_its_children_share_it(store, monkeypatch):
    client = tracking.connect()
    lab = client.create_experiment("lab-s")
    given = client.create_run(lab, tags={"mlflow.project.entryPoint": "sweep"}).info.run_id  # as `mlflow run
    monkeypatch.setenv("MLFLOW_RUN_ID", given)                                           # --experiment-name lab-s`
    commands = scheduler_commands(client, load_sweep("smoke"))
    assert len(commands) == 2 and all("--experiment lab-s " in c for c in commands)
    assert client.get_run(given).info.status == "SCHEDULED"  # the run made for the sweep is its parent
    children = children_of(client, given)
    assert len(children) == 2 and {c.info.experiment_id for c in children} == {lab}
    for child in children:  # as the scheduler's commands leave them
        client.set_terminated(child.info.run_id, "FINISHED")
    assert all(item.finished_run_id for item in plan(client, load_sweep("smoke")))  # a re-run looks in lab-s too
    assert client.get_experiment_by_name("pretraining") is None  # nothing went to the sweep file's experiment


def test_ctrl_c_ends_a_sweep_even_when_started_ignoring_it(store, tmp_path):
    """A shell's background job ignores SIGINT; the sweep takes it back, so a stop ends the running child and
    starts no more."""
    import signal
    import subprocess
    import sys

    endless = {**TINY_BASE, "max_steps": 100000, "epochs": 1000, "eval_interval": 0, "sample_interval": 0}
    path = write_sweeps(tmp_path / "e.yaml", {"long": {"base": endless, "method": "grid",
                                                       "parameters": {"lr": {"values": [0.01, 0.003]}}}})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.sweep", "--name", "long", "--file", str(path)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": child_python_path()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in process.stdout:  # the first child is training once it logs a step
            if "] step " in line:
                break
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal, and the dashboard's Stop, do
        output = process.communicate(timeout=600)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    client = MlflowClient(store)
    children = {r.data.tags["mlflow.runName"]: r for r in client.search_runs(
        [client.get_experiment_by_name("pretraining").experiment_id], f"tags.`lab.role` = '{CHILD_ROLE}'")}
    assert {name: run.info.status for name, run in children.items()} == {
        "long-01-lr=1e-2": "KILLED", "long-02-lr=3e-3": "KILLED"}
    assert "train_loss" in children["long-01-lr=1e-2"].data.metrics
    assert not children["long-02-lr=3e-3"].data.metrics  # never started


@pytest.mark.slow
def test_the_optimizers_exercise_runs_end_to_end_at_a_tiny_size_and_says_who_got_there_first(store, tmp_path):
    """optimizers_cpu as shipped, its runs (AdamW and Muon at their rates) on a test-sized model for 6 steps."""
    exercise = yaml.safe_load((PROJECT_DIR / "experiments.yaml").read_text())["sweeps"]["optimizers_cpu"]
    tiny = {**exercise, "base": {**TINY_BASE, "eval_interval": 2, "sample_interval": 0}}
    path = write_sweeps(tmp_path / "e.yaml", {"optimizers_cpu": tiny})
    client = tracking.connect()
    result = run_sweep(client, load_sweep("optimizers", path, scale="cpu"), workers=2)
    assert result.status == "FINISHED" and not result.failures
    facts = result.findings.facts
    assert set(facts["best_rate"]) == {"adamw", "muon"} and facts["target_val_loss"] > 0
    for measure in ("tokens_to_target", "seconds_to_target"):
        assert all(value is not None and value > 0 for value in facts[measure].values()), facts
    assert "first_in_tokens" in facts and "first_in_seconds" in facts
    assert "(the higher of the best runs' final val losses)" in result.findings.text
    report = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/loss_curves.png", "report/val_bpb_by_time.png"} <= report
    optimizers = sorted(c.data.params["optimizer"] for c in children_of(client, result.parent_run_id))
    assert optimizers == ["adamw"] * 3 + ["muon"] * 3
