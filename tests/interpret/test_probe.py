"""The linear probe: the stream after a block whose head copies the previous token reads it far above the
shuffled-label control; the embedding alone, on random tokens, reads no more than the control."""

from __future__ import annotations

import torch

from pipeline.interpret.probe import TOP_TOKENS, previous_token_probe
from tests.interpret.test_heads import previous_token_model

CPU = torch.device("cpu")
CONTEXT = 16
TOKENS = 24  # a vocabulary small enough that most positions follow one of the TOP_TOKENS most frequent


def copying_model():
    """test_heads' previous-token head, with tokens embedded in channels of their own that its values copy."""
    model = previous_token_model(CONTEXT)
    width, head_size = model.config.n_embd, model.config.n_embd // 2
    with torch.no_grad():
        for token in range(TOKENS):
            model.transformer.wte.weight[token, 2 * CONTEXT + token % (2 * CONTEXT)] = 3.0
        value = model.transformer.h[0].attn.c_attn.weight[2 * width:]
        for channel in range(head_size):
            value[channel, 2 * CONTEXT + channel] = 1.0  # head 0's value: the token channels of what it reads
    return model


def test_the_probe_finds_the_previous_token_after_a_copying_head_and_not_in_the_embedding():
    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(0, TOKENS, (200, CONTEXT), generator=generator)
    reading = previous_token_probe(copying_model(), windows, CPU)
    assert set(reading.accuracy) == {"embed", "layer_0"}
    assert reading.accuracy["layer_0"] > reading.control["layer_0"] + 0.5, reading
    assert reading.accuracy["embed"] < reading.control["embed"] + 0.1, reading
    assert all(control < 2.5 / TOP_TOKENS for control in reading.control.values()), reading
    scalars = reading.scalars()
    assert scalars["probe/prev_token_layer_0"] == reading.accuracy["layer_0"]
    assert "probe/prev_token_control" in scalars
