"""A byte-level BPE learned from a corpus (data/bpe.py) and read by tiktoken (data/tokenizer.py): trained once per
module on a few KB of real text, it gives back any text exactly, within its vocabulary, as HF's own tokenizer
counts it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.bpe import train_bpe, unicode_to_byte
from pipeline.data.tokenizer import END_OF_TEXT, encoding_for, ranks_data, read_ranks
from tests.conftest import SHARED_DATA

N_TOKENS = 300


@pytest.fixture(scope="module")
def text() -> str:
    return (SHARED_DATA / "the-verdict.txt").read_text()[:6000]


@pytest.fixture(scope="module")
def bpe(text):
    return encoding_for(f"bpe:{N_TOKENS}", ranks_data(train_bpe([text], N_TOKENS)))


def test_ranks_are_the_bytes_then_the_merges_in_order(text):
    ranks = train_bpe([text], N_TOKENS)
    assert sorted(ranks.values()) == list(range(N_TOKENS))
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert read_ranks(ranks_data(ranks)) == ranks
    # a merge joins two tokens learned before it
    for token, rank in ranks.items():
        if rank >= 256:
            assert any(ranks.get(token[:i], N_TOKENS) < rank and ranks.get(token[i:], N_TOKENS) < rank
                       for i in range(1, len(token)))


def test_hf_byte_alphabet_maps_back_to_every_byte():
    from tokenizers import pre_tokenizers

    table = unicode_to_byte()
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet()) and sorted(table.values()) == list(range(256))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_a_trained_bpe_gives_back_any_text_within_its_vocabulary(bpe, sample):
    ids = bpe.encode_ordinary(sample)
    assert bpe.decode(ids) == sample
    assert all(0 <= i < N_TOKENS for i in ids)


def test_end_of_text_is_the_last_id(bpe):
    assert bpe.n_vocab == N_TOKENS + 1 and bpe.eot_token == N_TOKENS
    assert bpe.encode(END_OF_TEXT, allowed_special="all") == [N_TOKENS]


def test_tiktoken_splits_as_hf_does(text):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=N_TOKENS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ours = encoding_for(f"bpe:{N_TOKENS}", ranks_data(train_bpe([text], N_TOKENS)))
    for sample in (text, "Gisburn's cheap genius, 1897 — café!"):  # the training text, and text it never saw
        assert ours.encode_ordinary(sample) and len(ours.encode_ordinary(sample)) == len(hf.encode(sample).ids)


@given(st.text(max_size=300))
def test_bytes_tokenizer_gives_back_any_text_one_token_per_byte(sample):
    enc = encoding_for("bytes")
    ids = enc.encode_ordinary(sample)
    assert ids == list(sample.encode()) and enc.decode(ids) == sample
    assert enc.n_vocab == 257 and enc.eot_token == 256
