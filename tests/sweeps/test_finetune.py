"""A sweep whose run starts from an earlier run's weights (init_from "@NAME"): run in order, the weights handed
on, and the report reading the fine-tuned run against the one from scratch, and what it forgot."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import SettingsError
from pipeline.sweeps.runner import run_sweep, scheduler_commands
from pipeline.sweeps.spec import load_sweep
from tests.sweeps.test_spec import TINY_BASE, write_sweeps

# the finetune exercise at a test's size: pretrain on verdict, then tiny fine-tuned and from scratch
FINETUNE = {"base": {**TINY_BASE, "lr": 0.01, "eval_interval": 2, "sample_interval": 4, "max_steps": 4},
            "method": "list",
            "runs": [{"run_name": "pretrain", "corpus": "verdict", "max_steps": 12},
                     {"run_name": "finetuned", "init_from": "@pretrain", "eval_corpus": "verdict"},
                     {"run_name": "scratch", "eval_corpus": "verdict"}]}


def test_a_run_fine_tuned_from_an_earlier_run_of_the_sweep_is_reported_beside_one_from_scratch(store, tmp_path):
    backwards = {**FINETUNE, "runs": FINETUNE["runs"][::-1]}
    with pytest.raises(SettingsError, match="init_from '@pretrain' names no earlier run of the sweep"):
        load_sweep("finetune", write_sweeps(tmp_path / "e.yaml", {"finetune": backwards}))
    sweep = load_sweep("finetune", write_sweeps(tmp_path / "e.yaml", {"finetune": FINETUNE}))
    client = tracking.connect()
    with pytest.raises(SettingsError, match="run it with python -m pipeline.sweep"):
        scheduler_commands(client, sweep)

    result = run_sweep(client, sweep)
    runs = {c.point.name: MlflowClient().get_run(c.run_id) for c in result.children}
    assert {name: run.info.status for name, run in runs.items()} == dict.fromkeys(runs, "FINISHED")
    pretrain_id = runs["pretrain"].info.run_id
    tuned = runs["finetuned"].data
    assert tuned.params["init_from"] == pretrain_id and tuned.tags["lab.init_from_run"] == pretrain_id
    assert "lab.init_from" not in runs["scratch"].data.tags

    facts, text = result.findings.facts, result.findings.text
    assert {"finetune.start_gain", "finetune.end_gain", "finetune.forgot"} <= set(facts)
    assert f"Fine-tuned from pretrain, finetuned starts at val loss" in text
    pretrain_val = runs["pretrain"].data.metrics["val_loss"]
    tuned_verdict = tuned.metrics["val_loss/verdict"]
    assert (f"What finetuned forgot of verdict: its verdict val loss went from {pretrain_val:.3f} (pretrain's last) "
            f"to {tuned_verdict:.3f}") in text
    assert facts["finetune.forgot"] == pytest.approx(tuned_verdict - pretrain_val)
    assert "memorised" not in text  # the corpora differ to fine-tune, not to compare memorisation
    assert any(path.name == "fine_tuning.png" and path.stat().st_size > 0 for path in result.report_files)
    [table] = [path for path in result.report_files if path.name == "runs.csv"]
    rows = pd.read_csv(table).set_index("run_name")
    assert rows.loc["finetuned", "init_from"] == pretrain_id and pd.isna(rows.loc["scratch", "init_from"])


def test_the_finetune_exercise_compares_at_one_budget_at_both_scales():
    for scale in ("cpu", "gpu"):
        points = [p.settings for p in load_sweep("finetune", scale=scale).points]
        [tuned] = [s for s in points if s.init_from]
        [scratch] = [s for s in points if not s.init_from and s.corpus == tuned.corpus == "shakespeare"]
        assert tuned.max_tokens == scratch.max_tokens > 0
        assert tuned.eval_corpus == scratch.eval_corpus == "tinystories"
