"""`python -m pipeline.tokenize`: a corpus's tokens (GPT-2 BPE, bytes or a BPE learned from it), in memmapped .bin
shards."""

import click

from pipeline.data.corpora import fetch
from pipeline.data.sharding import shard_corpus
from pipeline.data.shard_cache import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION
from pipeline.errors import run_cli
from pipeline.settings import TrainSettings, tokenizer_vocab_size


class Optional(click.ParamType):
    """A value of the inner type, or empty for "not given": how `mlflow run` passes a parameter left at its
    default ""."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.inner.convert(value, param, ctx)


@click.command()
@click.option("--corpus", default="verdict", show_default=True,
              help="Corpus name from corpus/registry.yaml, or a path to a text file or folder.")
@click.option("--val-fraction", type=Optional(click.FLOAT), default=None,
              help="Share of the text held out for validation, where the source has no validation split. "
                   f"[default: what the existing shards used, else {DEFAULT_VAL_FRACTION}]")
@click.option("--shard-tokens", type=Optional(click.INT), default=None,
              help="Tokens per .bin shard file. "
                   f"[default: what the existing shards used, else {DEFAULT_SHARD_TOKENS}]")
@click.option("--gutenberg", type=Optional(click.Choice(["trim", "keep"])), default=None,
              help="A Project Gutenberg book: trim keeps only what lies between its START and END markers, keep "
                   "tokenizes its licence header and footer too. [default: what the existing shards used, else trim]")
@click.option("--tokenizer", default=TrainSettings.tokenizer, show_default=True,
              help=TrainSettings.__dataclass_fields__["tokenizer"].metadata["help"])
def main(corpus, val_fraction, shard_tokens, gutenberg, tokenizer):
    """Tokenize a corpus into corpus/shards/CORPUS/ (CORPUS.bpe-N/ and CORPUS.bytes/ for the other tokenizers).

    Downloads the corpus first if needed. Writes train_NNN.bin and val_NNN.bin (llm.c format: a 256 x int32
    header, then uint16 tokens) and manifest.json. Does nothing when the shards are up to date; training reuses
    them whatever --val-fraction made them.
    """
    tokenizer_vocab_size(tokenizer)  # a misspelt tokenizer is refused before any download
    fetched = fetch(corpus)
    trim = None if gutenberg is None else gutenberg == "trim"
    result = shard_corpus(fetched.corpus, val_fraction=val_fraction, shard_tokens=shard_tokens,
                          trim_gutenberg=trim, tokenizer=tokenizer)
    shards = result.shards
    if shards.manifest.get("cleaning"):
        click.echo(shards.manifest["cleaning"])
    state = "already up to date" if result.skipped else "written"
    split = "the source's own val split" if shards.val_fraction is None else f"val fraction {shards.val_fraction}"
    click.echo(f"{shards.manifest['corpus']}: {state} in {shards.folder} "
               f"({shards.train_tokens:,} train tokens, {shards.val_tokens:,} val tokens of {tokenizer}; {split})")


if __name__ == "__main__":
    run_cli(main)
