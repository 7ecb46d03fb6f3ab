"""What of a text file is its text: no byte order mark, and a Project Gutenberg book without its licence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.cleaning import text_extent
from pipeline.data.corpora import CorpusText
from pipeline.data.sharding import shard_corpus
from pipeline.data.tokenizer import encoding
from tests.conftest import assert_one_line_error, run_command

HEADER = ("\ufeffThe Project Gutenberg eBook of A Short Tale\r\n\r\nThis ebook is for the use of anyone anywhere "
          "in the United States and most other parts of the world at no cost.\r\n\r\n"
          "*** START OF THE PROJECT GUTENBERG EBOOK A SHORT TALE ***\r\n")
BODY = "".join(f"Chapter {i}. The river ran past the mill, and the miller's daughter counted boats.\r\n\r\n"
               for i in range(40))
FOOTER = ("*** END OF THE PROJECT GUTENBERG EBOOK A SHORT TALE ***\r\n\r\nUpdated editions will replace the "
          "previous one. Section 1. General Terms of Use and Redistributing Project Gutenberg electronic works\r\n")


def tokens_as_text(shards) -> str:
    tokens = np.concatenate([np.asarray(s) for split in ("train", "val") for s in shards.split(split)])
    return encoding().decode(tokens.tolist())


def corpus_of(path: Path) -> CorpusText:
    return CorpusText("book", (path,), None, "The", str(path))


def test_a_gutenberg_book_is_trained_on_what_lies_between_its_markers(tmp_path):
    book = tmp_path / "book.txt"
    book.write_bytes((HEADER + BODY + FOOTER).encode())
    extent = text_extent(book)
    assert extent.gutenberg and book.read_bytes()[extent.start:extent.end].decode() == BODY

    trimmed = shard_corpus(corpus_of(book), cache=tmp_path / "cache").shards
    assert tokens_as_text(trimmed) == BODY
    assert "Project Gutenberg header and footer left out of 1 file(s)" in trimmed.manifest["cleaning"]

    kept = shard_corpus(corpus_of(book), cache=tmp_path / "cache", trim_gutenberg=False)
    assert not kept.skipped and kept.shards.manifest["cleaning"] is None
    assert tokens_as_text(kept.shards) == (HEADER + BODY + FOOTER).removeprefix("\ufeff")


def test_a_byte_order_mark_is_no_token(tmp_path):
    text = "I HAD always thought Jack Gisburn rather a cheap genius. " * 40
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # as Notepad and Gutenberg write UTF-8
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    [with_mark, without] = [shard_corpus(CorpusText(p.stem, (p,), None, "The", str(p)),
                                         cache=tmp_path / "c").shards for p in (marked, plain)]
    assert tokens_as_text(with_mark) == tokens_as_text(without) == text
    assert with_mark.manifest["cleaning"] is None


def test_a_text_without_markers_is_kept_whole_and_an_end_before_the_start_is_no_book(tmp_path):
    odd = tmp_path / "odd.txt"
    odd.write_text(FOOTER + BODY + HEADER.removeprefix("\ufeff"))
    extent = text_extent(odd)
    assert not extent.gutenberg and (extent.start, extent.end) == (0, odd.stat().st_size)


def test_cli_says_in_one_line_what_it_left_out_and_keep_takes_everything(tmp_path):
    book = tmp_path / "book.txt"
    book.write_bytes((HEADER + BODY + FOOTER).encode())
    env = {"CORPUS_CACHE": str(tmp_path / "cache")}
    trimmed = run_command("pipeline.tokenize", "--corpus", str(book), env=env)
    assert trimmed.returncode == 0, trimmed.stderr
    [note] = [line for line in trimmed.stdout.splitlines() if "Gutenberg" in line]
    assert "--gutenberg keep" in note
    kept = run_command("pipeline.tokenize", "--corpus", str(book), "--gutenberg", "keep", env=env)
    assert kept.returncode == 0 and "written" in kept.stdout and "Gutenberg" not in kept.stdout
    again = run_command("pipeline.tokenize", "--corpus", str(book), env=env)  # keeps what was chosen last
    assert "already up to date" in again.stdout


@pytest.mark.parametrize("value", ["maybe", "TRIM "])
def test_cli_refuses_an_unknown_gutenberg_choice(tmp_path, value):
    book = tmp_path / "book.txt"
    book.write_text(BODY)
    assert_one_line_error(run_command("pipeline.tokenize", "--corpus", str(book), "--gutenberg", value,
                                      env={"CORPUS_CACHE": str(tmp_path / "cache")}), "--gutenberg")
