"""The shard cache: reuse by content and by the settings the user chose, damaged shards found cheaply, and
processes that tokenize the same corpus at once taking turns. Real files, real tiktoken, real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.corpora import CorpusText, fetch
from pipeline.data.sharding import shard_corpus
from pipeline.data.shards import HEADER_BYTES, load_shards
from pipeline.errors import ShardError
from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, run_command, run_module

TINY = PROJECT_DIR / "corpus" / "tiny.txt"
SHAKESPEARE_TOKENS = 338_025  # tiktoken gpt2 on tinyshakespeare.txt, train and val


def corpus_of(*paths: Path, name: str = "sample", val: tuple[Path, ...] | None = None) -> CorpusText:
    return CorpusText(name, tuple(paths), val, "The", "test")


def tokens_file(path: Path, copies: int = 5) -> Path:
    path.write_text(TINY.read_text() * copies)
    return path


def flip_a_token(shard: Path) -> bytes:
    """Set the middle token to 65535 (no GPT-2 token: garbage to a model) and move the mtime on; the old bytes."""
    data = shard.read_bytes()
    middle = HEADER_BYTES + (len(data) - HEADER_BYTES) // 4 * 2
    shard.write_bytes(data[:middle] + b"\xff\xff" + data[middle + 2:])
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    return data


# ---------------------------------------------------------------- the settings the user chose


def test_settings_left_unsaid_keep_what_the_shards_were_made_with(tmp_path):
    source = tokens_file(tmp_path / "notes.txt")
    chosen = shard_corpus(corpus_of(source), cache=tmp_path, val_fraction=0.3, shard_tokens=50).shards
    assert chosen.val_fraction == 0.3 and chosen.tokenizer == "gpt2"

    again = shard_corpus(corpus_of(source), cache=tmp_path)  # as training calls it
    assert again.skipped
    assert again.shards.val_fraction == 0.3 and again.shards.manifest["key"]["shard_tokens"] == 50

    with open(source, "a", encoding="utf-8") as f:
        f.write("A new closing sentence about the loss.\n")
    changed = shard_corpus(corpus_of(source), cache=tmp_path)  # a changed source keeps the choice
    assert not changed.skipped
    assert changed.shards.val_fraction == 0.3 and changed.shards.manifest["key"]["shard_tokens"] == 50

    assert shard_corpus(corpus_of(source), cache=tmp_path, val_fraction=0.3).skipped
    other = shard_corpus(corpus_of(source), cache=tmp_path, val_fraction=0.1)  # only an explicit other value
    assert not other.skipped and other.shards.val_fraction == 0.1
    assert other.shards.val_tokens < changed.shards.val_tokens
    assert shard_corpus(corpus_of(source), cache=tmp_path).shards.val_fraction == 0.1


def test_a_corpus_with_its_own_val_split_has_no_val_fraction(tmp_path):
    train, val = tokens_file(tmp_path / "train.txt"), tokens_file(tmp_path / "val.txt", copies=1)
    corpus = corpus_of(train, val=(val,))
    shards = shard_corpus(corpus, cache=tmp_path, val_fraction=0.3).shards
    assert shards.val_fraction is None and shards.manifest["split_rule"] == "the source's own validation split"
    assert shard_corpus(corpus, cache=tmp_path, val_fraction=0.2).skipped  # no fraction applies to it


# ---------------------------------------------------------------- keyed on content, not paths


def test_a_moved_cache_and_a_copied_corpus_are_recognised_by_content(tmp_path):
    here = tmp_path / "here"
    first = shard_corpus(fetch("verdict", cache=here).corpus, cache=here).shards
    assert str(tmp_path) not in json.dumps(first.manifest["key"])
    there = tmp_path / "there"  # the project moved or cloned again, its corpus cache with it
    shutil.move(here, there)
    moved = shard_corpus(fetch("verdict", cache=there).corpus, cache=there)
    assert moved.skipped and moved.shards.tokens_sha256 == first.tokens_sha256

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    tokens_file(folder / "a.txt")
    tokens_file(folder / "sub" / "b.txt", copies=1)
    files = (folder / "a.txt", folder / "sub" / "b.txt")
    made = shard_corpus(corpus_of(*files), cache=tmp_path)
    copy = tmp_path / "elsewhere" / "notes"
    shutil.copytree(folder, copy)
    again = shard_corpus(corpus_of(*(copy / f.relative_to(folder) for f in files)), cache=tmp_path)
    assert again.skipped and again.shards.manifest == made.shards.manifest
    assert [name for _, name, _ in made.shards.manifest["key"]["sources"]] == ["a.txt", "sub/b.txt"]


# ---------------------------------------------------------------- damaged shards


def truncate_consistently(shard: Path) -> bytes:
    """Drop the last token and lower the header's count to match: a size check alone cannot tell."""
    data = shard.read_bytes()
    header = np.frombuffer(data[:HEADER_BYTES], dtype=np.int32).copy()
    header[2] -= 1
    shard.write_bytes(header.tobytes() + data[HEADER_BYTES:-2])
    return data


@pytest.mark.parametrize("damage, fragment", [(flip_a_token, "changed after it was written"),
                                              (truncate_consistently, "its manifest says")])
def test_a_shard_changed_after_tokenizing_is_refused_then_rebuilt(tmp_path, damage, fragment):
    first = shard_corpus(corpus_of(tokens_file(tmp_path / "notes.txt")), cache=tmp_path).shards
    shard = first.folder / "train_000.bin"
    good = damage(shard)
    with pytest.raises(ShardError, match=fragment) as caught:
        load_shards(first.folder)
    assert str(shard) in str(caught.value)
    again = shard_corpus(corpus_of(tmp_path / "notes.txt"), cache=tmp_path)
    assert not again.skipped
    assert shard.read_bytes() == good and again.shards.tokens_sha256 == first.tokens_sha256


def test_only_shards_whose_mtime_moved_are_hashed(tmp_path):
    first = shard_corpus(corpus_of(tokens_file(tmp_path / "notes.txt")), cache=tmp_path).shards
    shard = first.folder / "val_000.bin"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same tokens
    touched = shard_corpus(corpus_of(tmp_path / "notes.txt"), cache=tmp_path)
    assert touched.skipped
    recorded = json.loads((first.folder / "manifest.json").read_text())["splits"]["val"][0]["mtime_ns"]
    assert recorded == shard.stat().st_mtime_ns == stat.st_mtime_ns + 10**9  # hashed once, then recorded

    # The price of a cheap check: an edit that puts the recorded mtime back is not hashed, so not seen.
    data = shard.read_bytes()
    shard.write_bytes(data[:-2] + b"\xff\xff")
    os.utime(shard, ns=(stat.st_atime_ns, recorded))
    assert shard_corpus(corpus_of(tmp_path / "notes.txt"), cache=tmp_path).skipped


def test_training_after_a_shard_was_edited_rebuilds_it_at_the_chosen_split(tmp_path, store):
    from mlflow.tracking import MlflowClient

    env = {"CORPUS_CACHE": str(tmp_path / "cache")}
    made = run_module("pipeline.tokenize", "--corpus", "tiny", "--val-fraction", "0.3", env=env)
    assert made.returncode == 0, made.stderr
    assert "tiny: written" in made.stdout and "val fraction 0.3" in made.stdout
    again = run_module("pipeline.tokenize", "--corpus", "tiny", env=env)
    assert "tiny: already up to date" in again.stdout and "val fraction 0.3" in again.stdout
    folder = tmp_path / "cache" / "shards" / "tiny"
    chosen = load_shards(folder)
    shard = folder / "train_000.bin"
    good = flip_a_token(shard)

    result = run_command("pipeline.train", "--corpus", "tiny", "--max-steps", "1", "--n-layer", "1", "--n-embd",
                         "32", "--n-head", "2", "--context-length", "16", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard.read_bytes() == good
    client = MlflowClient(store)
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FINISHED"
    assert run.data.params["shards_sha256"] == chosen.tokens_sha256
    assert run.data.params["val_tokens"] == str(chosen.val_tokens)


# ---------------------------------------------------------------- processes at once


def test_two_processes_tokenizing_at_once_take_turns(tmp_path):
    env = {**os.environ, "PYTHONPATH": child_python_path(), "CORPUS_CACHE": str(tmp_path)}
    command = [sys.executable, "-m", "pipeline.tokenize", "--corpus", "shakespeare"]
    processes = [subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    states = sorted("written" if "shakespeare: written" in out else
                    "reused" if "shakespeare: already up to date" in out else out for out, _ in outputs)
    assert states == ["reused", "written"]
    shards = load_shards(tmp_path / "shards" / "shakespeare")
    assert shards.train_tokens + shards.val_tokens == SHAKESPEARE_TOKENS
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shakespeare", "shakespeare.lock"]


def test_a_cache_where_no_lock_can_be_taken_still_serves_its_shards(tmp_path):
    first = shard_corpus(corpus_of(TINY, name="tiny"), cache=tmp_path)
    lock = tmp_path / "shards" / "tiny.lock"
    lock.unlink()
    lock.mkdir()  # cannot be opened for writing, as in a read-only cache
    again = shard_corpus(corpus_of(TINY, name="tiny"), cache=tmp_path)
    assert again.skipped and again.shards.manifest == first.shards.manifest
