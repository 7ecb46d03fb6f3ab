"""Text from a model: a prompt in, a continuation out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import GPT
from pipeline.errors import SettingsError


@dataclass(frozen=True)
class Completion:
    text: str  # the continuation, without the prompt
    tokens: list[int]


def complete(model: GPT, enc, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int,
             device: torch.device) -> Completion:
    """The model's continuation of prompt, read and written with the tiktoken encoding enc that the model was
    trained on; the same seed gives the same text."""
    return completions(model, enc, prompt, 1, max_new_tokens, temperature, top_k, seed, device)[0]


def completions(model: GPT, enc, prompt: str, count: int, max_new_tokens: int, temperature: float, top_k: int,
                seed: int, device: torch.device) -> list[Completion]:
    """count continuations of prompt, drawn together as one batch; the same seed and count give the same texts."""
    prompt_ids = enc.encode_ordinary(prompt) or [enc.eot_token]
    if len(prompt_ids) > model.config.context_length:
        raise SettingsError(
            f"prompt has {len(prompt_ids)} tokens, longer than the model's context ({model.config.context_length})"
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(torch.tensor([prompt_ids] * count, device=device), max_new_tokens,
                         temperature=temperature, top_k=top_k or None, generator=generator,
                         vocab_size=enc.n_vocab)
    model.train(was_training)
    rows = out[:, len(prompt_ids):].tolist()
    return [Completion(enc.decode(tokens), tokens) for tokens in rows]

