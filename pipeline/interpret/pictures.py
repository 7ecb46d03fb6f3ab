"""Attention patterns as pictures: one image per layer, its heads side by side, the prompt's tokens on both axes
(rows: the position reading, columns: the position read)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to load
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LABELLED_TOKENS = 40  # past this many tokens the axes carry no labels: they would overlap
HEADS_PER_ROW = 4


def token_labels(encoding, tokens: list[int]) -> list[str]:
    """Each token as text, whitespace shown, so a reader sees where words start."""
    return [encoding.decode([token]).replace("\n", "\\n").replace(" ", "\u2423") for token in tokens]


def layer_image(weights, labels: list[str], title: str) -> np.ndarray:
    """(H, W, 3) uint8 picture of one layer's heads; weights (n_head, T, T) in [0, 1]."""
    weights = np.asarray(weights)
    n_head, T = weights.shape[0], weights.shape[-1]
    columns = min(HEADS_PER_ROW, n_head)
    rows = math.ceil(n_head / columns)
    side = 2.2 + 0.12 * min(T, LABELLED_TOKENS)
    figure, axes = plt.subplots(rows, columns, figsize=(side * columns, side * rows + 0.5), squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= n_head:
            axis.axis("off")
            continue
        axis.imshow(weights[index], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_title(f"head {index}", fontsize=9)
        if T <= LABELLED_TOKENS:
            axis.set_xticks(range(T), labels, rotation=90, fontsize=6)
            axis.set_yticks(range(T), labels, fontsize=6)
        else:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(figure)
    return image


def png_bytes(image: np.ndarray) -> bytes:
    """The image as a PNG file's bytes (for the HTML view, which carries its pictures inside)."""
    buffer = io.BytesIO()
    plt.imsave(buffer, image, format="png")
    return buffer.getvalue()
