"""Corpora the lab writes itself, for lessons natural text at CPU scale cannot show. `repeats`: documents of random
made-up words, each document a segment said twice. Nothing in the first copy can be predicted; everything in
the second can, by a model that finds the earlier occurrence of the current word and copies what followed it:
an induction head (Olsson et al., 2022), which forms here in minutes where TinyStories shows none in ten."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from pipeline.errors import CorpusError
from pipeline.files import atomic_path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
WORDS = 256  # the vocabulary: random words from it are unpredictable at log(256) = 5.5 nats each
DOCUMENTS = 20_000  # ~3.4 MB, ~700K tokens with bpe:768 (every word one token)
SEGMENT_WORDS = (8, 24)  # a segment's length is drawn from this range, then the segment is said twice
SEED = 0


def made_up_words(count: int = WORDS, seed: int = SEED) -> list[str]:
    """count two-syllable words (consonant, vowel, consonant, vowel), the same for a seed."""
    syllables = [c + v for c, v in itertools.product(CONSONANTS, VOWELS)]
    return random.Random(seed).sample([a + b for a, b in itertools.product(syllables, syllables)], count)


def repeated_segments(documents: int = DOCUMENTS, seed: int = SEED) -> str:
    """The `repeats` text: documents joined by <|endoftext|>, each a random segment of words, then the same again."""
    rng = random.Random(seed)
    words = made_up_words(seed=seed)
    texts = []
    for _ in range(documents):
        segment = rng.choices(words, k=rng.randint(*SEGMENT_WORDS))
        texts.append(" ".join(segment + segment))
    return "<|endoftext|>".join(texts)


GENERATORS = {"repeats": repeated_segments}


def write(name: str, path: Path) -> None:
    """Write the synthetic corpus `name` to path (atomically: a stopped write leaves nothing half-written)."""
    if name not in GENERATORS:
        raise CorpusError(f"unknown synthetic corpus '{name}' (known: {', '.join(GENERATORS)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(GENERATORS[name]())
