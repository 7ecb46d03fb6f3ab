"""The logit lens (nostalgebraist, 2020): the residual stream after each block read as if it were the last, through
the final LayerNorm and the unembedding. Its val loss per layer says where in the depth the prediction forms; the
last layer's is the model's own loss, so one pass gives val_loss, its curve by position and the lens together."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn import functional as F

from model import GPT


@torch.no_grad()
def losses_by_layer(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n_layer, B, T) cross-entropy of each block's residual stream, decoded, against targets y."""
    streams = []
    hooks = [block.register_forward_hook(lambda _module, _inputs, output: streams.append(output))
             for block in model.transformer.h]
    try:
        model(x)  # the streams are what is read; the model's own logits (chunked inside its loss) are not kept
    finally:
        for hook in hooks:
            hook.remove()
    B, T = y.shape
    decoded = [model.lm_head(model.transformer.ln_f(stream)) for stream in streams]  # the last: the model's logits
    return torch.stack([F.cross_entropy(layer_logits.float().flatten(0, 1), y.flatten(), reduction="none").view(B, T)
                        for layer_logits in decoded])


@torch.no_grad()
def val_losses_by_layer(model: GPT, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                        autocast=None) -> torch.Tensor:
    """(n_layer, T): each layer's loss at each position, the mean over the windows x, y (N, T), in batches."""
    was_training = model.training
    model.eval()
    total = None
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            with autocast or nullcontext():
                summed = losses_by_layer(model, xb, yb).sum(dim=1)
            total = summed if total is None else total + summed
    finally:
        model.train(was_training)
    return (total / len(x)).cpu()


def lens_scalars(by_layer: torch.Tensor) -> dict[str, float]:
    """lens/loss_layer_N: the val loss read after block N, counted from 0 as heads and layers are everywhere in
    the lab (TransformerLens's L0H0); the last is the model's own val_loss."""
    return {f"lens/loss_layer_{layer}": float(loss) for layer, loss in enumerate(by_layer.mean(dim=1))}
