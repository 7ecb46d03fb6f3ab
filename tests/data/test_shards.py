"""llm.c shard files (data/shards.py): the header layout, what a damaged file is told apart by, and any tokens
round-tripping."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.shards import HEADER_BYTES, MAGIC, VERSION, read_shard, write_shard
from pipeline.errors import ShardError


def header_of(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.int32, count=3)


def test_write_shard_writes_the_llmc_layout(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.array([0, 1, 50256, 65535]))
    assert header_of(path).tolist() == [MAGIC, VERSION, 4]
    assert path.stat().st_size == HEADER_BYTES + 8
    assert read_shard(path).tolist() == [0, 1, 50256, 65535]


def corrupt(path: Path, index: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] = value
    path.write_bytes(data)


@pytest.mark.parametrize("change, fragment", [
    (lambda p: corrupt(p, 0, 0x99), "magic"),
    (lambda p: corrupt(p, 4, 2), "version 2, expected 1"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated or padded"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "truncated or padded"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "shorter than its 1024-byte header"),
    (lambda p: p.unlink(), "shard not found"),
])
def test_read_shard_says_what_is_wrong(tmp_path, change, fragment):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10))
    change(path)
    with pytest.raises(ShardError, match=fragment) as caught:
        read_shard(path)
    assert str(path) in str(caught.value)


def test_write_shard_refuses_tokens_outside_uint16_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.array([1, 2, 3]))
    before = path.read_bytes()
    with pytest.raises(ShardError, match="uint16"):
        write_shard(path, np.array([1, 70000]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]  # no .part left beside it
    with pytest.raises(ShardError, match="uint16"):
        write_shard(tmp_path / "new.bin", np.array([-1]))
    assert not (tmp_path / "new.bin").exists()


@settings(max_examples=80, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**16 - 1), max_size=3000))
def test_any_uint16_tokens_round_trip(tokens):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.bin"
        write_shard(path, np.array(tokens, dtype=np.uint16))
        back = read_shard(path)
        assert back.dtype == np.uint16 and back.tolist() == tokens
        assert path.stat().st_size == HEADER_BYTES + 2 * len(tokens)
        del back


@settings(max_examples=150, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**16 - 1), min_size=0, max_size=50), index=st.integers(0, 11),
       value=st.integers(0, 255))
def test_any_header_byte_corruption_is_caught(tokens, index, value):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.bin"
        write_shard(path, np.array(tokens, dtype=np.uint16))
        original = path.read_bytes()
        corrupt(path, index, value)
        if original[index] == value:
            assert read_shard(path).tolist() == tokens
        else:
            with pytest.raises(ShardError):
                read_shard(path)
