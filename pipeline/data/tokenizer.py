"""The tokenizers a run can use, all encoded and decoded by tiktoken: GPT-2's BPE (`gpt2`), the 256 bytes
(`bytes`), or a byte-level BPE learned from a corpus (`bpe:N`, bpe.py; its ranks are kept beside its shards).
Each has end-of-text as its last id.

GPT-2's BPE is kept per machine in the corpus cache once built.

tiktoken builds GPT-2's encoding from its two original files at every start (0.17-0.24 s here, a tenth of a
short run's own cost). The first start keeps the result: its token ranks in tiktoken's `.tiktoken` format (byte
for byte the r50k_base.tiktoken OpenAI publishes) with the file's sha256 in a memo. Later starts read that back
in 0.05 s. A kept file that is missing, changed or from another tiktoken version is built again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path

from pipeline.errors import CorpusError
from pipeline.files import atomic_path, cache_root
from pipeline.memo import remembered
from pipeline.settings import tokenizer_vocab_size

TOKENIZER = "gpt2"  # the default
END_OF_TEXT = "<|endoftext|>"
RANKS_FILE = "tokenizer.tiktoken"  # a learned tokenizer's ranks, in its shard folder
# GPT-2's pre-tokenizer: a learned BPE splits text as GPT-2 does (and as HF's ByteLevel pre-tokenizer does)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def encoding_for(spec: str, ranks: bytes | None = None):
    """The tiktoken encoding of a tokenizer spec; bpe:N needs its ranks (ranks_data's bytes, kept in RANKS_FILE),
    and has end-of-text as id N."""
    if spec == TOKENIZER:
        return encoding()
    import tiktoken

    n_vocab = tokenizer_vocab_size(spec)
    if ranks is None and spec != "bytes":
        raise CorpusError(f"tokenizer {spec} was given without its ranks ({RANKS_FILE})")
    table = read_ranks(ranks) if ranks is not None else {bytes([b]): b for b in range(256)}
    return tiktoken.Encoding(spec, pat_str=GPT2_PATTERN, mergeable_ranks=table,
                             special_tokens={END_OF_TEXT: n_vocab - 1})


def ranks_data(ranks: dict[bytes, int]) -> bytes:
    """Ranks in tiktoken's `.tiktoken` format: one `base64(token) rank` line per token, in rank order."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ordered)


def read_ranks(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def encoding():
    """tiktoken's GPT-2 BPE. Offline, the first build reads GPT-2's files from $TIKTOKEN_CACHE_DIR."""
    import tiktoken

    kept = cache_root() / f"{TOKENIZER}.tiktoken"
    shape = remembered("tokenizer.json", TOKENIZER, [tiktoken.__version__], lambda: _keep(_build(), kept))
    enc = _read(kept, shape)
    if enc is None:  # the kept copy is gone or changed: build it and keep it again
        enc = _build()
        _keep(enc, kept)
    return enc


def _read(path: Path, shape: dict):
    """The encoding kept at path, or None when the file is not the one the memo describes."""
    import tiktoken

    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != shape["sha256"]:
        return None
    return tiktoken.Encoding(TOKENIZER, pat_str=shape["pat_str"], mergeable_ranks=read_ranks(data),
                             special_tokens=shape["special_tokens"], explicit_n_vocab=shape["n_vocab"])


def _build():
    import tiktoken

    try:
        return tiktoken.get_encoding(TOKENIZER)
    except Exception as error:  # no network and no cache: requests or tiktoken errors of many kinds
        raise CorpusError(
            f"could not load tiktoken's {TOKENIZER} files ({type(error).__name__}); "
            "without network, point TIKTOKEN_CACHE_DIR at a folder holding them"
        ) from None


def _keep(enc, path: Path) -> dict:
    """Write enc's ranks to path; what else it takes to build enc again, with the file's sha256."""
    data = ranks_data(enc._mergeable_ranks)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass  # a read-only cache: built again at each start, as tiktoken does
    return {"sha256": hashlib.sha256(data).hexdigest(), "pat_str": enc._pat_str,
            "special_tokens": enc._special_tokens, "n_vocab": enc.n_vocab}
