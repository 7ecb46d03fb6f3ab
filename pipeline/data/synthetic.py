"""Corpora the lab writes itself, for lessons natural text at CPU scale cannot show. `repeats`: documents of random
made-up words, each document a short segment said three times. Nothing in the first copy can be predicted;
everything after it can, by a model that finds the earlier occurrence of the current word and copies what
followed it: an induction head (Olsson et al., 2022), which forms here in minutes where TinyStories shows none in
ten. Segments of 8-24 words said twice gave a 2-layer model nothing to hold on to in 3M tokens; short ones said
three times make the copies common enough for the head to form in about 2M (pilots on the lab's CPU)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from pipeline.errors import CorpusError
from pipeline.files import atomic_path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
WORDS = 256  # the vocabulary: random words from it are unpredictable at log(256) = 5.5 nats each
DOCUMENTS = 40_000  # ~5.3 MB, ~1M tokens with bpe:768 (every word one token)
SEGMENT_WORDS = (4, 12)  # a segment's length is drawn from this range, then the segment is said REPEATS times
REPEATS = 3
SEED = 0


def made_up_words(count: int = WORDS, seed: int = SEED) -> list[str]:
    """count two-syllable words (consonant, vowel, consonant, vowel), the same for a seed."""
    syllables = [c + v for c, v in itertools.product(CONSONANTS, VOWELS)]
    return random.Random(seed).sample([a + b for a, b in itertools.product(syllables, syllables)], count)


def repeated_segments(documents: int = DOCUMENTS, seed: int = SEED) -> str:
    """The `repeats` text: documents joined by <|endoftext|>, each a random segment of words said REPEATS times."""
    rng = random.Random(seed)
    words = made_up_words(seed=seed)
    texts = []
    for _ in range(documents):
        segment = rng.choices(words, k=rng.randint(*SEGMENT_WORDS))
        texts.append(" ".join(segment * REPEATS))
    return "<|endoftext|>".join(texts)


GENERATORS = {"repeats": repeated_segments}


def write(name: str, path: Path) -> None:
    """Write the synthetic corpus `name` to path (atomically: a stopped write leaves nothing half-written)."""
    if name not in GENERATORS:
        raise CorpusError(f"unknown synthetic corpus '{name}' (known: {', '.join(GENERATORS)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(GENERATORS[name]())
