"""The memorization metric: exact fractions on known copies, shard seams, the on-disk index and its rebuilds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import ngrams
from pipeline.data import shards as shards_module
from pipeline.data.corpora import CorpusText
from pipeline.errors import ShardError
from pipeline.data.ngrams import NgramIndex, ngram_hashes
from pipeline.data.sharding import shard_corpus
from pipeline.data.shards import Shards, load_shards, write_shard
from tests.conftest import PROJECT_DIR

MADE_UP = 60_000  # token ids from here up never occur in the synthetic train splits (drawn below 50,000)


def make_shards(folder: Path, train: list[np.ndarray], val: np.ndarray | None = None) -> Shards:
    """A shard folder as tokenize writes it: .bin shards and a manifest whose tokens_sha256 follows the tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    val = np.arange(100, dtype=np.uint16) if val is None else val
    splits = {}
    for split, arrays in (("train", train), ("val", [val])):
        splits[split] = []
        for index, tokens in enumerate(arrays):
            name = f"{split}_{index:03d}.bin"
            write_shard(folder / name, np.asarray(tokens, dtype=np.uint16))
            digest = hashlib.sha256(np.asarray(tokens, dtype=np.uint16).tobytes()).hexdigest()
            splits[split].append({"file": name, "tokens": len(tokens), "sha256": digest})
    manifest = {
        "corpus": folder.name, "splits": splits,
        "train_tokens": sum(len(t) for t in train), "val_tokens": len(val),
        "tokens_sha256": hashlib.sha256("".join(s["sha256"] for v in splits.values() for s in v).encode()).hexdigest(),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_shards(folder)


def random_tokens(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50_000, count).astype(np.uint16)


@pytest.fixture
def two_shards(tmp_path):
    train = [random_tokens(5_000, 1), random_tokens(3_000, 2)]
    return make_shards(tmp_path / "synthetic", train), train


def test_copy_of_20_then_20_made_up_tokens(two_shards):
    shards, train = two_shards
    index = NgramIndex.load_or_build(shards)
    generation = list(train[0][1000:1020]) + list(range(MADE_UP, MADE_UP + 20))
    # 33 8-grams: the 13 that lie wholly inside the copied 20 tokens are found, none of the 20 that reach past it
    assert index.copied_fraction(generation) == 13 / 33
    assert index.novelty(generation) == 20 / 33
    assert index.copied_mask(generation).tolist() == [True] * 13 + [False] * 20
    assert index.copied_fraction(list(train[1][:500])) == 1.0
    assert index.copied_fraction(list(range(MADE_UP, MADE_UP + 50))) == 0.0


def test_short_generations_have_no_fraction(two_shards):
    shards, train = two_shards
    index = NgramIndex.load_or_build(shards)
    assert index.copied_fraction(list(train[0][:7])) is None
    assert index.novelty([]) is None
    assert index.copied_fraction(list(train[0][:8])) == 1.0


def test_no_ngram_spans_two_shards(two_shards):
    shards, train = two_shards
    index = NgramIndex.load_or_build(shards)
    seam = np.concatenate([train[0][-4:], train[1][:4]])
    assert index.copied_fraction(seam) == 0.0
    assert len(index) == len(np.unique(np.concatenate([ngram_hashes(t) for t in train])))


def test_tokens_beyond_uint16_are_never_copied(two_shards):
    shards, train = two_shards
    index = NgramIndex.load_or_build(shards)
    generation = [int(t) for t in train[0][:10]]
    generation[9] += 2**16  # would alias train[0][9] if it were truncated to 16 bits
    assert index.copied_mask(generation).tolist() == [True, True, False]


def test_index_is_reused_from_disk_then_rebuilt_when_the_tokens_change(two_shards, monkeypatch):
    shards, train = two_shards
    first = NgramIndex.load_or_build(shards)
    assert first.built and first.path == shards.folder / "ngrams8.npy"
    assert json.loads((shards.folder / "ngrams8.json").read_text())["tokens_sha256"] == shards.tokens_sha256
    stamp = first.path.stat().st_mtime_ns

    with monkeypatch.context() as patched:  # reusing the index must not read the shards
        patched.setattr(Shards, "split", lambda self, name: pytest.fail("read the shards"))
        second = NgramIndex.load_or_build(shards)
    assert not second.built and second.path.stat().st_mtime_ns == stamp
    assert isinstance(second.hashes, np.memmap)

    changed = [random_tokens(5_000, 3), train[1]]
    shards = make_shards(shards.folder, changed)
    third = NgramIndex.load_or_build(shards)
    assert third.built
    assert third.copied_fraction(list(changed[0][:40])) == 1.0
    assert third.copied_fraction(list(train[0][:40])) == 0.0
    assert NgramIndex.load_or_build(shards, n=4).path.name == "ngrams4.npy"  # each n has its own index


def test_a_damaged_index_is_rebuilt(two_shards):
    shards, train = two_shards
    index = NgramIndex.load_or_build(shards)
    data = index.path.read_bytes()
    del index
    (shards.folder / "ngrams8.npy").write_bytes(data[: len(data) // 2])
    again = NgramIndex.load_or_build(shards)
    assert again.built and again.copied_fraction(list(train[0][:40])) == 1.0


def test_chunks_and_buckets_give_the_same_index(tmp_path, monkeypatch):
    train = [random_tokens(20_000, 4), random_tokens(7, 5), random_tokens(9_000, 6)]  # one shard shorter than n
    whole = NgramIndex.load_or_build(make_shards(tmp_path / "whole", train))
    monkeypatch.setattr(ngrams, "CHUNK_TOKENS", 1_000)
    monkeypatch.setattr(ngrams, "BUCKET_HASHES", 3_000)  # 16 buckets
    pieces = NgramIndex.load_or_build(make_shards(tmp_path / "pieces", train))
    assert np.array_equal(np.asarray(whole.hashes), np.asarray(pieces.hashes))
    assert np.all(np.diff(np.asarray(pieces.hashes)) > 0)  # sorted and unique
    seam = train[0][995:1005]  # 8-grams across a chunk seam are indexed
    assert pieces.copied_fraction(seam) == 1.0


def test_a_split_shorter_than_n_gives_an_empty_index(tmp_path):
    shards = make_shards(tmp_path / "short", [random_tokens(5, 7)])
    index = NgramIndex.load_or_build(shards)
    assert len(index) == 0 and index.copied_fraction(list(range(10))) == 0.0
    assert not NgramIndex.load_or_build(shards).built


def test_queries_touch_only_the_index(tmp_path, monkeypatch):
    """Benchmark-shaped, not timed: a 2M-token split indexed once, then many queries with the shards unreadable."""
    train = [random_tokens(2_000_000, 8)]
    shards = make_shards(tmp_path / "big", train)
    index = NgramIndex.load_or_build(shards)
    assert len(index) > 1_990_000
    monkeypatch.setattr(shards_module, "read_shard", lambda path: pytest.fail("read a shard"))
    monkeypatch.setattr(Shards, "split", lambda self, name: pytest.fail("read the shards"))
    index = NgramIndex.load_or_build(shards)
    assert not index.built
    starts = np.random.default_rng(9).integers(0, 2_000_000 - 64, 2_000)
    made_up = list(range(MADE_UP, MADE_UP + 32))
    fractions = {index.copied_fraction(list(train[0][s: s + 32]) + made_up) for s in starts}
    assert fractions == {25 / 57}


def test_novelty_of_real_text(tmp_path):
    path = PROJECT_DIR / "corpus" / "tiny.txt"
    shards = shard_corpus(CorpusText("tiny_novelty", (path,), None, "The", str(path)), cache=tmp_path).shards
    train = np.concatenate([np.asarray(s) for s in shards.split("train")])
    unseen = [t for t in range(1000, 50_000) if t not in set(train.tolist())][:20]
    index = NgramIndex.load_or_build(shards)
    generation = list(train[30:50]) + unseen
    assert index.copied_fraction(generation) == 13 / 33
    assert index.path.parent == shards.folder


def test_an_unwritable_folder_is_a_shard_error(two_shards, monkeypatch):
    shards, _ = two_shards

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ngrams.tempfile, "mkdtemp", refuse)
    with pytest.raises(ShardError, match="cannot write the 8-gram index"):
        NgramIndex.load_or_build(shards)
