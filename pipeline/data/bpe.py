"""A byte-level BPE learned from a corpus (`--tokenizer bpe:N`): trained by HF `tokenizers`, handed to tiktoken
as ranks.

HF's trainer learns the merges fast; tiktoken then encodes and decodes with them, as it does GPT-2's, so one
code path reads every tokenizer. Ranks are GPT-2's layout: the 256 single bytes in byte order, then each merged
token in the order it was learned. HF spells bytes as printable characters (GPT-2's byte-to-unicode table);
those are mapped back to bytes here.
"""

from __future__ import annotations

import json
from typing import Iterable


def train_bpe(texts: Iterable[str], n_tokens: int) -> dict[bytes, int]:
    """The ranks of a byte-level BPE of at most n_tokens tokens learned from texts (fewer where the text runs out
    of pairs to merge)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=n_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    to_byte = unicode_to_byte()
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tokenizer.to_str())["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge  # older versions: "a b"
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    return ranks


def unicode_to_byte() -> dict[str, int]:
    """GPT-2's table, reversed: printable bytes stand for themselves, the others for chr(256 + i) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}
