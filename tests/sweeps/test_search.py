"""Method bayes: the spec checked whole, trials drawn by Optuna, pruned trials FINISHED and tagged, a re-run
continuing the study."""

from __future__ import annotations

import os
from dataclasses import replace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import SettingsError
from pipeline.sweeps import study as studies
from pipeline.sweeps.runner import run_sweep
from pipeline.sweeps.spec import load_sweep, load_sweeps
from tests.conftest import assert_one_line_error, run_command, run_module
from tests.sweeps.test_runner import children_of
from tests.sweeps.test_spec import TINY_BASE, write_sweeps

LOG_LR = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}


def bayes(**extra) -> dict:
    return {"base": TINY_BASE, "method": "bayes", "run_cap": 3, "parameters": {"lr": LOG_LR}, **extra}


def test_a_bayes_sweep_is_a_search_over_its_parameters(tmp_path):
    path = write_sweeps(tmp_path / "e.yaml", {
        "b": bayes(parameters={"lr": LOG_LR, "warmup_steps": {"distribution": "int_uniform", "min": 0, "max": 4},
                               "batch_size": {"values": [2, 4]}},
                   metric={"name": "val_loss", "goal": "minimize"},
                   early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2}),
    })
    sweep = load_sweeps(path)["b"]
    assert sweep.points == () and sweep.size == 3 and sweep.swept == ["batch_size", "lr", "warmup_steps"]
    space = studies.distributions(sweep.search)
    assert space["lr"].log and (space["lr"].low, space["lr"].high) == (1e-4, 1e-2)
    assert (space["warmup_steps"].low, space["warmup_steps"].high) == (0, 4)
    assert space["batch_size"].choices == (2, 4)
    rule = studies.pruner(sweep.search.early_terminate)  # W&B's hyperband: successive halving at 1, 2, 4, ...
    assert isinstance(rule, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(studies.pruner(None), optuna.pruners.NopPruner)


BAD_BAYES = [
    (bayes(run_cap=0), "sweep 's': run_cap must be a whole number of runs of at least 1, got 0"),
    ({**bayes(), "run_cap": None}, "run_cap must be a whole number"),
    (bayes(parameters={"warmup_steps": {"distribution": "uniform", "min": 1, "max": 9}}),
     "parameter 'warmup_steps': 'warmup_steps' is int: use int_uniform"),
    (bayes(parameters={"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}), "needs min > 0"),
    (bayes(parameters={"lr": {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-2}}),
     "sweep 's', parameters at their min: min_lr must be between 0 and lr"),
    (bayes(early_terminate={"type": "asha"}), "sweep 's': early_terminate needs type: hyperband or median"),
    (bayes(early_terminate={"type": "hyperband", "eta": 1}), "sweep 's', early_terminate: eta must be"),
    (bayes(early_terminate={"type": "median", "min_iters": 2}), "sweep 's', early_terminate: unknown key 'min_iters'"),
    (bayes(early_terminate={"type": "median"}, metric={"name": "train_loss"}), "metric must be val_loss"),
    (bayes(early_terminate={"type": "median"}, base={**TINY_BASE, "eval_interval": 0}),
     "early_terminate needs evaluations"),
    ({**bayes(), "method": "grid", "run_cap": 3}, "sweep 's': run_cap and seed belong to methods random and bayes"),
    ({**bayes(), "method": "random", "early_terminate": {"type": "median"}}, "early_terminate belongs to method bayes"),
]


@pytest.mark.parametrize("spec, message", BAD_BAYES)
def test_bad_bayes_specs_are_one_line_naming_the_sweep_and_the_key(tmp_path, spec, message):
    path = write_sweeps(tmp_path / "e.yaml", {"s": spec})
    with pytest.raises(SettingsError) as caught:
        load_sweeps(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_sweep_command_refuses_a_bad_bayes_spec_in_one_line(tmp_path):
    path = write_sweeps(tmp_path / "e.yaml", {"s": bayes(early_terminate={"type": "hyperband", "min_iter": 0})})
    result = run_command("pipeline.sweep", "--name", "s", "--file", str(path))
    assert_one_line_error(result, "sweep 's', early_terminate: min_iter must be")


@pytest.mark.slow
def test_a_bayes_sweep_prunes_a_trial_behind_the_others_and_a_rerun_continues_its_study(store, tmp_path):
    # seed 10 draws lr 1e-2 first, then 1e-6: behind the first trial's val loss at the first evaluation
    path = write_sweeps(tmp_path / "e.yaml", {"search": {
        "base": {**TINY_BASE, "eval_interval": 2, "min_lr": 0.0, "sample_interval": 0, "checkpoint_interval": 0},
        "method": "bayes", "run_cap": 2, "seed": 10, "parameters": {"lr": {"values": [0.01, 1e-6]}},
        "early_terminate": {"type": "median", "min_iter": 1, "startup_trials": 1},
    }})
    client = tracking.connect()
    sweep = load_sweep("search", path)
    result = run_sweep(client, sweep, workers=1)  # one at a time: each trial sees the one before it finished
    assert result.status == "FINISHED" and len(result.children) == 2
    children = children_of(client, result.parent_run_id)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    pruned = [c for c in children if tracking.PRUNED_TAG in c.data.tags]
    assert pruned, [(c.data.params["lr"], c.data.tags.get(tracking.PRUNED_TAG)) for c in children]
    for child in pruned:  # stopped at its first evaluation (step 2 of 6), cleanly: FINISHED and diagnosed
        assert child.data.tags[tracking.PRUNED_TAG] == "2" and float(child.data.params["lr"]) == 1e-6
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [0, 2]
        assert child.data.tags.get("diagnosis")
    kept = [c for c in children if c not in pruned]
    assert all(sorted(m.step for m in client.get_metric_history(c.info.run_id, "val_loss")) == [0, 2, 4, 6]
               for c in kept)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["lab.best_run"] in {c.info.run_id for c in kept}  # by val_loss, pruned left out
    assert "pruned" in parent.data.tags["lab.summary"]

    url = studies.storage_url(store)
    assert url == f"sqlite:///{tmp_path / 'mlflow-optuna.db'}"
    trials = optuna.load_study(study_name=studies.study_name(sweep), storage=url).trials
    assert sorted(t.state.name for t in trials) == sorted(["COMPLETE"] * (2 - len(pruned)) + ["PRUNED"] * len(pruned))

    again = run_sweep(client, sweep, workers=2)  # the study goes on: run_cap is reached, nothing new runs
    assert again.parent_run_id == result.parent_run_id and all(c.skipped for c in again.children)
    assert len(children_of(client, result.parent_run_id)) == 2
    assert len(optuna.load_study(study_name=studies.study_name(sweep), storage=url).trials) == 2

    raised = replace(sweep, search=replace(sweep.search, run_cap=4))  # two more trials, side by side
    more = run_sweep(client, raised, workers=2)
    assert [c.skipped for c in more.children] == [True] * 2 + [False] * 2
    assert len(children_of(client, result.parent_run_id)) == 4
    assert len(optuna.load_study(study_name=studies.study_name(sweep), storage=url).trials) == 4
    dry = run_module("pipeline.sweep", "--name", "search", "--file", str(path), "--dry-run", cwd=os.getcwd())
    assert dry.returncode == 0 and dry.stdout.count("trial ") == 4 and "(pruned" in dry.stdout, dry.stderr
    commands = run_module("pipeline.sweep", "--name", "search", "--file", str(path), "--print-commands",
                          cwd=os.getcwd())
    assert_one_line_error(commands, "bayes search")
    assert MlflowClient(store).get_run(result.parent_run_id).info.status == "FINISHED"
