"""The shard cache: reuse by content and by the settings the user chose. Real files, real tiktoken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.data.corpora import CorpusText, fetch
from pipeline.data.encoding import tokenize
from tests.conftest import PROJECT_DIR

TINY = PROJECT_DIR / "corpus" / "tiny.txt"


def corpus_of(*paths: Path, name: str = "sample", val: tuple[Path, ...] | None = None) -> CorpusText:
    return CorpusText(name, tuple(paths), val, "The", "test")


def tokens_file(path: Path, copies: int = 5) -> Path:
    path.write_text(TINY.read_text() * copies)
    return path


# ---------------------------------------------------------------- the settings the user chose


def test_settings_left_unsaid_keep_what_the_shards_were_made_with(tmp_path):
    source = tokens_file(tmp_path / "notes.txt")
    chosen = tokenize(corpus_of(source), cache=tmp_path, val_fraction=0.3, shard_tokens=50).shards
    assert chosen.val_fraction == 0.3 and chosen.tokenizer == "gpt2"

    again = tokenize(corpus_of(source), cache=tmp_path)  # as training calls it
    assert again.skipped
    assert again.shards.val_fraction == 0.3 and again.shards.manifest["key"]["shard_tokens"] == 50

    with open(source, "a", encoding="utf-8") as f:
        f.write("A new closing sentence about the loss.\n")
    changed = tokenize(corpus_of(source), cache=tmp_path)  # a changed source keeps the choice
    assert not changed.skipped
    assert changed.shards.val_fraction == 0.3 and changed.shards.manifest["key"]["shard_tokens"] == 50

    assert tokenize(corpus_of(source), cache=tmp_path, val_fraction=0.3).skipped
    other = tokenize(corpus_of(source), cache=tmp_path, val_fraction=0.1)  # only an explicit other value
    assert not other.skipped and other.shards.val_fraction == 0.1
    assert other.shards.val_tokens < changed.shards.val_tokens
    assert tokenize(corpus_of(source), cache=tmp_path).shards.val_fraction == 0.1


def test_a_corpus_with_its_own_val_split_has_no_val_fraction(tmp_path):
    train, val = tokens_file(tmp_path / "train.txt"), tokens_file(tmp_path / "val.txt", copies=1)
    corpus = corpus_of(train, val=(val,))
    shards = tokenize(corpus, cache=tmp_path, val_fraction=0.3).shards
    assert shards.val_fraction is None and shards.manifest["split_rule"] == "the source's own validation split"
    assert tokenize(corpus, cache=tmp_path, val_fraction=0.2).skipped  # no fraction applies to it


# ---------------------------------------------------------------- keyed on content, not paths


def test_a_moved_cache_and_a_copied_corpus_are_recognised_by_content(tmp_path):
    here = tmp_path / "here"
    first = tokenize(fetch("verdict", cache=here).corpus, cache=here).shards
    assert str(tmp_path) not in json.dumps(first.manifest["key"])
    there = tmp_path / "there"  # the project moved or cloned again, its corpus cache with it
    shutil.move(here, there)
    moved = tokenize(fetch("verdict", cache=there).corpus, cache=there)
    assert moved.skipped and moved.shards.tokens_sha256 == first.tokens_sha256

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    tokens_file(folder / "a.txt")
    tokens_file(folder / "sub" / "b.txt", copies=1)
    files = (folder / "a.txt", folder / "sub" / "b.txt")
    made = tokenize(corpus_of(*files), cache=tmp_path)
    copy = tmp_path / "elsewhere" / "notes"
    shutil.copytree(folder, copy)
    again = tokenize(corpus_of(*(copy / f.relative_to(folder) for f in files)), cache=tmp_path)
    assert again.skipped and again.shards.manifest == made.shards.manifest
    assert [name for _, name, _ in made.shards.manifest["key"]["sources"]] == ["a.txt", "sub/b.txt"]
