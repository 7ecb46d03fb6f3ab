"""The optimizers reading (analysis/optimizers.py), on synthetic runs: each optimizer at its best rate, and which
reached the common val loss first in tokens and in seconds, and by how much."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from pipeline.analysis import plots
from pipeline.analysis.comparison import run_table
from pipeline.analysis.curves import RunCurves, swept_params
from pipeline.analysis.findings import find
from pipeline.analysis.optimizers import first_reach

EVALS = range(1, 11)  # evaluations every 100 steps of 1,000 tokens


def optimizer_run(optimizer: str, rate: float, final: float, seconds_per_step: float) -> RunCurves:
    """Val loss falling linearly from 6 to final over 1,000 steps."""
    val = [(100 * i, 6 - (6 - final) * i / 10) for i in EVALS]
    params = {"optimizer": optimizer, "lr": rate if optimizer == "adamw" else 0.003,
              "muon_lr": rate if optimizer == "muon" else 0.02, "tokens_per_step": 1000}
    return RunCurves(run_id=f"{optimizer}{rate}", name=f"{optimizer}-{rate}", status="FINISHED",
                     params={k: str(v) for k, v in params.items()}, tags={}, train=val, val=val, tokens=[],
                     bpb_times=tuple((step * seconds_per_step, value / 3) for step, value in val),
                     eval_seconds=tuple((step, step * seconds_per_step) for step, _ in val))


def sweep_runs(muon_seconds_per_step: float) -> list[RunCurves]:
    return [optimizer_run("adamw", 0.001, 4.4, 0.1), optimizer_run("adamw", 0.003, 4.0, 0.1),
            optimizer_run("adamw", 0.01, 4.2, 0.1), optimizer_run("muon", 0.01, 3.8, muon_seconds_per_step),
            optimizer_run("muon", 0.02, 3.6, muon_seconds_per_step),
            optimizer_run("muon", 0.05, 5.0, muon_seconds_per_step)]


def test_muon_reaching_adamws_best_loss_in_fewer_tokens_and_seconds_is_named_first_in_both():
    runs = sweep_runs(muon_seconds_per_step=0.12)
    swept = swept_params(runs)
    assert swept[:3] == ["optimizer", "lr", "muon_lr"]
    findings = find(runs, swept)
    facts = findings.facts
    assert facts["best_rate"] == {"adamw": 0.003, "muon": 0.02} and facts["target_val_loss"] == pytest.approx(4.0)
    assert facts["rates_tried"] == {"adamw": [0.001, 0.003, 0.01], "muon": [0.01, 0.02, 0.05]}
    # muon falls 0.24 an evaluation: 4.0 after 8.33 evaluations, 833 steps
    assert facts["tokens_to_target"] == pytest.approx({"adamw": 1_000_000, "muon": 833_333}, rel=1e-3)
    assert facts["seconds_to_target"] == pytest.approx({"adamw": 100.0, "muon": 100.0}, rel=1e-3)
    assert facts["first_in_tokens"] == "muon" and facts["first_in_seconds"] is None  # 20% slower steps: a tie
    text = findings.text
    assert "adamw by lr: 0.001 -> val 4.400; 0.003 -> val 4.000; 0.01 -> val 4.200; its best is 0.003." in text
    assert "muon by muon_lr: 0.01 -> val 3.800; 0.02 -> val 3.600; 0.05 -> val 5.000; its best is 0.02." in text
    assert "To val loss 4.000 (the higher of the best runs' final val losses): adamw after 1M tokens and " \
           "100 s; muon after 833K tokens and 100 s." in text
    assert "In tokens, muon got there first, in 0.83x adamw's tokens." in text
    assert "In time, adamw and muon got there about together (1.00x)" in text
    assert "By learning rate" not in text  # the rates are read per optimizer, not mixed together


def test_faster_steps_win_in_seconds_and_an_edge_rate_asks_for_a_wider_range():
    runs = [optimizer_run("adamw", 0.001, 4.4, 0.1), optimizer_run("adamw", 0.003, 4.0, 0.1),
            optimizer_run("muon", 0.01, 3.9, 0.05), optimizer_run("muon", 0.02, 3.6, 0.05)]
    findings = find(runs, swept_params(runs))
    assert findings.facts["first_in_seconds"] == "muon" and findings.facts["first_in_tokens"] == "muon"
    assert "The largest lr tried was best: try a larger one." in findings.text
    assert "The largest muon_lr tried was best: try a larger one." in findings.text
    assert "In time, muon got there first, in 0.42x adamw's time." in findings.text


def test_one_optimizer_alone_is_not_compared_and_a_loss_never_reached_has_no_time():
    runs = [optimizer_run("adamw", 0.001, 4.4, 0.1), optimizer_run("adamw", 0.003, 4.0, 0.1)]
    assert first_reach(runs[0], 3.0) == (None, None)
    assert first_reach(runs[0], 6.0) == (pytest.approx(100_000), pytest.approx(10.0))  # at the first evaluation
    failed = replace(optimizer_run("muon", 0.02, 3.5, 0.1), status="FAILED")
    findings = find([*runs, failed], ["optimizer"])
    assert "Fewer than two optimizers have a finished run" in findings.text and "target_val_loss" not in findings.facts


def test_the_wall_time_plot_and_the_table_show_each_run_by_its_optimizer_and_own_rate(tmp_path):
    runs = sweep_runs(muon_seconds_per_step=0.12)
    table = run_table(runs, swept_params(runs))
    rows = table.set_index("run_name")
    assert rows.loc["adamw-0.001", ["optimizer", "lr"]].tolist() == ["adamw", "0.001"]
    assert pd.isna(rows.loc["adamw-0.001", "muon_lr"])  # every run logs muon_lr; only Muon's runs train with it
    assert rows.loc["muon-0.05", "muon_lr"] == "0.05"
    assert runs[0].label(swept_params(runs)) == "optimizer=adamw, lr=0.001"
    assert runs[3].label(swept_params(runs)) == "optimizer=muon, lr=0.003, muon_lr=0.01"
    plots.bpb_by_time(runs, swept_params(runs), tmp_path / "val_bpb_by_time.png")
    assert (tmp_path / "val_bpb_by_time.png").stat().st_size > 10_000
