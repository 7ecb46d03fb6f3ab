"""`python -m pipeline.sweep`: run a named sweep from experiments.yaml, then its comparison report."""

import signal

import click

from pipeline.errors import run_cli
from pipeline.sweeps.spec import EXPERIMENTS_PATH, load_sweep


@click.command()
@click.option("--name", required=True, help="Sweep name in the experiments file (e.g. lr_sensitivity).")
@click.option("--file", "path", default=str(EXPERIMENTS_PATH), show_default=True, type=click.Path(),
              help="The experiments file.")
@click.option("--scale", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="For an exercise defined at two scales (NAME_cpu, NAME_gpu): which one. auto picks gpu where "
                   "PyTorch sees a CUDA GPU, else cpu.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Runs trained at once, each in its own process.")
@click.option("--dry-run", type=bool, is_flag=False, flag_value=True, default=False, show_default=True,
              help="List the runs the sweep would make, and which are already finished, without running.")
@click.option("--print-commands", type=bool, is_flag=False, flag_value=True, default=False, show_default=True,
              help="Print one shell command per run not yet finished, for a scheduler (Slurm, Kubernetes) to run "
                   "against the same tracking server; run the sweep again afterwards for its report.")
def main(name, path, scale, workers, dry_run, print_commands):
    """Run every point of a sweep as a child of one parent MLflow run.

    The whole experiments file is checked first. Points that already FINISHED with the same settings are
    skipped, so running a sweep again finishes what is missing. A failed run does not stop the others. When
    the runs are done, the report's plots and table are logged to the parent run.

    \b
    Example:
      python -m pipeline.sweep --name lr_sensitivity            # lr_sensitivity_cpu on a laptop
      python -m pipeline.sweep --name scaling --scale gpu --dry-run
    """
    sweep = load_sweep(name, path, scale)
    from pipeline import tracking
    from pipeline.sweeps.runner import describe, plan, run_sweep, scheduler_commands

    client = tracking.connect()
    if print_commands:
        for command in scheduler_commands(client, sweep):
            click.echo(command)
        return
    if dry_run:
        from pipeline.sweeps.search import describe_trials

        for line in describe_trials(client, sweep) if sweep.search else describe(plan(client, sweep)):
            click.echo(line)
        return
    # A shell that starts a job in the background has it ignore SIGINT; the dashboard stops a sweep with SIGINT,
    # so take it back: Ctrl-C (or Stop) ends the running children and starts no more.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    result = run_sweep(client, sweep, workers=workers)
    for file in result.report_files:
        click.echo(f"report: {file}")
    if result.findings:
        click.echo(f"findings:\n{result.findings.text}")
    click.echo(f"parent run {result.parent_run_id}: {result.status}")


if __name__ == "__main__":
    run_cli(main)
