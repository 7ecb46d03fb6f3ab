"""A corpus's text into llm.c shards (data/sharding.py and the tokenize command), decoded back: real files, the
real GPT-2 BPE, offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.data import sharding
from pipeline.data.shard_cache import DEFAULT_SHARD_TOKENS
from pipeline.data.corpora import DOCUMENT_SEPARATOR, CorpusText, fetch
from pipeline.errors import CorpusError, ShardError
from pipeline.data.sharding import PIECE_BYTES, _SEPARATOR, _encode, _pieces, shard_corpus
from pipeline.data.tokenizer import encoding
from pipeline.data.shards import load_shards, read_shard
from pipeline.files import child_python_path
from tests.conftest import PROJECT_DIR, SHARED_DATA, assert_one_line_error, run_command, run_module

SEP = DOCUMENT_SEPARATOR
TINY = PROJECT_DIR / "corpus" / "tiny.txt"
VERDICT_TOKENS = 5145  # tiktoken gpt2 on the-verdict.txt (shared/data/SOURCES.md)


@pytest.fixture(scope="module")
def enc():
    return encoding()


def corpus_of(path: Path, name: str = "sample") -> CorpusText:
    return CorpusText(name, (Path(path),), None, "The", str(path))


def decode(enc, shard_list) -> str:
    tokens = np.concatenate([np.asarray(s) for s in shard_list]) if shard_list else np.empty(0, np.uint16)
    return enc.decode(tokens.tolist())


def normalised(text: str) -> str:
    """The text as its tokens decode: each separator, with the line end on either side, is one EOT token."""
    return SEP.join(_SEPARATOR.split(text))


def folder_state(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in sorted(folder.iterdir())}


def assert_nothing_left(cache: Path, name: str) -> None:
    """A failed tokenize leaves neither the shard folder nor its staging folder behind."""
    shards_dir = cache / "shards"
    leftovers = sorted(p.name for p in shards_dir.iterdir()) if shards_dir.exists() else []
    assert not [n for n in leftovers if n == name or n.startswith(f".{name}.")], leftovers


# ---------------------------------------------------------------- tokenize: round trips and the manifest


@pytest.mark.parametrize("name", ["verdict", "tiny"])
def test_shards_decode_back_to_the_text(name, tmp_path, enc):
    fetched = fetch(name, cache=tmp_path)
    result = shard_corpus(fetched.corpus, cache=tmp_path)
    assert not result.skipped
    text = fetched.corpus.train[0].read_text(encoding="utf-8")
    assert SEP not in text
    train, val = result.shards.split("train"), result.shards.split("val")
    assert decode(enc, train) + decode(enc, val) == text
    assert enc.eot_token not in np.concatenate(train) and enc.eot_token not in np.concatenate(val)

    manifest = result.shards.manifest
    assert result.shards.folder == tmp_path / "shards" / name
    assert manifest["corpus"] == name
    assert manifest["train_tokens"] == sum(len(s) for s in train) == result.shards.train_tokens
    assert manifest["val_tokens"] == sum(len(s) for s in val) == result.shards.val_tokens
    assert 0.07 < manifest["val_tokens"] / (manifest["train_tokens"] + manifest["val_tokens"]) < 0.13
    assert manifest["key"] == {
        "format": 3,
        "tokenizer": "gpt2",
        "sources": [["train", fetched.corpus.train[0].name, hashlib.sha256(text.encode()).hexdigest()]],
        "val_fraction": 0.1,
        "shard_tokens": DEFAULT_SHARD_TOKENS,
        "trim_gutenberg": True,
    }
    assert result.shards.val_fraction == 0.1 and result.shards.tokenizer == "gpt2"
    for split in ("train", "val"):
        for entry in manifest["splits"][split]:
            tokens = read_shard(result.shards.folder / entry["file"])
            assert entry["tokens"] == len(tokens)
            assert entry["sha256"] == hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest()
            assert entry["mtime_ns"] == (result.shards.folder / entry["file"]).stat().st_mtime_ns
    every_sha = "".join(s["sha256"] for split in ("train", "val") for s in manifest["splits"][split])
    assert manifest["tokens_sha256"] == hashlib.sha256(every_sha.encode()).hexdigest()
    assert json.loads((result.shards.folder / "manifest.json").read_text()) == manifest
    if name == "verdict":
        assert manifest["train_tokens"] + manifest["val_tokens"] == VERDICT_TOKENS


def test_rerun_is_skipped_and_touches_nothing(tmp_path):
    first = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path)
    before = folder_state(first.shards.folder)
    again = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path)
    assert again.skipped and not first.skipped
    assert again.shards.manifest == first.shards.manifest
    assert folder_state(again.shards.folder) == before


def test_changed_input_or_val_fraction_tokenizes_again(tmp_path, enc):
    source = tmp_path / "notes.txt"
    source.write_text(TINY.read_text())
    first = shard_corpus(corpus_of(source), cache=tmp_path)

    with open(source, "a", encoding="utf-8") as f:
        f.write("One more sentence about tokens and the loss.\n")
    changed = shard_corpus(corpus_of(source), cache=tmp_path)
    assert not changed.skipped
    assert changed.shards.manifest["key"]["sources"] != first.shards.manifest["key"]["sources"]
    total = changed.shards.train_tokens + changed.shards.val_tokens
    assert total > first.shards.train_tokens + first.shards.val_tokens
    text = source.read_text()
    assert decode(enc, changed.shards.split("train")) + decode(enc, changed.shards.split("val")) == text

    wider = shard_corpus(corpus_of(source), cache=tmp_path, val_fraction=0.3)
    assert not wider.skipped
    assert wider.shards.manifest["key"]["val_fraction"] == 0.3
    assert wider.shards.val_tokens > changed.shards.val_tokens
    assert shard_corpus(corpus_of(source), cache=tmp_path, val_fraction=0.3).skipped
    # the swap leaves only the live folder and its lock file: no staging folder, no retired one
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["sample", "sample.lock"]


def test_damaged_shards_are_tokenized_again(tmp_path):
    first = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path)
    shard = first.shards.folder / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    again = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path)
    assert not again.skipped
    assert again.shards.tokens_sha256 == first.shards.tokens_sha256
    assert again.shards.manifest["key"] == first.shards.manifest["key"]

    (first.shards.folder / "manifest.json").write_text("{}")  # valid JSON, but lists no shards
    with pytest.raises(ShardError, match="manifest.json"):
        load_shards(first.shards.folder)
    assert not shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path).skipped


def test_small_shards_concatenate_to_the_one_shard_output(tmp_path):
    corpus = fetch("verdict", cache=tmp_path).corpus
    whole = shard_corpus(corpus, cache=tmp_path / "one").shards
    split = shard_corpus(corpus, cache=tmp_path / "many", shard_tokens=200).shards
    for name in ("train", "val"):
        entries = split.manifest["splits"][name]
        assert len(entries) == -(-whole.manifest[f"{name}_tokens"] // 200) > 1
        assert [e["file"] for e in entries] == [f"{name}_{i:03d}.bin" for i in range(len(entries))]
        assert all(e["tokens"] == 200 for e in entries[:-1]) and 0 < entries[-1]["tokens"] <= 200
        assert np.array_equal(np.concatenate(split.split(name)), np.concatenate(whole.split(name)))
    assert split.manifest["key"]["shard_tokens"] == 200


def test_folder_corpus_puts_eot_between_files(tmp_path, enc):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    texts = {"a.txt": "First file, about attention. " * 20, "b.md": "# Second\nIt is markdown. " * 20,
             "sub/c.txt": "The third and last file. " * 8}
    for name, text in texts.items():
        (folder / name).write_text(text)
    (folder / "skip.csv").write_text("not,a,document\n")
    corpus = fetch(str(folder), cache=tmp_path).corpus
    result = shard_corpus(corpus, cache=tmp_path).shards
    assert decode(enc, result.split("train")) == texts["a.txt"] + SEP + texts["b.md"]
    assert decode(enc, result.split("val")) == texts["sub/c.txt"]
    assert result.manifest["split_rule"] == "the last file (document)"


def test_folder_corpus_with_many_files_holds_out_the_tail_files(tmp_path, enc):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [f"Document number {i} says hello to the model. " * 3 for i in range(20)]
    for i, text in enumerate(texts):
        (folder / f"doc{i:02d}.txt").write_text(text)
    result = shard_corpus(fetch(str(folder), cache=tmp_path).corpus, cache=tmp_path).shards
    assert result.manifest["split_rule"] == "files (documents) at the tail"
    train_docs = decode(enc, result.split("train")).split(SEP)
    val_docs = decode(enc, result.split("val")).split(SEP)
    assert train_docs + val_docs == texts and 1 <= len(val_docs) <= 2


def test_folder_corpus_whose_last_file_is_most_of_it_holds_out_only_a_tenth(tmp_path, enc):
    folder = tmp_path / "docs"
    folder.mkdir()
    small, big = "A short note. " * 5, "A long book about language models and their losses. " * 200
    (folder / "a.txt").write_text(small)
    (folder / "b.txt").write_text(big)
    result = shard_corpus(fetch(str(folder), cache=tmp_path).corpus, cache=tmp_path).shards
    assert 0.07 < result.val_tokens / (result.train_tokens + result.val_tokens) < 0.13
    assert result.manifest["split_rule"].startswith("within the last file")
    assert decode(enc, result.split("train")) + decode(enc, result.split("val")) == small + SEP + big


# ---------------------------------------------------------------- documents and pieces


def documents_file(path: Path, documents: list[str]) -> str:
    text = "".join(f"{doc}\n{SEP}\n" for doc in documents)
    path.write_text(text, encoding="utf-8")
    return text


def test_document_file_splits_at_a_document_boundary(tmp_path, enc):
    documents = [f"Story {i}. " + "Once upon a time a small model read a story. " * (3 + i % 5) for i in range(40)]
    path = tmp_path / "stories.txt"
    text = documents_file(path, documents)
    result = shard_corpus(corpus_of(path), cache=tmp_path).shards
    assert result.manifest["split_rule"] == "document boundary near the tail"
    train = np.concatenate(result.split("train"))
    val = np.concatenate(result.split("val"))
    assert train[-1] == enc.eot_token and val[-1] == enc.eot_token
    train_docs = decode(enc, [train]).split(SEP)[:-1]
    val_docs = decode(enc, [val]).split(SEP)[:-1]
    assert train_docs + val_docs == documents  # no document cut in two, none gains a stray line end
    assert 2 <= len(val_docs) <= 8
    assert decode(enc, [train]) + decode(enc, [val]) == normalised(text)


def test_document_file_whose_last_document_is_long_still_gets_a_val_split(tmp_path, enc):
    documents = ["A short first story about a cat.", "A long second story. " + "The dog ran far away. " * 60]
    path = tmp_path / "two.txt"
    text = documents_file(path, documents)
    result = shard_corpus(corpus_of(path), cache=tmp_path).shards
    assert result.val_tokens >= 2
    assert result.manifest["split_rule"] == "the tail, at a word boundary"
    assert decode(enc, result.split("train")) + decode(enc, result.split("val")) == normalised(text)


def test_separator_at_the_piece_boundary_is_one_eot(tmp_path, enc):
    """A separator line that straddles the 1 MiB piece boundary gives the same tokens as anywhere else."""
    doc = "word " * 199 + "end."
    documents, size = [], 0
    while size < PIECE_BYTES - 2000:
        documents.append(doc)
        size += len(doc) + len(SEP) + 2
    documents.append("x" * (PIECE_BYTES - 5 - size))  # its line end falls 5 bytes before the boundary
    documents += [doc] * 120
    path = tmp_path / "docs.txt"
    text = documents_file(path, documents)
    assert text.encode()[PIECE_BYTES - 5:PIECE_BYTES + 10] == b"\n" + SEP.encode() + b"\n"
    result = shard_corpus(corpus_of(path), cache=tmp_path).shards
    tokens = np.concatenate(result.split("train") + result.split("val"))
    assert int((tokens == enc.eot_token).sum()) == len(documents)
    assert decode(enc, result.split("train")) + decode(enc, result.split("val")) == normalised(text)


def test_long_line_of_multibyte_text_round_trips(tmp_path, enc):
    unit = "héllo wörld 日本語のテキスト 🎉 naïve café — "
    text = unit * (PIECE_BYTES * 3 // 2 // len(unit.encode()))
    data = text.encode()
    assert b"\n" not in data and len(data) > PIECE_BYTES
    assert data[PIECE_BYTES] & 0xC0 == 0x80  # the first 1 MiB ends inside a character
    path = tmp_path / "line.txt"
    path.write_bytes(data)
    result = shard_corpus(corpus_of(path), cache=tmp_path).shards
    assert decode(enc, result.split("train")) + decode(enc, result.split("val")) == text


alphabet = st.sampled_from(["a", "b", "cat ", " ", "\n", "\n\n", "é", "日本", "🎉", SEP, SEP, "<|", "|>"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(alphabet, max_size=60), piece_bytes=st.integers(16, 48))
@example(parts=["é", "<|", SEP, "\n"], piece_bytes=17)  # the separator ends the block, its line end opens the next
def test_pieces_of_any_size_give_the_same_documents(parts, piece_bytes):
    """With tiny pieces: the pieces cover the text, and every separator becomes exactly one EOT token with the
    line ends beside it dropped, wherever the pieces are cut."""
    enc = encoding()
    text = "".join(parts)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharding, "PIECE_BYTES", piece_bytes)
        path = Path(tmp) / "t.txt"
        path.write_bytes(text.encode())
        pieces = [piece for piece, _ in _pieces(path, 0, path.stat().st_size)]
    assert "".join(pieces) == text
    tokens = np.concatenate([_encode(enc, [p]) for p in pieces] or [np.empty(0, np.uint16)])
    assert enc.decode(tokens.tolist()) == normalised(text)
    assert int((tokens == enc.eot_token).sum()) == len(_SEPARATOR.findall(text))


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.lists(alphabet, max_size=30).map("".join), min_size=1, max_size=4))
def test_encode_matches_the_separator_rule(pieces):
    """_encode gives, piece by piece, each document's tokens with one EOT where _SEPARATOR matched."""
    enc = encoding()
    expected: list[int] = []
    for piece in pieces:
        documents = _SEPARATOR.split(piece)
        for index, document in enumerate(documents):
            expected += enc.encode_ordinary(document)
            if index < len(documents) - 1:
                expected.append(enc.eot_token)
    got = _encode(enc, pieces)
    assert got.dtype == np.uint16
    assert got.tolist() == expected


# ---------------------------------------------------------------- bad input


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        shard_corpus(corpus_of(path), cache=tmp_path)
    assert_nothing_left(tmp_path, "sample")


def lines_file(path: Path, size: int) -> bytearray:
    line = b"A line of plain text for the tokenizer to chew on.\n"
    data = bytearray((line * (size // len(line) + 1))[:size])
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("offset", [17, PIECE_BYTES + 1234, int(1.25 * PIECE_BYTES) - 40])
def test_not_utf8_names_the_byte_offset(tmp_path, offset):
    """A bad byte in the first piece, in a later one, and in the val part of the file."""
    path = tmp_path / "bad.txt"
    data = lines_file(path, int(1.25 * PIECE_BYTES))
    data[offset] = 0xFF
    path.write_bytes(data)
    with pytest.raises(CorpusError) as caught:
        shard_corpus(corpus_of(path), cache=tmp_path)
    assert f"byte offset {offset}" in str(caught.value)
    assert "0xff" in str(caught.value) and str(path) in str(caught.value)
    assert_nothing_left(tmp_path, "sample")


def test_cut_off_character_at_the_end_names_its_offset(tmp_path):
    path = tmp_path / "cut.txt"
    data = bytes(lines_file(path, 5000)) + "€".encode()[:2]  # a 3-byte character missing its last byte
    path.write_bytes(data)
    with pytest.raises(CorpusError, match=f"byte offset {len(data) - 2}"):
        shard_corpus(corpus_of(path), cache=tmp_path)


def test_val_split_under_two_tokens_is_refused(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("hello world")  # val is the tail "ld": one token
    with pytest.raises(CorpusError, match=r"val split .* 1 token\(s\)"):
        shard_corpus(corpus_of(path), cache=tmp_path)
    assert_nothing_left(tmp_path, "sample")


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="val_fraction"):
        shard_corpus(corpus_of(TINY), cache=tmp_path, val_fraction=1.0)
    with pytest.raises(CorpusError, match="shard_tokens"):
        shard_corpus(corpus_of(TINY), cache=tmp_path, shard_tokens=1)
    with pytest.raises(CorpusError, match="not found"):
        shard_corpus(corpus_of(tmp_path / "gone.txt"), cache=tmp_path)


# ---------------------------------------------------------------- the CLI


def test_cli_tokenize_twice(tmp_path):
    env = {"CORPUS_CACHE": str(tmp_path)}
    first = run_module("pipeline.tokenize", "--corpus", "tiny", "--val-fraction", "0.3", env=env)
    assert first.returncode == 0, first.stderr
    assert "tiny: written in" in first.stdout and "train tokens" in first.stdout
    second = run_module("pipeline.tokenize", "--corpus", "tiny", env=env)  # keeps the fraction chosen
    assert second.returncode == 0, second.stderr
    assert "tiny: already up to date" in second.stdout and "val fraction 0.3" in second.stdout
    assert load_shards(tmp_path / "shards" / "tiny").train_tokens > 0


def test_cli_not_utf8_is_one_line_naming_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Plain text, then caf".encode() + "é".encode("latin-1") + b" and more text.\n" * 5)
    result = run_module("pipeline.tokenize", "--corpus", str(path), env={"CORPUS_CACHE": str(tmp_path)})
    assert_one_line_error(result, "not UTF-8", "byte offset 20", "0xe9")


def test_cli_truncated_shard_is_a_clear_error_and_tokenize_repairs_it(tmp_path):
    env = {"CORPUS_CACHE": str(tmp_path)}
    assert run_module("pipeline.tokenize", "--corpus", "tiny", env=env).returncode == 0
    folder = tmp_path / "shards" / "tiny"
    shard = folder / "val_000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])

    # reading the damaged folder through the CLI error path: one line naming the file and the fault
    check = ("import sys, click\n"
             "from pipeline.errors import run_cli\n"
             "from pipeline.data.shards import load_shards\n"
             "run_cli(click.Command('check', callback=lambda: load_shards(sys.argv[1])), [])")
    loaded = subprocess.run([sys.executable, "-c", check, str(folder)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": child_python_path()}, timeout=120)
    assert_one_line_error(loaded, "val_000.bin", "truncated")
    # a shard folder is not a corpus
    assert_one_line_error(run_command("pipeline.tokenize", "--corpus", str(folder), env=env),
                          "holds no .txt or .md files")
    # tokenize sees the damage and writes the shards again
    again = run_module("pipeline.tokenize", "--corpus", "tiny", env=env)
    assert again.returncode == 0, again.stderr
    assert "tiny: written in" in again.stdout
    assert len(load_shards(folder).split("val")[0]) > 0


# ---------------------------------------------------------------- tokenizers other than GPT-2's


def test_two_tokenizers_keep_their_own_shards_and_neither_rebuilds_the_other(tmp_path):
    verdict = corpus_of(SHARED_DATA / "the-verdict.txt", "verdict")
    gpt2 = shard_corpus(verdict, cache=tmp_path)
    bpe = shard_corpus(verdict, cache=tmp_path, tokenizer="bpe:300")
    assert (gpt2.shards.folder.name, bpe.shards.folder.name) == ("verdict", "verdict.bpe-300")
    before = {s.folder: folder_state(s.folder) for s in (gpt2.shards, bpe.shards)}
    for tokenizer in ("gpt2", "bpe:300", "gpt2"):
        assert shard_corpus(verdict, cache=tmp_path, tokenizer=tokenizer).skipped
    assert {folder: folder_state(folder) for folder in before} == before

    enc = bpe.shards.encoding
    assert enc.n_vocab == 301 and bpe.shards.tokenizer == "bpe:300"
    text = (SHARED_DATA / "the-verdict.txt").read_text()
    assert decode(enc, bpe.shards.split("train")) + decode(enc, bpe.shards.split("val")) == text
    assert bpe.shards.train_tokens + bpe.shards.val_tokens > VERDICT_TOKENS  # 300 tokens cover less than 50,257
    assert max(int(s.max()) for s in bpe.shards.split("train")) < 301
    manifest = bpe.shards.manifest
    assert manifest["tokenizer_sha256"] == hashlib.sha256((bpe.shards.folder / "tokenizer.tiktoken").read_bytes()
                                                          ).hexdigest()


def test_bytes_shards_hold_the_texts_bytes(tmp_path):
    shards = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path, tokenizer="bytes").shards
    assert shards.folder.name == "tiny.bytes"
    assert shards.train_tokens + shards.val_tokens == len(TINY.read_bytes())
    assert decode(shards.encoding, shards.split("train")) + decode(shards.encoding, shards.split("val")) \
        == TINY.read_text()


@pytest.mark.parametrize("in_train", [False, True])
def test_a_learned_bpe_sees_no_val_text(tmp_path, in_train):
    """A word that fills the val split is one token only where the train split has it too."""
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    story = (SHARED_DATA / "the-verdict.txt").read_text()[:4000]
    train.write_text(story + (" quixotry" * 300 if in_train else ""))
    val.write_text(" quixotry" * 300)
    corpus = CorpusText(f"split{int(in_train)}", (train,), (val,), "The", str(train))
    enc = shard_corpus(corpus, cache=tmp_path, tokenizer="bpe:400").shards.encoding
    assert (len(enc.encode_ordinary(" quixotry")) == 1) == in_train


def test_a_changed_tokenizer_file_is_refused(tmp_path):
    shards = shard_corpus(corpus_of(TINY, "tiny"), cache=tmp_path, tokenizer="bpe:260").shards
    (shards.folder / "tokenizer.tiktoken").write_bytes(b"")
    with pytest.raises(ShardError, match="tokenize the corpus again"):
        shards.encoding


@pytest.mark.parametrize("tokenizer", ["bpe:3", "bpe:x", "bpe:70000", "bpe:0300", "sentencepiece"])
def test_cli_an_unknown_tokenizer_is_one_line(tokenizer):
    assert_one_line_error(run_module("pipeline.tokenize", "--corpus", str(TINY), "--tokenizer", tokenizer),
                          f"unknown tokenizer '{tokenizer}'")


def test_cli_a_train_split_too_small_for_the_bpe_asked_is_one_line(tmp_path):
    result = run_module("pipeline.tokenize", "--corpus", str(TINY), "--tokenizer", "bpe:65535",
                        env={"CORPUS_CACHE": str(tmp_path)})
    assert_one_line_error(result, "runs out of byte pairs to merge", "choose bpe:N with N at most")
