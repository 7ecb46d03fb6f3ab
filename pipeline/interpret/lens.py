"""The logit lens (nostalgebraist, 2020): the residual stream after each block read as if it were the last, through
the final LayerNorm and the unembedding. Its val loss per layer says where in the depth the prediction forms; the
last layer's is the model's own loss. Each layer read costs an unembedding (most of a small GPT's work with
GPT-2's 50,304 tokens), so an evaluation reads every layer on LENS_WINDOWS of its windows and only the last on
the rest."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn import functional as F

from model import GPT

LENS_WINDOWS = 4  # of the fixed val windows, the first: on all 32 the lens made a nano evaluation 8x longer; on 8
# it and the inspections took 3.5% of nano's tokens/s (bench/eval_share.py, target at most 3%)


@torch.no_grad()
def losses_by_layer(model: GPT, x: torch.Tensor, y: torch.Tensor, every_layer: bool = True) -> torch.Tensor:
    """(n_layer, B, T) cross-entropy of each block's residual stream, decoded, against targets y; with
    every_layer False, (1, B, T): the last block's, the model's own."""
    streams = []
    blocks = model.transformer.h if every_layer else model.transformer.h[-1:]
    hooks = [block.register_forward_hook(lambda _module, _inputs, output: streams.append(output)) for block in blocks]
    try:
        model(x)  # without targets the model decodes only the last position: the streams are decoded here
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([decoded_losses(model, stream, y) for stream in streams])


def decoded_losses(model: GPT, stream: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy of a residual stream read through the final LayerNorm and the unembedding, against y,
    model.loss_chunk positions at a time, as the model's own loss: the logits never exist whole."""
    hidden, targets = model.transformer.ln_f(stream).flatten(0, 1), y.flatten()
    chunk = model.loss_chunk or len(targets)
    losses = [F.cross_entropy(model.lm_head(h).float(), t, reduction="none")
              for h, t in zip(hidden.split(chunk), targets.split(chunk))]
    return torch.cat(losses).view(y.shape)


@torch.no_grad()
def val_losses_by_layer(model: GPT, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                        autocast=None, every_layer: bool = True) -> torch.Tensor:
    """(n_layer, T): each layer's loss at each position, the mean over the windows x, y (N, T), in batches; with
    every_layer False, (1, T): the model's own."""
    was_training = model.training
    model.eval()
    total = None
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            with autocast or nullcontext():
                summed = losses_by_layer(model, xb, yb, every_layer).sum(dim=1)
            total = summed if total is None else total + summed
    finally:
        model.train(was_training)
    return (total / len(x)).cpu()


def lens_scalars(by_layer: torch.Tensor) -> dict[str, float]:
    """lens/loss_layer_N: the val loss read after block N, counted from 0 as heads and layers are everywhere in
    the lab (TransformerLens's L0H0); the last is the model's own val_loss."""
    return {f"lens/loss_layer_{layer}": float(loss) for layer, loss in enumerate(by_layer.mean(dim=1))}
