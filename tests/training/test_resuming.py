"""Resuming as users expect: the run's own options accepted, others refused by name with both values, a larger
budget training a run longer (finished or not) with its learning rate re-planned, a finished run not run again."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.settings import TrainSettings
from pipeline.training.schedule import lr_at
from tests.conftest import TINY_MODEL, assert_one_line_error, run_command, run_module

SHORT = ["--corpus", "tiny", *TINY_MODEL, "--epochs", "1000", "--max-steps", "6", "--lr", "1e-2",
         "--warmup-steps", "2", "--log-interval", "1", "--eval-interval", "3", "--sample-interval", "0",
         "--checkpoint-interval", "0"]


def test_a_finished_run_is_trained_longer_only_with_a_larger_budget(store, tmp_path):
    client = MlflowClient(store)
    first = run_command("pipeline.train", *SHORT, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    run_id = run.info.run_id

    # the same budget: the run is finished, and stays so
    again = run_command("pipeline.train", *SHORT, "--resume", run_id, cwd=tmp_path)
    assert_one_line_error(again, f"run {run_id} is finished (6 of 6 steps)", f"--resume {run_id} --max-steps 12")
    assert client.get_run(run_id).info.status == "FINISHED"
    # other settings are named with both values (an equal one is not); a shorter budget is refused
    changed = run_command("pipeline.train", "--resume", run_id, "--lr", "0.1", "--tokenizer", "bytes",
                          "--n-layer", "2", cwd=tmp_path)
    assert_one_line_error(changed, "--tokenizer is gpt2 there, bytes given; --lr is 0.01 there, 0.1 given (only")
    shorter = run_command("pipeline.train", "--resume", run_id, "--max-steps", "4", cwd=tmp_path)
    assert_one_line_error(shorter, "ends run", "before the 6 steps it planned")
    assert client.get_run(run_id).info.status == "FINISHED"

    # a process of its own: the plan line is logged, and logging keeps the stdout of the first command it served
    longer = run_module("pipeline.train", *SHORT, "--resume", run_id, "--max-steps", "12", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    plan = next(line for line in longer.stdout.splitlines() if line.startswith("plan: "))
    assert plan.startswith("plan: extended from 6 to 12 steps at step 6, the learning rate re-planned for 12 steps")
    assert "finished: 12 steps" in longer.stdout
    ended = client.get_run(run_id)
    assert ended.info.status == "FINISHED"
    assert ended.data.params["extension_1"] == "at step 6: 6 -> 12 steps (max_steps 6 -> 12)"
    assert ended.data.tags["lab.total_steps"] == "12"
    losses = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in losses) == list(range(1, 13)), "every step once, across the extension"
    # steps 1-6 followed the 6-step schedule, steps 7-12 the 12-step one (the lr logged after step s is step s-1's)
    lrs = {m.step: m.value for m in client.get_metric_history(run_id, "lr")}
    planned = TrainSettings(lr=1e-2, warmup_steps=2)
    assert [lrs[s] for s in range(1, 7)] == pytest.approx([lr_at(s - 1, planned, 6) for s in range(1, 7)])
    assert [lrs[s] for s in range(7, 13)] == pytest.approx([lr_at(s - 1, planned, 12) for s in range(7, 13)])
    assert lrs[7] > lrs[6] * 3, "the rate rises at the resume step to where the longer schedule is"
