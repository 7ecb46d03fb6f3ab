"""`python -m pipeline.report`: plots and a table comparing runs (a sweep's children, or an experiment's runs)."""

from pathlib import Path

import click

from pipeline.errors import run_cli


@click.command()
@click.option("--parent-run-id", default=None, metavar="RUN_ID",
              help="Report on the child runs of this run (a sweep's parent run); the files are also logged as "
                   "its artifacts under report/.")
@click.option("--experiment", default=None, metavar="NAME",
              help="Report on the runs of this MLflow experiment instead (parent runs of runs in it are left out).")
@click.option("--filter", "filter_string", default="", metavar="FILTER",
              help="With --experiment: an MLflow search filter the runs must match, e.g. \"params.corpus = 'tiny'\".")
@click.option("--out", "out_dir", default="", type=click.Path(file_okay=False),
              help="Folder for the report's files; empty means the default  [default: reports/<parent run id or "
                   "experiment name>]")
def main(parent_run_id, experiment, filter_string, out_dir):
    """Compare runs: loss curves, final val loss against the swept setting, a scaling-law fit when model
    sizes differ, and a table of the runs (runs.csv, runs.md). Needs no GPU.

    \b
    Examples:
      python -m pipeline.report --parent-run-id 3f2a...
      python -m pipeline.report --experiment pretraining --filter "params.corpus = 'tiny'"
    """
    if bool(parent_run_id) == bool(experiment):
        raise click.UsageError("give either --parent-run-id or --experiment")
    if filter_string and not experiment:
        raise click.UsageError("--filter goes with --experiment")
    from pipeline import tracking
    from pipeline.analysis.comparison import build_report
    from pipeline.analysis.curves import runs_of_experiment, runs_of_parent

    client = tracking.connect()
    if parent_run_id:
        runs = runs_of_parent(client, parent_run_id)
    else:
        runs = runs_of_experiment(client, experiment, filter_string)
    label = parent_run_id or experiment
    # kept a string until here: click's Path type turns the empty value `mlflow run -e report` passes into "."
    out_dir = Path(out_dir) if out_dir else Path("reports") / "".join(
        c if c.isalnum() or c in "-_." else "_" for c in label)
    report = build_report(client, runs, out_dir, parent_run_id=parent_run_id)
    click.echo(f"report on {len(report.table)} run(s) in {report.out_dir}:")
    for path in report.files:
        click.echo(f"  {path}")
    if report.alpha is not None:
        click.echo(f"alpha = {report.alpha:.4f} (Nc = {report.nc:.3g})")
    if parent_run_id:
        click.echo(f"logged as artifacts of run {parent_run_id} under report/")


if __name__ == "__main__":
    run_cli(main)
