"""`python -m pipeline.download`: fetch a corpus into the local cache."""

import click

from pipeline.data.corpora import fetch, load_registry
from pipeline.errors import run_cli


@click.command()
@click.option("--corpus", default="verdict", show_default=True,
              help="Corpus name from corpus/registry.yaml, or a path to a text file or folder.")
def main(corpus):
    """Download a corpus into corpus/downloads/, checked against its sha256.

    Takes the files from $CORPUS_MIRROR first when it names a folder laid out like shared/data. A second call
    does no work. Known corpora:

    \b
      verdict      "The Verdict" by Edith Wharton, ~5K tokens (default)
      tiny         a few sentences, for smoke tests
      shakespeare  Tiny Shakespeare, ~300K tokens
      tinystories  TinyStories, through Hugging Face datasets
      wikitext2    WikiText-2 (raw), through Hugging Face datasets
    """
    result = fetch(corpus, registry=load_registry())
    files = ", ".join(str(p) for p in result.corpus.train + (result.corpus.val or ()))
    click.echo(f"{result.corpus.name}: {result.action} ({files})")


if __name__ == "__main__":
    run_cli(main)
