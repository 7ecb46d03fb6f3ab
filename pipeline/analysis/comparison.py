"""The comparison report of a set of runs (a sweep's children, or an experiment's runs): PNG plots and a table.

Files written to the report folder:
  report.md           the findings (what the runs show, from their numbers), the plots, the table of runs and
                      the last sample of every run side by side
  loss_curves.png     train (solid) and val (dashed) loss of every run against tokens seen, one colour a run
  final_val_loss.png  final val loss against the swept setting (the first of SWEEP_PREFERENCE whose values differ),
                      one line per combination of the other swept settings
  val_bpb_by_time.png instead, when tokenizers or optimizers differ: val_bpb against minutes of training, one
                      line a run
  scaling.png         only when model sizes differ: final val loss against non-embedding parameters N on log-log
                      axes, with the fitted power law L(N) = (Nc/N)^alpha (the best run at each size is fitted)
  fine_tuning.png     only when a run started from other weights (--init-from): its val loss beside the run from
                      scratch on its corpus, and both runs' val loss on the other corpora they scored
  loss_by_position.png  the val loss at each position of the context, each run's last evaluation
  induction_over_training.png  when runs scored their heads: val loss, in_context_gain and the best induction
                      score against tokens seen; induction_head_{before,after}_RUN.png, the attention of the layer
                      where an induction head formed, before it formed and at the end
  runs.csv, runs.md   one row a run: name, status, key params, final and best losses, tokens seen, diagnosis
  samples.csv         the last sample of every run, with its step and novelty

With a parent run, the files are logged under its report/ artifacts, and the findings become its description
(what the MLflow UI shows on the run's page) and its `lab.finding` tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.analysis import finetuning, plots
from pipeline.analysis.curves import MODEL_SIZE, RunCurves, load_runs, number, sort_key, swept_params
from pipeline.analysis.findings import Findings, comparable_metric, find
from pipeline.analysis.fits import PowerLaw
from pipeline.analysis.inside import read_inside
from pipeline.tracking.samples import SampleReader

# the params shown in the table, as logged by the trainer
TABLE_PARAMS = ("config", "corpus", "tokenizer", "optimizer", "lr", "muon_lr", "context_length", "batch_size",
                "max_steps", "epochs", "max_tokens", MODEL_SIZE, "init_from")
# MLflow keeps tag values up to this many characters
MAX_TAG_LENGTH = 8000
TABLE_COLUMNS = ("run_name", "run_id", "status", *TABLE_PARAMS, "final_train_loss", "final_val_loss",
                 "min_val_loss", "final_val_bpb", "tokens_seen", "tokens_per_sec", "diagnosis")


@dataclass(frozen=True, eq=False)
class Report:
    out_dir: Path
    files: tuple[Path, ...]  # every file written, in the order written
    table: pd.DataFrame  # the rows of runs.csv
    swept: tuple[str, ...]  # the settings that differ across the runs, the x axis of final_val_loss first
    findings: Findings
    fit: PowerLaw | None = None  # the scaling law, when scaling.png was drawn with a fit

    @property
    def alpha(self) -> float | None:
        return self.fit.alpha if self.fit else None

    @property
    def nc(self) -> float | None:
        return self.fit.nc if self.fit else None


def build_report(client: MlflowClient, runs: pd.DataFrame | Sequence[str], out_dir: Path,
                 parent_run_id: str | None = None, metric: str = "val_loss", goal: str = "minimize") -> Report:
    """Write the findings, plots and tables of runs to out_dir; when parent_run_id is given, also log them as its
    artifacts under report/ and store the findings on it. `metric` and `goal` pick the best run (val_bpb for
    val_loss where the runs' tokenizers differ).
    Raises ReportError when there are no runs, TrackingError for an unknown run."""
    if parent_run_id:
        tracking.get_run(client, parent_run_id)
    loaded = load_runs(client, runs)
    swept = swept_params(loaded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []

    metric = comparable_metric(metric, (run.value("tokenizer") for run in loaded))
    findings = find(loaded, swept, metric, goal)
    table = run_table(loaded, swept)
    table.to_csv(out_dir / "runs.csv", index=False)
    files.append(out_dir / "runs.csv")
    (out_dir / "runs.md").write_text(_markdown(table))
    files.append(out_dir / "runs.md")
    samples = sample_table(client, loaded, swept)
    samples.to_csv(out_dir / "samples.csv", index=False)
    files.append(out_dir / "samples.csv")

    plots.loss_curves(loaded, swept, out_dir / "loss_curves.png")
    files.append(out_dir / "loss_curves.png")
    # nats per token differ by tokenizer; optimizers differ in speed, so they also compare at equal wall time
    if ("tokenizer" in swept or "optimizer" in swept) and any(run.bpb_times for run in loaded):
        plots.bpb_by_time(loaded, swept, out_dir / "val_bpb_by_time.png")
        files.append(out_dir / "val_bpb_by_time.png")
    elif any(run.final_val is not None for run in loaded):
        plots.final_val(loaded, swept, out_dir / "final_val_loss.png")
        files.append(out_dir / "final_val_loss.png")
    tuned = finetuning.pairs(loaded)
    if tuned:
        plots.fine_tuning(tuned, out_dir / "fine_tuning.png")
        files.append(out_dir / "fine_tuning.png")
    fit = None
    sizes = {number(run.params.get(MODEL_SIZE)) for run in loaded if run.final_val is not None}
    if len(sizes - {None}) >= 2:
        fit = plots.scaling(loaded, out_dir / "scaling.png")
        files.append(out_dir / "scaling.png")

    inside = read_inside(client, loaded, swept, out_dir)
    files += inside.files
    findings = Findings(findings.lines + inside.lines, {**findings.facts, **inside.facts})
    (out_dir / "report.md").write_text(_document(findings, files, table, samples))
    files.insert(0, out_dir / "report.md")

    if parent_run_id:
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="report")
        client.set_tag(parent_run_id, "mlflow.note.content", "## Findings\n\n" + findings.text)
        client.set_tag(parent_run_id, "lab.finding", findings.text[:MAX_TAG_LENGTH])
    return Report(out_dir, tuple(files), table, tuple(swept), findings, fit)


def sample_table(client: MlflowClient, runs: Sequence[RunCurves], swept: Sequence[str] = ()) -> pd.DataFrame:
    """The last sample of every run, one row a run, labelled by what differs across the runs."""
    reader = SampleReader(client)
    rows = []
    for run in runs:
        sample = reader.latest(run.run_id, run.artifact_uri or None) or {}
        rows.append({"run": run.label(swept), "step": sample.get("step"), "novelty": run.final_novelty,
                     "sample": " ".join(str(sample.get("text", "")).split())})
    return pd.DataFrame(rows, columns=["run", "step", "novelty", "sample"])


def _document(findings: Findings, files: Sequence[Path], table: pd.DataFrame, samples: pd.DataFrame) -> str:
    images = "\n".join(f"![{path.stem}]({path.name})" for path in files if path.suffix == ".png")
    return (f"# Report\n\n## Findings\n\n{findings.text}\n\n## Plots\n\n{images}\n\n"
            f"## The last sample of every run\n\n{_markdown(samples)}\n## Runs\n\n{_markdown(table)}")


def run_table(runs: Sequence[RunCurves], swept: Sequence[str] = ()) -> pd.DataFrame:
    """One row a run (TABLE_COLUMNS), sorted by the swept settings, then name. The diagnosis is the run's
    `diagnosis` tag, else worked out from its curves."""
    rows = []
    for run in runs:
        rows.append({
            "run_name": run.name, "run_id": run.run_id, "status": run.status,
            **{key: run.value(key) for key in TABLE_PARAMS},
            "final_train_loss": run.final_train, "final_val_loss": run.final_val, "min_val_loss": run.min_val,
            "final_val_bpb": run.metrics.get("val_bpb"), "tokens_seen": run.tokens_seen,
            "tokens_per_sec": run.metrics.get("tokens_per_sec"), "diagnosis": run.diagnosis,
        })
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["tokens_seen"] = table["tokens_seen"].astype("Int64")  # whole numbers, blank where unknown
    keys = [run_key for run_key in swept if run_key in table] + ["run_name"]
    order = sorted(range(len(runs)), key=lambda i: tuple(sort_key(table.iloc[i][k]) for k in keys))
    return table.iloc[order].reset_index(drop=True)


def _markdown(table: pd.DataFrame) -> str:
    """The table for a README or a pull request: losses to 4 places, params as logged, blanks where missing."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return value.replace("|", "\\|") if isinstance(value, str) else value

    # tabulate only lays the cells out: a param such as lr 3e-4 stays as logged, not re-read as a number
    return table.astype(object).fillna("").map(cell).to_markdown(index=False, disable_numparse=True) + "\n"
