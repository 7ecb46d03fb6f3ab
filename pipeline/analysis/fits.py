"""Fitting a scaling law to losses at several model sizes."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import ReportError


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> tuple[float, float]:
    """(Nc, alpha) of L(N) = (Nc / N) ** alpha fitted by least squares on log L = alpha log Nc - alpha log N.
    Raises ReportError for fewer than 2 distinct sizes, non-positive values, or a flat loss (alpha = 0).
    alpha < 0 (loss growing with size) is returned as fitted."""
    n, loss = np.asarray(n, dtype=float).reshape(-1), np.asarray(loss, dtype=float).reshape(-1)
    if n.shape != loss.shape:
        raise ReportError(f"{len(n)} model sizes but {len(loss)} losses")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(loss)) and np.all(n > 0) and np.all(loss > 0)):
        raise ReportError("a power law needs positive, finite model sizes and losses")
    if len(np.unique(n)) < 2:
        raise ReportError("a power law needs losses at two or more model sizes")
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    alpha = -float(slope)
    if abs(alpha) < 1e-9:  # zero but for rounding
        raise ReportError("the loss does not change with model size: no power law to fit")
    with np.errstate(over="ignore"):
        nc = float(np.exp(intercept / alpha))
    return nc, alpha
