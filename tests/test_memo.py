"""A file's sha256 is hashed again only when the file changed; the memo never stands in for a changed file."""

from __future__ import annotations

import hashlib
import json
import os

from pipeline.memo import file_sha256


def test_an_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus.txt"
    text.write_text("once upon a time")
    assert file_sha256(text) == hashlib.sha256(b"once upon a time").hexdigest()
    memo = tmp_path / "cache" / "file-sha256.json"
    kept = json.loads(memo.read_text())
    kept[str(text.resolve())]["value"] = "planted"
    memo.write_text(json.dumps(kept))
    assert file_sha256(text) == "planted"  # the stat matched: the bytes were not hashed


def test_a_change_of_the_same_size_with_the_old_mtime_put_back_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "corpus.txt"
    text.write_text("once upon a time")
    before = text.stat()
    file_sha256(text)
    text.write_text("twice upon atime")  # same length
    os.utime(text, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert text.stat().st_size == before.st_size and text.stat().st_mtime_ns == before.st_mtime_ns
    assert file_sha256(text) == hashlib.sha256(b"twice upon atime").hexdigest()


def test_a_damaged_memo_is_worked_out_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "file-sha256.json").write_text("{not json")
    text = tmp_path / "corpus.txt"
    text.write_text("abc")
    assert file_sha256(text) == hashlib.sha256(b"abc").hexdigest()
    assert str(text.resolve()) in json.loads((tmp_path / "cache" / "file-sha256.json").read_text())


def test_the_hashes_of_deleted_files_leave_the_memo_when_it_is_next_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_CACHE", str(tmp_path / "cache"))
    gone, kept, new = (tmp_path / name for name in ("gone.txt", "kept.txt", "new.txt"))
    for path in (gone, kept, new):
        path.write_text(path.name)
    file_sha256(gone)
    file_sha256(kept)
    gone.unlink()
    file_sha256(new)  # a miss: the memo is written again
    assert set(json.loads((tmp_path / "cache" / "file-sha256.json").read_text())) == {
        str(kept.resolve()), str(new.resolve())}
