"""The comparison report of a set of runs (a sweep's children, or an experiment's runs): PNG plots and a table.

Files written to the report folder:
  loss_curves.png     train (solid) and val (dashed) loss of every run against tokens seen, one colour a run
  final_val_loss.png  final val loss against the swept setting (the first of SWEEP_PREFERENCE whose values differ),
                      one line per combination of the other swept settings
  scaling.png         only when model sizes differ: final val loss against non-embedding parameters N on log-log
                      axes, with the fitted power law L(N) = (Nc/N)^alpha (the best run at each size is fitted)
  runs.csv, runs.md   one row a run: name, status, key params, final and best losses, tokens seen, diagnosis

Plots are drawn with matplotlib's object API on the Agg canvas: no display, no GPU, no global backend change.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.diagnosis import diagnose
from pipeline.errors import LabError, TrackingError

Curve = list[tuple[int, float]]

MODEL_SIZE = "n_params_non_embedding"
# Settings that change the model's size; when any differs the x axis is MODEL_SIZE, if every run logged it.
MODEL_SIZE_PARAMS = ("config", "n_layer", "n_head", "n_embd", MODEL_SIZE)
# The settings a sweep may vary, most telling first: the first one that differs is the x axis of final_val_loss.
SWEEP_PREFERENCE = ("lr", "context_length", MODEL_SIZE, "batch_size", "grad_accum", "max_tokens", "max_steps",
                    "epochs", "min_lr", "warmup_steps", "weight_decay", "dropout", "grad_clip", "beta1", "beta2",
                    "stride", "seed", "corpus")
# x axes drawn on a log scale, with their base
LOG_AXES = {"lr": 10, "min_lr": 10, MODEL_SIZE: 10, "max_tokens": 10, "context_length": 2, "batch_size": 2,
            "grad_accum": 2}
# the params shown in the table, as logged by the trainer
TABLE_PARAMS = ("config", "corpus", "lr", "context_length", "batch_size", "max_steps", "epochs", "max_tokens",
                MODEL_SIZE)
TABLE_COLUMNS = ("run_name", "run_id", "status", *TABLE_PARAMS, "final_train_loss", "final_val_loss",
                 "min_val_loss", "tokens_seen", "diagnosis")
# params that may instead be found as the trainer's tags
TAG_FALLBACKS = {"config": "lab.config", "corpus": "lab.corpus"}
DPI = 120


class ReportError(LabError):
    """No runs to report on, a filter MLflow refuses, or a power law that cannot be fitted."""


@dataclass(frozen=True, eq=False)
class Report:
    out_dir: Path
    files: tuple[Path, ...]  # every file written, in the order written
    table: pd.DataFrame  # the rows of runs.csv
    swept: tuple[str, ...]  # the settings that differ across the runs, the x axis of final_val_loss first
    alpha: float | None = None  # the fitted scaling exponent, when scaling.png was drawn with a fit
    nc: float | None = None


@dataclass(frozen=True)
class RunCurves:
    """One run as the report needs it: identity, params, tags and its loss and tokens_seen histories."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    train: Curve
    val: Curve
    tokens: Curve

    def value(self, key: str) -> str | None:
        value = self.params.get(key)
        if value in (None, "") and key in TAG_FALLBACKS:
            value = self.tags.get(TAG_FALLBACKS[key])
        return value if value not in (None, "") else None

    @property
    def final_train(self) -> float | None:
        return self.train[-1][1] if self.train else None

    @property
    def final_val(self) -> float | None:
        return self.val[-1][1] if self.val else None

    @property
    def min_val(self) -> float | None:
        return min(v for _, v in self.val) if self.val else None

    @property
    def tokens_seen(self) -> int | None:
        if self.tokens:
            return int(self.tokens[-1][1])
        steps = self.tokens_at([self.train[-1][0]]) if self.train else None
        return int(steps[0]) if steps is not None else None

    def tokens_at(self, steps: Sequence[int]) -> np.ndarray | None:
        """Tokens seen at each step: as logged at that step, else step x tokens_per_step, else interpolated
        from the tokens_seen history; None when the run recorded neither."""
        known = dict(self.tokens)
        per_step = _number(self.params.get("tokens_per_step"))
        if not known and not per_step:
            return None
        known_steps = np.array([0] + [s for s, _ in self.tokens], dtype=float)
        known_tokens = np.array([0] + [t for _, t in self.tokens], dtype=float)
        rate = known_tokens[-1] / known_steps[-1] if known_steps[-1] else 0.0
        out = []
        for step in steps:
            if step in known:
                out.append(known[step])
            elif per_step:
                out.append(step * per_step)
            elif step <= known_steps[-1]:
                out.append(float(np.interp(step, known_steps, known_tokens)))
            else:
                out.append(step * rate)
        return np.array(out, dtype=float)


# ---------------------------------------------------------------- finding runs


def runs_of_parent(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """The child runs of a parent run (tag mlflow.parentRunId), oldest first, as mlflow.search_runs gives them.
    Raises TrackingError for an unknown parent and ReportError when it has no children."""
    tracking.get_run(client, parent_run_id)
    runs = _search(client, search_all_experiments=True,
                   filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    if runs.empty:
        raise ReportError(f"run {parent_run_id} has no child runs (no run is tagged "
                          f"mlflow.parentRunId = {parent_run_id})")
    return runs


def runs_of_experiment(client: MlflowClient, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """An experiment's runs that match an MLflow filter (e.g. "params.corpus = 'tiny'"), oldest first, without
    parent runs whose children are among them. Raises TrackingError for an unknown experiment and ReportError
    for a bad filter or when no run matches."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment named '{experiment_name}' in {client.tracking_uri}")
    try:
        runs = _search(client, experiment_ids=[experiment.experiment_id], filter_string=filter_string or "")
    except mlflow.exceptions.MlflowException as error:
        raise ReportError(f"MLflow refuses the filter {filter_string!r}: {_first_line(error)}") from None
    if not runs.empty and "tags.mlflow.parentRunId" in runs:
        parents = set(runs["tags.mlflow.parentRunId"].dropna())
        runs = runs[~runs["run_id"].isin(parents)].reset_index(drop=True)
    if runs.empty:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise ReportError(f"no runs in experiment '{experiment_name}'{where}")
    return runs


def _search(client: MlflowClient, **query) -> pd.DataFrame:
    with _tracking_uri(client.tracking_uri):
        return mlflow.search_runs(output_format="pandas", order_by=["attributes.start_time ASC"], **query)


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """mlflow.search_runs reads the global tracking URI: point it at the client's store for the call."""
    if mlflow.get_tracking_uri() == uri:
        yield
        return
    saved, saved_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def load_runs(client: MlflowClient, runs: pd.DataFrame | Sequence[str]) -> list[RunCurves]:
    """Runs (a search_runs DataFrame, or run ids) with their loss and tokens_seen histories."""
    if not isinstance(runs, pd.DataFrame):
        ids = list(dict.fromkeys(runs))
        if not ids:
            raise ReportError("no runs to report on")
        experiments = sorted({tracking.get_run(client, run_id).info.experiment_id for run_id in ids})
        quoted = ", ".join(f"'{run_id}'" for run_id in ids)
        found = _search(client, experiment_ids=experiments, filter_string=f"attributes.run_id IN ({quoted})")
        order = {run_id: index for index, run_id in enumerate(ids)}
        runs = found.sort_values("run_id", key=lambda column: column.map(order)).reset_index(drop=True)
    if runs.empty:
        raise ReportError("no runs to report on")
    loaded = []
    for _, row in runs.iterrows():
        params = {k[len("params."):]: str(v) for k, v in row.items() if k.startswith("params.") and _present(v)}
        tags = {k[len("tags."):]: str(v) for k, v in row.items() if k.startswith("tags.") and _present(v)}
        run_id = str(row["run_id"])
        loaded.append(RunCurves(
            run_id=run_id,
            name=tags.get("mlflow.runName") or run_id[:8],
            status=str(row.get("status", "")),
            params=params,
            tags=tags,
            train=_history(client, run_id, "train_loss"),
            val=_history(client, run_id, "val_loss"),
            tokens=_history(client, run_id, "tokens_seen"),
        ))
    return loaded


def _history(client: MlflowClient, run_id: str, key: str) -> Curve:
    by_step = {}
    for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[metric.step] = metric.value
    return sorted(by_step.items())


# ---------------------------------------------------------------- the report


def build_report(client: MlflowClient, runs: pd.DataFrame | Sequence[str], out_dir: Path,
                 parent_run_id: str | None = None) -> Report:
    """Write the plots and tables of runs to out_dir; when parent_run_id is given, also log them as its
    artifacts under report/. Raises ReportError when there are no runs, TrackingError for an unknown run."""
    if parent_run_id:
        tracking.get_run(client, parent_run_id)
    loaded = load_runs(client, runs)
    swept = swept_params(loaded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []

    table = run_table(loaded, swept)
    table.to_csv(out_dir / "runs.csv", index=False)
    files.append(out_dir / "runs.csv")
    (out_dir / "runs.md").write_text(_markdown(table))
    files.append(out_dir / "runs.md")

    _plot_loss_curves(loaded, out_dir / "loss_curves.png")
    files.append(out_dir / "loss_curves.png")
    if any(run.final_val is not None for run in loaded):
        _plot_final_val(loaded, swept, out_dir / "final_val_loss.png")
        files.append(out_dir / "final_val_loss.png")
    nc = alpha = None
    sizes = {_number(run.params.get(MODEL_SIZE)) for run in loaded if run.final_val is not None}
    if len(sizes - {None}) >= 2:
        nc, alpha = _plot_scaling(loaded, out_dir / "scaling.png")
        files.append(out_dir / "scaling.png")

    if parent_run_id:
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="report")
    return Report(out_dir, tuple(files), table, tuple(swept), alpha, nc)


def swept_params(runs: Sequence[RunCurves]) -> list[str]:
    """The settings whose values differ across runs, in SWEEP_PREFERENCE order. A model-size change shows as
    MODEL_SIZE when every run logged it, else as the first differing of config, n_layer, n_head, n_embd."""

    def differs(key: str) -> bool:  # runs that did not log the key (failed at start, say) do not count
        return len({_normal(run.value(key)) for run in runs} - {None}) > 1

    swept = []
    size_keys = [key for key in MODEL_SIZE_PARAMS if differs(key)]
    for key in SWEEP_PREFERENCE:
        if key == MODEL_SIZE:
            if size_keys:
                numeric = all(_number(run.value(MODEL_SIZE)) for run in runs)
                swept.append(MODEL_SIZE if numeric else size_keys[0])
        elif differs(key):
            swept.append(key)
    return swept


def run_table(runs: Sequence[RunCurves], swept: Sequence[str] = ()) -> pd.DataFrame:
    """One row a run (TABLE_COLUMNS), sorted by the swept settings, then name. The diagnosis is the run's
    `diagnosis` tag, else worked out from its curves."""
    rows = []
    for run in runs:
        diagnosis = run.tags.get("diagnosis") or diagnose(run.train, run.val).tag
        rows.append({
            "run_name": run.name, "run_id": run.run_id, "status": run.status,
            **{key: run.value(key) for key in TABLE_PARAMS},
            "final_train_loss": run.final_train, "final_val_loss": run.final_val, "min_val_loss": run.min_val,
            "tokens_seen": run.tokens_seen, "diagnosis": diagnosis,
        })
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["tokens_seen"] = table["tokens_seen"].astype("Int64")  # whole numbers, blank where unknown
    keys = [run_key for run_key in swept if run_key in table] + ["run_name"]
    order = sorted(range(len(runs)), key=lambda i: tuple(_sort_key(table.iloc[i][k]) for k in keys))
    return table.iloc[order].reset_index(drop=True)


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


# ---------------------------------------------------------------- plots


def _figure(width: float = 9.0, height: float = 5.5):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


def _colours(count: int) -> list:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["viridis"](i / max(1, count - 1)) for i in range(count)]


def _plot_loss_curves(runs: Sequence[RunCurves], path: Path) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    by_tokens = all(run.tokens_at([1]) is not None for run in runs if run.train or run.val)
    figure, ax = _figure()
    handles = []
    for run, colour in zip(runs, _colours(len(runs))):
        for curve, style in ((run.train, "-"), (run.val, "--")):
            if not curve:
                continue
            steps = [s for s, _ in curve]
            x = run.tokens_at(steps) if by_tokens else steps
            ax.plot(x, [v for _, v in curve], linestyle=style, color=colour, linewidth=1.4,
                    marker="o" if style == "--" else None, markersize=3)
        label = run.name if run.train or run.val else f"{run.name} (no losses logged)"
        handles.append(Line2D([], [], color=colour, linewidth=2, label=label))
    handles += [Line2D([], [], color="none", label=""),
                Line2D([], [], color="black", linestyle="-", label="train loss"),
                Line2D([], [], color="black", linestyle="--", marker="o", markersize=3, label="val loss")]
    ax.set_xlabel("tokens seen" if by_tokens else "step")
    if by_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Train (solid) and val (dashed) loss")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(figure, path)


def _plot_final_val(runs: Sequence[RunCurves], swept: Sequence[str], path: Path) -> None:
    with_val = [run for run in runs if run.final_val is not None]
    x_key = swept[0] if swept else None
    with_val = [run for run in with_val if x_key is None or run.value(x_key) is not None]
    numeric = x_key is not None and all(_number(run.value(x_key)) is not None for run in with_val)
    others = [key for key in swept[1:] if not (x_key == MODEL_SIZE and key in MODEL_SIZE_PARAMS)]
    groups: dict[str, list[RunCurves]] = {}
    for run in with_val:
        label = ", ".join(f"{key}={run.value(key)}" for key in others)
        groups.setdefault(label, []).append(run)

    figure, ax = _figure()
    categories = sorted({run.value(x_key) or "" for run in with_val}, key=_sort_key) if x_key else []
    for (label, members), colour in zip(sorted(groups.items()), _colours(len(groups))):
        if numeric:
            points = sorted((_number(run.value(x_key)), run.final_val) for run in members)
        elif x_key:
            points = sorted((categories.index(run.value(x_key) or ""), run.final_val) for run in members)
        else:
            points = [(with_val.index(run), run.final_val) for run in members]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label or None)
    if numeric and x_key in LOG_AXES:
        ax.set_xscale("log", base=LOG_AXES[x_key])
    if numeric:  # a tick at every value swept, labelled as logged (sizes in k/M)
        from matplotlib.ticker import EngFormatter, NullFormatter

        values = {_number(run.value(x_key)): run.value(x_key) for run in with_val}
        if len(values) <= 12:
            engineering = EngFormatter(sep="")
            ax.set_xticks(sorted(values), [engineering(v) if x_key == MODEL_SIZE else values[v]
                                           for v in sorted(values)])
            ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ticks = categories if x_key else [run.name for run in with_val]
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if len(ticks) > 4 else 0, ha="right")
    names = {MODEL_SIZE: "non-embedding parameters", "lr": "peak learning rate (lr)"}
    ax.set_xlabel(names.get(x_key, x_key) if x_key else "run")
    ax.set_ylabel("final val loss (nats per token)")
    ax.set_title(f"Final val loss by {names.get(x_key, x_key)}" if x_key else "Final val loss by run")
    ax.grid(True, alpha=0.3, which="both")
    if any(groups) and len(groups) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    _save(figure, path)


def _plot_scaling(runs: Sequence[RunCurves], path: Path) -> tuple[float | None, float | None]:
    best: dict[float, float] = {}
    for run in runs:
        size = _number(run.params.get(MODEL_SIZE))
        if size and run.final_val is not None:
            best[size] = min(best.get(size, math.inf), run.final_val)
    sizes = np.array(sorted(best))
    losses = np.array([best[s] for s in sizes])
    try:
        nc, alpha = fit_power_law(sizes, losses)
    except ReportError:
        nc = alpha = None

    figure, ax = _figure(7.5, 5.5)
    ax.scatter(sizes, losses, color="tab:blue", zorder=3, label="best final val loss at each size")
    if alpha is not None:
        grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 100)
        ax.plot(grid, (nc / grid) ** alpha, color="tab:red", linestyle="--",
                label="least-squares fit on log-log axes")
        ax.set_title(f"Scaling law: L(N) = (Nc/N)^α with α = {alpha:.3f}, Nc = {nc:.3g}")
    else:
        ax.set_title("Scaling: no power law could be fitted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    low, high = losses.min(), losses.max()  # plain numbers on the loss axis: 3.2, not 3.2 x 10^0
    ticks = np.geomspace(low, high, 5) if high > low else np.array([low])
    ax.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final val loss L (nats per token)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="best", fontsize="small")
    _save(figure, path)
    return nc, alpha


# ---------------------------------------------------------------- helpers


def _markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(row[column]) for column in table.columns) + " |")
    return "\n".join(lines) + "\n"


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _normal(text):
    number = _number(text)
    return number if number is not None else text


def _sort_key(value):
    number = _number(value)
    if number is not None:
        return (0, number, "")
    return (1, 0.0, "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
