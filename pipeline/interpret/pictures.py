"""Attention patterns as pictures: one image per layer, its heads in a near-square grid, the prompt's tokens on
both axes (rows: the position reading, columns: the position read). Drawn with matplotlib's object API on the Agg
canvas, as the report's plots are: no display, no global backend change."""

from __future__ import annotations

import io
import math

import numpy as np

LABELLED_TOKENS = 40  # past this many tokens the axes carry no labels: they would overlap
DPI = 100


def token_labels(encoding, tokens: list[int]) -> list[str]:
    """Each token as text, whitespace shown, so a reader sees where words start."""
    return [encoding.decode([token]).replace("\n", "\\n").replace(" ", "\u2423") for token in tokens]


def layer_image(weights, labels: list[str], title: str) -> np.ndarray:
    """(height, width, 3) uint8 picture of one layer's heads; weights (n_head, T, T) in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    weights = np.asarray(weights)
    n_head, T = weights.shape[0], weights.shape[-1]
    columns = math.ceil(math.sqrt(n_head))  # near square: MLflow's image view draws each image in a square
    rows = math.ceil(n_head / columns)
    side = 2.2 + 0.12 * min(T, LABELLED_TOKENS)
    figure = Figure(figsize=(side * columns, side * rows + 0.5), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    for index in range(n_head):
        axis = figure.add_subplot(rows, columns, index + 1)
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
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def png_bytes(image: np.ndarray) -> bytes:
    """The image as a PNG file's bytes (for the HTML view, which carries its pictures inside)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
