"""Attention patterns: the weights every head of every layer gives each earlier position, read from the model's
written-out attention (model/gpt.py keeps them when asked; training never asks)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from model import GPT


@contextmanager
def keeping_attention(model: GPT):
    """While inside, every attention layer keeps its weights; afterwards the model is as before."""
    layers = [block.attn for block in model.transformer.h]
    for layer in layers:
        layer.keep_attention = True
    try:
        yield layers
    finally:
        for layer in layers:
            layer.keep_attention, layer.attention = False, None


@torch.no_grad()
def attention_patterns(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """(B, n_layer, n_head, T, T) attention weights for token ids (B, T): row i holds what position i reads."""
    was_training = model.training
    model.eval()
    try:
        with keeping_attention(model) as layers:
            model(tokens)
            return torch.stack([layer.attention.float() for layer in layers], dim=1).cpu()
    finally:
        model.train(was_training)
