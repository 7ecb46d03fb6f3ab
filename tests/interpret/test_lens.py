"""The logit lens and loss by position: the last layer's lens is the model's own loss, per-position losses
average to it, and in_context_gain reads the curve."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from model import GPT, GPTConfig
from pipeline.interpret.lens import lens_scalars, val_losses_by_layer
from pipeline.interpret.positions import PositionCurve

CPU = torch.device("cpu")


def test_the_last_layers_lens_is_the_models_own_loss_and_positions_average_to_it():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, context_length=16, vocab_size=512)).eval()
    model.loss_chunk = 24  # positions a chunk: the lens decodes as the model's loss does, never all logits at once
    x = torch.randint(0, 512, (10, 16))
    y = torch.roll(x, -1, dims=1)
    by_layer = val_losses_by_layer(model, x, y, batch_size=4, device=CPU)
    assert by_layer.shape == (3, 16)
    _, own_loss = model(x, y)
    curve = PositionCurve(by_layer[-1].tolist())
    assert abs(curve.mean - own_loss.item()) < 1e-5
    model.loss_chunk = 0  # the whole logits, to check every position against
    logits, _ = model(x, y)
    torch.testing.assert_close(by_layer[-1], F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                             reduction="none").view(10, 16).mean(dim=0))
    own_only = val_losses_by_layer(model, x, y, batch_size=4, device=CPU, every_layer=False)
    torch.testing.assert_close(own_only, by_layer[-1:])
    lens = lens_scalars(by_layer)
    assert list(lens) == ["lens/loss_layer_0", "lens/loss_layer_1", "lens/loss_layer_2"]
    assert abs(lens["lens/loss_layer_2"] - own_loss.item()) < 1e-5
    assert lens["lens/loss_layer_0"] != lens["lens/loss_layer_2"]


def test_in_context_gain_is_the_early_loss_minus_the_late():
    curve = PositionCurve([5.0] * 8 + [4.0] * 48 + [3.0] * 8)  # 64 positions
    assert curve.first_eighth == 5.0 and curve.last_eighth == 3.0
    assert curve.in_context_gain == 5.0 - 3.0  # positions 4 to 7 against the last 8
    assert PositionCurve([2.0] * 32).in_context_gain == 0.0
    scalars = curve.scalars()
    assert set(scalars) == {"val_loss_first_eighth", "val_loss_last_eighth", "in_context_gain"}
    assert PositionCurve([4.0, 2.0]).in_context_gain == 2.0  # a context too short for eighths still reads


def test_binned_positions_average_quarter_octaves():
    curve = PositionCurve([float(position) for position in range(64)])
    tokens_read, losses = curve.binned()
    assert tokens_read[:4] == [1.0, 2.0, 3.0, 4.0]  # one position a bin while a quarter octave holds no more
    assert tokens_read[-2:] == [58.5, 64.0]  # 54 to 63 tokens read share a bin; 64 starts the next octave
    assert all(loss == read - 1 for read, loss in zip(tokens_read, losses))  # each bin's mean position and loss
    assert PositionCurve([1.0, 3.0, 5.0]).band_error(0, 2) == 1.0  # stdev 1.414 over sqrt(2) positions
    assert PositionCurve([1.0, 3.0, 5.0]).last_eighth_start == 2  # a context too short for eighths: its last
