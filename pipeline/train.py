"""`python -m pipeline.train`: train a GPT on a corpus, tracked in MLflow."""

import click

from pipeline.data.corpora import resolve
from pipeline.errors import run_cli
from pipeline.settings import options_given, settings_from_options, settings_options


@click.command()
@settings_options
def main(**options):
    """Train a GPT-2 style model on a corpus and log the run to MLflow.

    Downloads and tokenizes the corpus first when its shards are missing. Training stops at the first
    budget reached (--epochs, --max-steps, --max-tokens). Ctrl-C saves a checkpoint and ends the run KILLED;
    --resume RUN_ID continues it (the same command line plus --resume RUN_ID does too), and --resume RUN_ID
    with a larger budget trains a run longer, finished or not.

    \b
    Examples:
      python -m pipeline.train --config nano --corpus verdict --epochs 3
      python -m pipeline.train --resume RUN_ID --epochs 6
    """
    settings = settings_from_options(options).validate()  # bad input is refused before torch and MLflow load
    if not settings.resume:
        # here, not in validate(): the dashboard checks its form with validate() and leaves paths to the trainer
        for corpus in (settings.corpus, *settings.eval_corpora()):
            resolve(corpus)
    from pipeline.sweeps.study import TrialHandle
    from pipeline.training.state import TrainingInterrupted
    from pipeline.training.trainer import train

    try:
        result = train(settings, TrialHandle.from_env(), given=options_given(click.get_current_context()))
    except TrainingInterrupted as stopped:
        click.echo(str(stopped), err=True)
        raise SystemExit(130)
    if not result.main_process:
        return
    val = f", val_loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    pruned = ("" if result.pruned_at is None
              else f" (pruned at step {result.pruned_at}: behind the sweep's earlier trials)")
    click.echo(f"run {result.run_id} finished: {result.steps} steps, train_loss {result.train_loss:.4f}{val}{pruned}")
    if result.model_id:
        click.echo(f"model: models:/{result.model_id} (python -m pipeline.generate --model models:/{result.model_id})")
    click.echo(f"MLflow UI: {result.ui_url}")


if __name__ == "__main__":
    run_cli(main)
