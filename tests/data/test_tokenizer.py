"""GPT-2's tokenizer kept in the corpus cache: later starts read it back without GPT-2's files, and encode exactly
as tiktoken builds it; a kept copy that changed is never used. Real tiktoken, real fresh interpreters."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import tiktoken

from pipeline.files import child_python_path

TEXT = ("Once upon a time, in 1897, a café's  owner\n\n\tsaid: \"It's 3.14!\" — 日本語 🙂 <|endoftext|>"
        "I HAD always thought Jack Gisburn rather a cheap genius")
R50K_BASE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENCODE = f"""
import json
from pipeline.data.tokenizer import encoding
enc = encoding()
print(json.dumps([enc.name, enc.n_vocab, enc.eot_token, enc.encode({TEXT!r}, allowed_special="all")]))
"""


def fresh_start(cache, **env) -> subprocess.CompletedProcess:
    """encoding() in a fresh interpreter (tiktoken keeps what it built per process), the corpus cache at cache."""
    return subprocess.run([sys.executable, "-c", ENCODE], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": child_python_path(), "CORPUS_CACHE": str(cache), **env})


def start(cache, **env) -> list:
    """What a fresh interpreter's encoding() makes of TEXT."""
    result = fresh_start(cache, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expected() -> list:
    enc = tiktoken.get_encoding("gpt2")
    return [enc.name, enc.n_vocab, enc.eot_token, enc.encode(TEXT, allowed_special="all")]


def test_a_kept_tokenizer_needs_no_gpt2_files_and_encodes_as_tiktoken(tmp_path):
    cache = tmp_path / "cache"
    assert start(cache) == expected()  # the first start builds it from GPT-2's files and keeps it
    # Byte for byte the r50k_base.tiktoken OpenAI publishes (the same ranks): tiktoken's own hash for that file
    assert hashlib.sha256((cache / "gpt2.tiktoken").read_bytes()).hexdigest() == R50K_BASE_SHA256
    # No GPT-2 files and no way to download them: only the kept copy can answer
    no_files = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9",
                "HTTP_PROXY": "http://127.0.0.1:9"}
    assert start(cache, **no_files) == expected()


def test_a_changed_kept_copy_is_built_again_not_used(tmp_path):
    cache = tmp_path / "cache"
    start(cache)
    kept = cache / "gpt2.tiktoken"
    original = kept.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[300], lines[301] = lines[301], lines[300]  # two ranks swapped: a valid file that encodes wrongly
    kept.write_bytes(b"".join(lines))
    assert start(cache) == expected()
    assert kept.read_bytes() == original  # kept again, as built
    kept.write_bytes(b"".join(lines))
    result = fresh_start(cache, TIKTOKEN_CACHE_DIR=str(tmp_path / "empty"), HTTPS_PROXY="http://127.0.0.1:9",
                         HTTP_PROXY="http://127.0.0.1:9")
    assert result.returncode != 0 and "could not load tiktoken's gpt2 files" in result.stderr, result.stderr
