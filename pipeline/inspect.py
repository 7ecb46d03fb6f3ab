"""`python -m pipeline.inspect`: look inside a trained model: attention maps and head scores, logged to its run."""

import click

from pipeline.errors import SettingsError, run_cli


@click.command()
@click.option("--run-id", default="", help="MLflow run id of a training run: its newest checkpoint, or --step's.")
@click.option("--step", type=click.IntRange(-1), default=-1, show_default=True,
              help="The checkpoint of this step (a run keeps its newest two); -1: the newest.")
@click.option("--model", "model_uri", default="",
              help="A logged model's URI instead: models:/m-ID, models:/NAME/VERSION (registered) or runs:/RUN/model.")
@click.option("--prompt", default="", help="Text to look at (empty: the run's own sample prompt).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def main(run_id, step, model_uri, prompt, device):
    """Attention of every head over a prompt, one image per layer, and each head's induction and previous-token
    scores, logged to the run at the checkpoint's step (the MLflow UI's image view slides through the steps),
    with a self-contained HTML view of the whole.

    \b
    Examples:
      python -m pipeline.inspect --run-id 0123abcd
      python -m pipeline.inspect --run-id 0123abcd --step 500 --prompt "Tom had a red ball. Tom"
      python -m pipeline.inspect --model models:/m-0123abcd
    """
    if bool(run_id.strip()) == bool(model_uri.strip()):
        raise SettingsError("give either --run-id or --model")
    if model_uri and step != -1:
        raise SettingsError("--step picks a run's checkpoint: give it with --run-id, not --model")
    from pipeline.interpret.stored import inspect_stored
    from pipeline.training.device import pick_device

    done = inspect_stored(run_id.strip(), None if step == -1 else step, model_uri.strip(), prompt,
                          pick_device(device))
    layer, head, score = done.scores.best("induction")
    pool = ("the run's val tokens, as in training" if done.scored_on_val_text
            else "every token id: the run logged no score pool, so these may read lower than training's")
    click.echo(f"step {done.step}: attention over {done.prompt!r} logged as attention/layer_N; best induction "
               f"head: layer {layer} head {head} ({score:.3f}, chance {done.scores.chance:.3f}; scored on {pool})")
    click.echo(f"view: {done.page} in {done.ui_url}")


if __name__ == "__main__":
    run_cli(main)
