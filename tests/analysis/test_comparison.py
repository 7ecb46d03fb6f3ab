"""The comparison report, end to end on a real SQLite store with synthetic runs (no training), and its CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingError
from pipeline.analysis.comparison import build_report
from pipeline.analysis.fits import fit_power_law
from pipeline.analysis.curves import runs_of_experiment, runs_of_parent
from pipeline.errors import ReportError
from tests.conftest import assert_one_line_error, run_command, run_module

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = list(range(10, 410, 10))
TOKENS_PER_STEP = 2048
KAPLAN_ALPHA, KAPLAN_NC = 0.076, 8.8e13


def curve(start: float, end: float, steps=STEPS) -> list[tuple[int, float]]:
    return [(s, end + (start - end) * math.exp(-6 * s / steps[-1])) for s in steps]


def log_run(client: MlflowClient, experiment_id: str, name: str, params: dict, final_val: float,
            parent_id: str | None = None, tags: dict | None = None, val_rise: float = 0.0) -> str:
    """A finished run as the trainer leaves one: params, train_loss and tokens_seen every 10 steps, val_loss
    every 100, ending at final_val (after a rise of val_rise from its minimum)."""
    all_tags = {"mlflow.runName": name, "lab.config": "nano", "lab.corpus": "tiny", **(tags or {})}
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
    train = curve(10.8, final_val - 0.1 - val_rise)
    val = [(s, v) for s, v in curve(10.8, final_val - val_rise) if s % 100 == 0]
    val[-1] = (val[-1][0], final_val)
    metrics = ([Metric("train_loss", v, 0, s) for s, v in train] + [Metric("val_loss", v, 0, s) for s, v in val]
               + [Metric("tokens_seen", s * TOKENS_PER_STEP, 0, s) for s in STEPS])
    all_params = {"config": "nano", "corpus": "tiny", "batch_size": "8", "max_steps": "400",
                  "tokens_per_step": str(TOKENS_PER_STEP), **params}
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in all_params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def lr_sweep(store):
    """A parent run and 3 children that differ in lr only; the last one overfits and is tagged so."""
    client = MlflowClient(store)
    experiment_id = client.create_experiment("sweeps")
    parent = client.create_run(experiment_id, run_name="lr-sweep").info.run_id
    finals = {"1e-4": 4.2, "1e-3": 3.1, "1e-2": 3.6}
    children = {}
    for lr, final in finals.items():
        tags = {"diagnosis": "overfitting"} if lr == "1e-2" else None
        children[lr] = log_run(client, experiment_id, f"nano-tiny-lr{lr}",
                               {"lr": lr, "n_params_non_embedding": "100000", "context_length": "256"},
                               final, parent_id=parent, tags=tags, val_rise=0.3 if lr == "1e-2" else 0.0)
        for step in (200, 400):  # the trainer's samples; the report shows the last one of each run
            client.log_text(children[lr], f"A language model at lr {lr}, step {step}\n", f"samples/step_{step:06d}.txt")
        client.log_metric(children[lr], "novelty", 0.25, step=400)
    client.set_terminated(parent, "FINISHED")
    return client, parent, children, finals


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, (path, len(data))


def test_report_on_a_sweeps_children(lr_sweep, tmp_path):
    client, parent, children, finals = lr_sweep
    runs = runs_of_parent(client, parent)
    assert set(runs["run_id"]) == set(children.values())
    report = build_report(client, runs, tmp_path / "report", parent_run_id=parent)

    names = {path.name for path in report.files}
    assert names == {"report.md", "runs.csv", "runs.md", "samples.csv", "loss_curves.png",
                     "final_val_loss.png"}  # one size: no scaling
    for path in report.files:
        assert path.is_file() and path.parent == tmp_path / "report"
        if path.suffix == ".png":
            assert_png(path)
    assert report.swept == ("lr",) and report.alpha is None

    table = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(table) == 3
    assert table["lr"].tolist() == [1e-4, 1e-3, 1e-2]  # sorted by the swept setting
    assert table["final_val_loss"].round(6).tolist() == [finals[lr] for lr in ("1e-4", "1e-3", "1e-2")]
    assert table["tokens_seen"].tolist() == [400 * TOKENS_PER_STEP] * 3
    assert table["status"].tolist() == ["FINISHED"] * 3
    assert table["config"].tolist() == ["nano"] * 3
    by_lr = table.set_index("lr")
    assert by_lr.loc[1e-2, "diagnosis"] == "overfitting"  # its tag
    assert by_lr.loc[1e-2, "min_val_loss"] < by_lr.loc[1e-2, "final_val_loss"]
    assert by_lr.loc[1e-3, "diagnosis"] == "healthy"  # worked out from its curves
    markdown = (tmp_path / "report" / "runs.md").read_text().splitlines()
    assert len(markdown) == 2 + 3 and "nano-tiny-lr1e-3" in markdown[3]

    samples = pd.read_csv(tmp_path / "report" / "samples.csv")
    assert samples["run"].tolist() == ["lr=1e-4", "lr=1e-3", "lr=1e-2"]  # named by what differs
    assert samples["sample"].tolist() == [f"A language model at lr {lr}, step 400" for lr in ("1e-4", "1e-3", "1e-2")]
    assert samples["step"].tolist() == [400] * 3 and samples["novelty"].tolist() == [0.25] * 3

    document = (tmp_path / "report" / "report.md").read_text()
    assert document.index("## Findings") < document.index("## Plots") < document.index("## Runs")
    assert "Best run: nano-tiny-lr1e-3 (lr=1e-3), final val_loss 3.100." in document
    assert "No rate diverged or became unstable: extend the range upward (try 0.1)" in document
    assert "A language model at lr 1e-2, step 400" in document
    tags = client.get_run(parent).data.tags  # the MLflow UI shows the findings on the parent's page
    assert tags["lab.finding"] == report.findings.text and tags["lab.finding"].startswith("- Best run: ")
    assert tags["mlflow.note.content"] == "## Findings\n\n" + report.findings.text

    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in names}


def test_report_from_run_ids_and_from_an_experiment(lr_sweep, tmp_path):
    client, parent, children, finals = lr_sweep
    report = build_report(client, list(children.values()), tmp_path / "ids")
    assert len(report.table) == 3 and not client.list_artifacts(parent)  # no parent: nothing logged
    runs = runs_of_experiment(client, "sweeps", "params.lr = '1e-3'")
    assert runs["run_id"].tolist() == [children["1e-3"]]
    everything = runs_of_experiment(client, "sweeps")
    assert parent not in set(everything["run_id"])  # the parent of runs in the set is left out
    assert len(everything) == 3


def test_scaling_report_recovers_alpha(store, tmp_path):
    client = MlflowClient(store)
    experiment_id = client.create_experiment("scaling")
    sizes = [1e5, 4e5, 1.6e6, 6.4e6]
    ids = []
    for size in sizes:
        final = (KAPLAN_NC / size) ** KAPLAN_ALPHA
        ids.append(log_run(client, experiment_id, f"n{size:.0e}",
                           {"lr": "1e-3", "n_params_non_embedding": str(int(size)), "context_length": "256"},
                           final))
    report = build_report(client, ids, tmp_path / "scaling")
    assert report.swept == ("n_params_non_embedding",)
    assert "scaling.png" in {p.name for p in report.files}
    assert_png(tmp_path / "scaling" / "scaling.png")
    assert report.alpha == pytest.approx(KAPLAN_ALPHA, rel=1e-6)
    assert report.nc == pytest.approx(KAPLAN_NC, rel=1e-4)


def test_power_law_fit_exact_and_noisy():
    n = np.geomspace(1e5, 1e9, 9)
    exact = fit_power_law(n, (KAPLAN_NC / n) ** KAPLAN_ALPHA)
    assert exact.alpha == pytest.approx(KAPLAN_ALPHA, rel=1e-9)
    assert exact.nc == pytest.approx(KAPLAN_NC, rel=1e-6)
    assert exact.r_squared == pytest.approx(1.0) and exact.alpha_stderr == pytest.approx(0.0, abs=1e-9)
    noisy = (KAPLAN_NC / n) ** KAPLAN_ALPHA * np.exp(np.random.default_rng(0).normal(0, 0.01, len(n)))
    fit = fit_power_law(n, noisy)
    assert fit.alpha == pytest.approx(KAPLAN_ALPHA, abs=0.01)
    assert 0.9 < fit.r_squared < 1.0 and 0 < fit.alpha_stderr < 0.01
    assert fit.sizes == 9
    # the standard error is that of an ordinary least-squares slope: numpy's covariance gives the same
    _, cov = np.polyfit(np.log(n), np.log(noisy), 1, cov="unscaled")
    residuals = np.log(noisy) - np.polyval(np.polyfit(np.log(n), np.log(noisy), 1), np.log(n))
    assert fit.alpha_stderr == pytest.approx(math.sqrt(cov[0, 0] * np.sum(residuals ** 2) / (len(n) - 2)))
    assert fit_power_law([1e6, 1e7], [3.0, 2.5]).alpha_stderr is None  # a line through two points
    with pytest.raises(ReportError, match="two or more"):
        fit_power_law([1e6, 1e6], [3.0, 3.1])
    with pytest.raises(ReportError, match="positive"):
        fit_power_law([1e6, 1e7], [3.0, -1.0])
    with pytest.raises(ReportError, match="does not change"):
        fit_power_law([1e6, 1e7], [3.0, 3.0])


def test_unknown_runs_and_empty_sets_are_typed_errors(store, tmp_path):
    client = MlflowClient(store)
    experiment_id = client.create_experiment("empty")
    lonely = client.create_run(experiment_id).info.run_id
    with pytest.raises(TrackingError, match="no MLflow run"):
        runs_of_parent(client, "f" * 32)
    with pytest.raises(ReportError, match="no child runs"):
        runs_of_parent(client, lonely)
    with pytest.raises(TrackingError, match="no MLflow experiment named 'nope'"):
        runs_of_experiment(client, "nope")
    with pytest.raises(ReportError, match="no runs in experiment 'empty'"):
        runs_of_experiment(client, "empty", "params.lr = '1'")
    with pytest.raises(ReportError, match="refuses the filter"):
        runs_of_experiment(client, "empty", "params.lr ==== 1")
    with pytest.raises(ReportError, match="no runs"):
        build_report(client, [], tmp_path)
    with pytest.raises(TrackingError):
        build_report(client, [lonely], tmp_path, parent_run_id="f" * 32)


def test_cli(lr_sweep, tmp_path):
    client, parent, children, _ = lr_sweep
    shown = run_module("pipeline.report", "--help")
    assert shown.returncode == 0
    for option in ("--parent-run-id", "--experiment", "--filter", "--out"):
        assert option in shown.stdout

    assert_one_line_error(run_command("pipeline.report", "--parent-run-id", "f" * 32, cwd=tmp_path),
                          "no MLflow run with id")
    assert_one_line_error(run_command("pipeline.report", cwd=tmp_path), "--parent-run-id or --experiment")

    # the empty values `mlflow run -e report` passes for the options not given mean the defaults
    done = run_module("pipeline.report", "--parent-run-id", parent, "--experiment", "", "--filter", "", "--out", "",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("*.png"))
    folder = tmp_path / "reports" / parent
    for name in ("runs.csv", "runs.md", "loss_curves.png", "final_val_loss.png"):
        assert str(Path("reports") / parent / name) in done.stdout
        assert (folder / name).is_file()
