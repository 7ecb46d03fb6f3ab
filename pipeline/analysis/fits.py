"""Fitting a scaling law to losses at several model sizes, with how well it fits: Kaplan's pure power law, and
Chinchilla's form with a floor that a fixed token budget sets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.analysis.curves import MODEL_SIZE, RunCurves, number
from pipeline.errors import ReportError, first_line


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


@dataclass(frozen=True)
class FloorLaw:
    """L(N) = floor + (nc / N) ** alpha: Chinchilla's L(N, D) = E + A/N^α + B/D^β at one token budget D, where
    E + B/D^β is a floor no model size goes below: the budget's, not the models'."""

    floor: float
    nc: float
    alpha: float
    alpha_stderr: float | None
    r_squared: float  # of the fit on the losses themselves
    sizes: int

    def loss(self, n):
        return self.floor + (self.nc / np.asarray(n, dtype=float)) ** self.alpha


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """The least-squares fit of log L = alpha log Nc - alpha log N.
    Raises ReportError for fewer than 2 distinct sizes, non-positive values, or a flat loss (alpha = 0).
    alpha < 0 (loss growing with size) is returned as fitted."""
    n, loss = _checked(n, loss)
    sizes = len(np.unique(n))
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


def fit_floor_law(n: Sequence[float], loss: Sequence[float]) -> FloorLaw:
    """The least-squares fit of L = floor + (nc/N)^alpha (floor at least 0, alpha positive). Raises ReportError
    for fewer than 4 distinct sizes (three parameters and one to spare), or when no such curve fits."""
    from scipy.optimize import curve_fit  # seconds of import: only when a report fits one

    n, loss = _checked(n, loss)
    sizes = len(np.unique(n))
    if sizes < 4:
        raise ReportError("a power law with a floor needs losses at four or more model sizes")
    x = n / n.min()  # in units of the smallest size, so that the scale stays near the losses'

    def curve(x, floor, scale, alpha):
        return floor + scale * x ** -alpha

    # start from the best alpha on a grid, floor and scale solved exactly for each: curve_fit alone can wander
    starts = []
    for alpha in np.geomspace(0.01, 5, 80):
        design = np.column_stack([np.ones_like(x), x ** -alpha])
        (floor, scale), *_ = np.linalg.lstsq(design, loss, rcond=None)
        if 0 <= floor < loss.min() and scale > 0:
            starts.append((float(np.sum((curve(x, floor, scale, alpha) - loss) ** 2)), (floor, scale, alpha)))
    if not starts:
        raise ReportError("the losses do not fall toward a floor: no power law with a floor fits")
    try:
        (floor, scale, alpha), covariance = curve_fit(curve, x, loss, p0=min(starts)[1],
                                                      bounds=([0.0, 0.0, 1e-3], [loss.min(), np.inf, 10.0]))
    except (RuntimeError, ValueError) as error:
        raise ReportError(f"no power law with a floor fits ({first_line(error)})") from None
    spread = float(np.sum((loss - loss.mean()) ** 2))
    residual = float(np.sum((curve(x, floor, scale, alpha) - loss) ** 2))
    stderr = math.sqrt(covariance[2, 2]) if np.isfinite(covariance[2, 2]) else None
    return FloorLaw(float(floor), float(n.min() * scale ** (1 / alpha)), float(alpha), stderr,
                    1.0 - residual / spread if spread > 0 else 1.0, sizes)


def best_loss_by_size(runs: Sequence[RunCurves]) -> dict[float, float]:
    """The best final val loss at each model size, over the runs a fit can trust: finished and not pruned."""
    best: dict[float, float] = {}
    for run in runs:
        size = number(run.value(MODEL_SIZE))
        if (size and run.status == "FINISHED" and not run.pruned and run.final_val is not None
                and math.isfinite(run.final_val)):
            best[size] = min(best.get(size, math.inf), run.final_val)
    return dict(sorted(best.items()))


def scaling_fit(runs: Sequence[RunCurves]) -> PowerLaw:
    """The power law through the best final val loss at each model size."""
    best = best_loss_by_size(runs)
    return fit_power_law(list(best), list(best.values()))


def floor_fit(runs: Sequence[RunCurves]) -> FloorLaw:
    """The power law with a floor through the best final val loss at each model size."""
    best = best_loss_by_size(runs)
    return fit_floor_law(list(best), list(best.values()))


def _checked(n: Sequence[float], loss: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sizes and losses as arrays; ReportError unless they pair up, are positive and finite, with 2+ sizes."""
    n, loss = np.asarray(n, dtype=float).reshape(-1), np.asarray(loss, dtype=float).reshape(-1)
    if n.shape != loss.shape:
        raise ReportError(f"{len(n)} model sizes but {len(loss)} losses")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(loss)) and np.all(n > 0) and np.all(loss > 0)):
        raise ReportError("a power law needs positive, finite model sizes and losses")
    sizes = len(np.unique(n))
    if sizes < 2:
        raise ReportError("a power law needs losses at two or more model sizes")
    return n, loss
