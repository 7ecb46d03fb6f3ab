"""What a checkpoint carries of its run's tokenizer (tracking/checkpoints.py): enough to rebuild it anywhere, and
GPT-2's for checkpoints written before the tokenizer was a choice."""

from __future__ import annotations

from pipeline.data.corpora import CorpusText
from pipeline.data.sharding import shard_corpus
from pipeline.tracking.checkpoints import encoding_from_state, tokenizer_state
from tests.conftest import PROJECT_DIR

TEXT = "I HAD always thought Jack Gisburn rather a cheap genius — café 🙂"


def test_a_checkpoint_rebuilds_its_runs_tokenizer(tmp_path):
    tiny = PROJECT_DIR / "corpus" / "tiny.txt"
    shards = shard_corpus(CorpusText("tiny", (tiny,), None, "The", str(tiny)), cache=tmp_path,
                          tokenizer="bpe:260").shards
    state = tokenizer_state(shards)
    assert state["spec"] == "bpe:260" and state["ranks"] == (shards.folder / "tokenizer.tiktoken").read_text()
    rebuilt, original = encoding_from_state(state), shards.encoding
    assert rebuilt.encode_ordinary(TEXT) == original.encode_ordinary(TEXT) and rebuilt.n_vocab == 261


def test_a_checkpoint_without_a_tokenizer_is_gpt2s():
    assert encoding_from_state(None).name == "gpt2" and encoding_from_state(None).n_vocab == 50257
