"""`python -m pipeline.generate`: text from a training run's last checkpoint, or from a logged model."""

import click

from pipeline.errors import SettingsError, run_cli


@click.command()
@click.option("--run-id", default="", help="MLflow run id of a training run: its last checkpoint.")
@click.option("--model", "model_uri", default="",
              help="A logged model's URI instead: models:/m-ID, models:/NAME/VERSION (registered) or runs:/RUN/model.")
@click.option("--prompt", default="The", show_default=True, help="Text the generation continues.")
@click.option("--max-new-tokens", default=100, show_default=True, type=click.IntRange(1), help="Tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0),
              help="Sampling temperature; 0 picks the likeliest token every time.")
@click.option("--top-k", default=40, show_default=True, type=click.IntRange(0),
              help="Sample among the k likeliest tokens (0 = all).")
@click.option("--seed", default=1337, show_default=True, help="Seed for sampling: the same seed gives the same text.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def main(run_id, model_uri, prompt, max_new_tokens, temperature, top_k, seed, device):
    """Continue a prompt with the model a training run saved last, or with a logged model.

    \b
    Examples:
      python -m pipeline.generate --run-id 0123abcd --prompt "I HAD always thought"
      python -m pipeline.generate --model models:/m-0123abcd --prompt "I HAD always thought"
    """
    if bool(run_id.strip()) == bool(model_uri.strip()):
        raise SettingsError("give either --run-id or --model")
    if not prompt:
        raise SettingsError("prompt is empty: give some text to continue")
    from pipeline.errors import OutdatedModelError

    if model_uri:
        from pipeline.tracking import connect
        from pipeline.tracking.models import load_generator

        connect()
        try:
            generator = load_generator(model_uri.strip(), device)
            params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed}
            click.echo(prompt + generator.predict([prompt], params=params)[0])
            return
        except OutdatedModelError as error:  # its weights are still read as --init-from reads them
            click.echo(f"note: {error}; reading its weights directly", err=True)
    from pipeline.training.device import pick_device
    from pipeline.tracking.checkpoints import model_from_run
    from pipeline.training.sampling import complete

    torch_device = pick_device(device)
    if model_uri:
        from pipeline.training.init_from import model_from_source

        model, enc = model_from_source(model_uri.strip(), torch_device)
    else:
        model, enc = model_from_run(run_id, torch_device)
    click.echo(prompt + complete(model, enc, prompt, max_new_tokens, temperature, top_k, seed, torch_device).text)


if __name__ == "__main__":
    run_cli(main)
