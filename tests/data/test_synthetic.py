"""Corpora the lab writes: `repeats` is the same text on every machine, every document a segment said three times,
and fetching it writes it once into the cache."""

from __future__ import annotations

from pipeline.data.corpora import fetch, load_registry
from pipeline.files import sha256_of
from pipeline.data.synthetic import REPEATS, SEGMENT_WORDS, WORDS, made_up_words, repeated_segments
from pipeline.errors import CorpusError
from pipeline.data import synthetic

import pytest


def test_every_document_is_a_segment_of_made_up_words_said_three_times():
    text = repeated_segments(documents=200)
    documents = text.split("<|endoftext|>")
    assert len(documents) == 200
    vocabulary = set(made_up_words())
    assert len(vocabulary) == WORDS
    for document in documents:
        words = document.split(" ")
        length = len(words) // REPEATS
        assert REPEATS == 3 and words == words[:length] * REPEATS
        assert SEGMENT_WORDS[0] <= length <= SEGMENT_WORDS[1]
        assert set(words) <= vocabulary
    assert repeated_segments(documents=200) == text  # seeded: the same corpus everywhere
    assert repeated_segments(documents=200, seed=1) != text


def test_fetching_repeats_writes_it_once(tmp_path):
    first = fetch("repeats", cache=tmp_path)
    target = tmp_path / "downloads" / "repeats" / "train.txt"
    assert first.action == "written" and first.corpus.train == (target,) and first.corpus.val is None
    assert target.read_text().startswith(repeated_segments(documents=1))
    assert first.corpus.source == "pipeline/data/synthetic.py:repeats"
    assert sha256_of(target) == load_registry()["repeats"].sha256  # the registry names the text this code writes
    target.write_text("an older recipe")
    assert fetch("repeats", cache=tmp_path).action == "written" and sha256_of(target) == load_registry()["repeats"].sha256
    second = fetch("repeats", cache=tmp_path)
    assert second.action == "already present" and second.corpus == first.corpus


def test_an_unknown_generator_is_a_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="unknown synthetic corpus 'echoes'"):
        synthetic.write("echoes", tmp_path / "train.txt")
    assert not list(tmp_path.iterdir())
