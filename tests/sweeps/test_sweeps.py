"""Sweeps: experiments.yaml validated whole, expanded, and run as nested MLflow runs in parallel processes."""

from __future__ import annotations

import os

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import SettingsError
from pipeline.sweeps.spec import load_sweep, load_sweeps
from pipeline.sweeps.children import CHILD_ROLE
from pipeline.sweeps.runner import describe, plan, run_sweep, scheduler_commands
from pipeline.files import child_python_path
from tests.conftest import TINY_MODEL_FIELDS, assert_one_line_error, run_command, run_module

TINY_BASE = {"corpus": "tiny", **TINY_MODEL_FIELDS, "epochs": 100, "max_steps": 6, "warmup_steps": 2,
             "log_interval": 1, "eval_interval": 3, "sample_interval": 6, "sample_tokens": 8}


def write_sweeps(path, sweeps: dict):
    path.write_text(yaml.safe_dump({"sweeps": sweeps}, sort_keys=False))
    return path


EXERCISES = ("memorization", "lr_sensitivity", "context_length", "scaling")


def test_shipped_sweeps_cover_the_learning_exercises_at_both_scales():
    sweeps = load_sweeps()
    assert {f"{name}_{scale}" for name in EXERCISES for scale in ("cpu", "gpu")} | {"smoke"} <= set(sweeps)
    assert [p.settings.lr for p in sweeps["lr_sensitivity_gpu"].points] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    assert [p.settings.context_length for p in sweeps["context_length_gpu"].points] == [64, 128, 256]
    assert [p.settings.config for p in sweeps["scaling_gpu"].points] == ["nano", "small", "medium"]
    for scale in ("cpu", "gpu"):
        memorization = sweeps[f"memorization_{scale}"].points
        assert [p.settings.corpus for p in memorization] == ["verdict", "tinystories"]
        for name in EXERCISES:  # every run of an exercise sees the same number of tokens
            points = sweeps[f"{name}_{scale}"].points
            assert len({p.settings.max_tokens for p in points}) == 1 and points[0].settings.max_tokens > 0, name
    rates = [p.settings.lr for p in sweeps["lr_sensitivity_cpu"].points]
    assert len(rates) >= 4 and max(rates) / min(rates) >= 10 ** 1.5  # 1.5 decades at least
    assert len({p.settings.context_length for p in sweeps["context_length_cpu"].points}) == 3
    widths = [p.settings.model_config() for p in sweeps["scaling_cpu"].points]
    non_embedding = [12 * c.n_layer * c.n_embd ** 2 for c in widths]  # attention + MLP weights per block
    assert len(non_embedding) >= 4 and max(non_embedding) / min(non_embedding) >= 10  # a decade at least


def test_an_exercise_is_found_by_its_name_at_the_scale_asked(tmp_path):
    assert load_sweep("memorization", scale="cpu").name == "memorization_cpu"
    assert load_sweep("scaling", scale="gpu").name == "scaling_gpu"
    assert load_sweep("lr_sensitivity").name == "lr_sensitivity_cpu"  # no CUDA GPU on the test machines
    assert load_sweep("smoke", scale="gpu").name == "smoke"  # a sweep of one scale is itself at any scale
    path = write_sweeps(tmp_path / "e.yaml", {"only_gpu": {"base": TINY_BASE, "method": "grid",
                                                            "parameters": {"lr": {"values": [0.01]}}}})
    with pytest.raises(SettingsError, match="sweep 'only' has no cpu scale"):
        load_sweep("only", path, scale="cpu")
    with pytest.raises(SettingsError, match="unknown sweep 'nope'"):
        load_sweep("nope", path)
    assert_one_line_error(run_command("pipeline.sweep", "--name", "scaling", "--scale", "tpu", "--dry-run"),
                          "'tpu' is not one of")


def test_every_exercise_plans_at_both_scales(store):
    """A dry run of each exercise at each scale: the GPU sweeps stay valid though no test machine trains them."""
    client = MlflowClient(store)
    for name in EXERCISES:
        for scale in ("cpu", "gpu"):
            sweep = load_sweep(name, scale=scale)
            lines = describe(plan(client, sweep))
            assert len(lines) == len(sweep.points) >= 2 and all(line.endswith("(to run)") for line in lines)


def test_grid_is_the_cross_product_and_random_is_seeded_and_in_range(tmp_path):
    path = write_sweeps(tmp_path / "e.yaml", {
        "g": {"base": TINY_BASE, "method": "grid",
              "parameters": {"lr": {"values": [0.01, 0.003]}, "batch_size": {"values": [2, 4, 8]}}},
        "r": {"base": TINY_BASE, "method": "random", "run_cap": 5, "seed": 3,
              "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                             "batch_size": {"values": [2, 4]}}},
    })
    sweeps = load_sweeps(path)
    grid = [(p.settings.lr, p.settings.batch_size) for p in sweeps["g"].points]
    assert sorted(grid) == sorted((lr, b) for lr in (0.01, 0.003) for b in (2, 4, 8))
    draws = [(p.settings.lr, p.settings.batch_size) for p in sweeps["r"].points]
    assert len(draws) == 5 and all(1e-4 <= lr <= 1e-2 and b in (2, 4) for lr, b in draws)
    assert draws == [(p.settings.lr, p.settings.batch_size) for p in load_sweeps(path)["r"].points]
    assert sweeps["g"].swept == ["batch_size", "lr"]


def one_sweep(base: dict | None = None, **spec) -> dict:
    """A file of one sweep 's' on TINY_BASE (or base), with spec's keys beside it."""
    return {"s": {"base": TINY_BASE if base is None else base, **spec}}


ONE_LR = {"lr": {"values": [0.1]}}
BAD_SWEEPS = [
    (one_sweep(parameters=ONE_LR, methd="grid"), "sweep 's': unknown key 'methd'"),
    (one_sweep(method="hyperopt", parameters=ONE_LR), "method must be one of"),
    (one_sweep(parameters={"learning_rate": {"values": [0.1]}}), "unknown parameter 'learning_rate'"),
    (one_sweep(parameters={"lr": {"values": []}}), "values must be a non-empty list"),
    (one_sweep(parameters={}), "'parameters' must map at least one setting"),
    (one_sweep(parameters={"batch_size": {"values": ["big"]}}), "'batch_size' must be int"),
    (one_sweep(parameters={"lr": [0.1, 0.2]}), "give values: [...] or value: x"),
    (one_sweep({**TINY_BASE, "epoch": 3}, parameters=ONE_LR), "base: unknown setting 'epoch'"),
    (one_sweep({**TINY_BASE, "max_steps": "ten"}, parameters=ONE_LR), "'max_steps' must be int"),
    (one_sweep(method="list"), "'runs' must be a non-empty list"),
    (one_sweep(method="list", runs=[{"lr": 0.1}, {"lr": 0.1}]), "two runs have the same settings"),
    (one_sweep(method="random", parameters=ONE_LR), "needs run_cap"),
    (one_sweep(method="random", run_cap=2, parameters={"lr": {"distribution": "normal", "min": 0.1, "max": 0.2}}),
     "distribution must be one of"),
    (one_sweep(method="random", run_cap=2, parameters={"lr": {"distribution": "uniform", "min": 0.2, "max": 0.1}}),
     "min < max"),
    (one_sweep(parameters=ONE_LR, metric={"name": "val_loss", "goal": "lowest"}), "goal must be minimize or maximize"),
    (one_sweep(parameters={"lr": {"values": [-1.0]}}), "lr must be a positive number"),
    ({"s": ["lr"]}, "sweep 's': must be a mapping"),
    ({}, "defines no sweeps"),
]


@pytest.mark.parametrize("sweeps, message", BAD_SWEEPS)
def test_invalid_experiments_files_are_refused_with_the_sweep_and_key(tmp_path, sweeps, message):
    path = write_sweeps(tmp_path / "e.yaml", sweeps)
    with pytest.raises(SettingsError) as caught:
        load_sweeps(path)
    assert message in str(caught.value)


def test_one_bad_sweep_stops_the_whole_file_before_anything_runs(tmp_path, store):
    path = write_sweeps(tmp_path / "e.yaml", {
        "good": {"base": TINY_BASE, "parameters": {"lr": {"values": [0.01]}}},
        "bad": {"base": TINY_BASE, "parameters": {"lr": {"values": ["fast"]}}},
    })
    result = run_command("pipeline.sweep", "--name", "good", "--file", str(path))
    assert_one_line_error(result, "sweep 'bad'", "'lr' must be float")
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(store).search_runs(
        [e.experiment_id for e in MlflowClient(store).search_experiments()])
    assert_one_line_error(run_command("pipeline.sweep", "--name", "nope"), "unknown sweep 'nope'")


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
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss")) == [3, 6]
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
