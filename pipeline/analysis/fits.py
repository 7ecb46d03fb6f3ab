"""Fitting a scaling law to losses at several model sizes, with how well it fits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.analysis.runs import MODEL_SIZE, RunCurves, number
from pipeline.errors import ReportError


@dataclass(frozen=True)
class PowerLaw:
    """L(N) = (nc / N) ** alpha, fitted on log-log axes as log L = log_l1 - alpha log N."""

    nc: float  # 0 or inf when alpha is near zero or negative: loss() uses log_l1, which stays finite
    alpha: float
    alpha_stderr: float | None  # standard error of alpha; None with only two sizes (a line through two points)
    r_squared: float  # of the fit on log-log axes: 1 is a perfect power law
    sizes: int  # distinct model sizes fitted
    log_l1: float = 0.0  # log of the fitted loss at N = 1

    def loss(self, n):
        return np.exp(self.log_l1 - self.alpha * np.log(np.asarray(n, dtype=float)))


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """The least-squares fit of log L = alpha log Nc - alpha log N.
    Raises ReportError for fewer than 2 distinct sizes, non-positive values, or a flat loss (alpha = 0).
    alpha < 0 (loss growing with size) is returned as fitted."""
    n, loss = np.asarray(n, dtype=float).reshape(-1), np.asarray(loss, dtype=float).reshape(-1)
    if n.shape != loss.shape:
        raise ReportError(f"{len(n)} model sizes but {len(loss)} losses")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(loss)) and np.all(n > 0) and np.all(loss > 0)):
        raise ReportError("a power law needs positive, finite model sizes and losses")
    sizes = len(np.unique(n))
    if sizes < 2:
        raise ReportError("a power law needs losses at two or more model sizes")
    x, y = np.log(n), np.log(loss)
    slope, intercept = np.polyfit(x, y, 1)
    alpha = -float(slope)
    if abs(alpha) < 1e-9:  # zero but for rounding
        raise ReportError("the loss does not change with model size: no power law to fit")
    with np.errstate(over="ignore", under="ignore"):
        nc = float(np.exp(intercept / alpha))
    residuals = y - (slope * x + intercept)
    spread = float(np.sum((y - y.mean()) ** 2))
    r_squared = 1.0 - float(np.sum(residuals ** 2)) / spread if spread > 0 else 1.0
    stderr = None
    if len(x) > 2:  # the slope's standard error: residual variance over the spread of log N
        stderr = math.sqrt(float(np.sum(residuals ** 2)) / (len(x) - 2) / float(np.sum((x - x.mean()) ** 2)))
    return PowerLaw(nc, alpha, stderr, r_squared, sizes, float(intercept))


def scaling_fit(runs: Sequence[RunCurves]) -> PowerLaw:
    """The power law through the best final val loss at each model size; runs that did not finish, and trials a
    bayes sweep pruned, are left out."""
    best: dict[float, float] = {}
    for run in runs:
        size = number(run.value(MODEL_SIZE))
        if (size and run.status == "FINISHED" and not run.pruned and run.final_val is not None
                and math.isfinite(run.final_val)):
            best[size] = min(best.get(size, math.inf), run.final_val)
    return fit_power_law(sorted(best), [best[size] for size in sorted(best)])
