"""A run that overfits offers its best weights too: the checkpoint of the lowest val loss becomes a logged model
of its own, linked to its step and metrics, carried through a resume, and usable by --init-from."""

from __future__ import annotations

import torch
from mlflow.tracking import MlflowClient

from pipeline.tracking import checkpoints
from pipeline.training.init_from import load_source
from tests.conftest import TINY_MODEL, run_command, run_module

# Trained on "aaaa...", validated on "bbbb...": every step makes "b" less likely, so the val loss is lowest early.
OVERFITS = [*TINY_MODEL, "--tokenizer", "bytes", "--max-steps", "6", "--lr", "1e-2", "--warmup-steps", "0",
            "--log-interval", "1", "--eval-interval", "1", "--sample-interval", "0", "--checkpoint-interval", "0"]


def test_the_lowest_val_loss_is_a_logged_model_of_its_own(store, tmp_path):
    text = tmp_path / "ab.txt"
    text.write_text("a" * 9000 + "\n" + "b" * 999)
    trained = run_module("pipeline.train", "--corpus", str(text), *OVERFITS, cwd=tmp_path)  # its log: stdout
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    val = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert sorted(val) == list(range(7))
    del val[0]  # the untrained weights, evaluated before the first step, are never offered as the best
    best_step = min(val, key=val.get)
    assert best_step < 6, val

    ranked = client.search_logged_models([experiment_id], order_by=[{"field_name": "metrics.val_loss",
                                                                     "ascending": True}])
    assert len(ranked) == 2
    best, last = ranked
    assert best.tags["lab.best"] == f"the lowest val_loss ({val[best_step]:.4f}) at step {best_step} of 6"
    assert "lab.best" not in last.tags
    assert sorted(m.key for m in best.metrics) == ["train_loss", "val_bpb", "val_loss"]
    assert [m.value for m in best.metrics if m.key == "val_loss"] == [val[best_step]]
    assert {m.step for m in best.metrics} == {best_step}
    assert f"best model: models:/{best.model_id} (step {best_step}" in trained.stdout

    # --init-from RUN@STEP finds the best weights (no checkpoint of that step is kept) in their model
    best_weights = load_source(f"{run_id}@{best_step}").weights
    assert load_source(f"{run_id}@{best_step}").model_id == best.model_id
    final_weights = checkpoints.load_from_run(run_id)["model"]
    assert not torch.equal(best_weights["lm_head.weight"], final_weights["lm_head.weight"])

    # the final checkpoint carries the best weights: trained longer, the run logs the same best model again
    longer = run_command("pipeline.train", "--resume", run_id, "--max-steps", "8", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    again = [m for m in client.search_logged_models([experiment_id]) if m.tags.get("lab.best")
             and m.model_id != best.model_id]
    assert [m.tags["lab.best"] for m in again] == [f"the lowest val_loss ({val[best_step]:.4f}) at step "
                                                   f"{best_step} of 8"]
    again_weights = load_source(f"models:/{again[0].model_id}").weights
    for name, tensor in best_weights.items():
        assert torch.equal(again_weights[name], tensor), name

