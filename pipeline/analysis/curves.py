"""A set of runs as the analysis needs them: found in MLflow (a sweep's children, or an experiment's runs),
with their params, tags and loss histories, and which settings differ across them."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import ReportError, TrackingError, first_line
from pipeline.tracking.diagnosis import diagnose, vocab_size_of

Curve = list[tuple[int, float]]

MODEL_SIZE = "n_params_non_embedding"
# Settings that change the model's size; when any differs the x axis is MODEL_SIZE, if every run logged it.
MODEL_SIZE_PARAMS = ("config", "n_layer", "n_head", "n_embd", MODEL_SIZE)
# The settings a sweep may vary, most telling first: the first one that differs is the x axis of final_val_loss.
# Model size leads: a scaling sweep also sets each size's own lr, and its axis is still N. The tokenizer comes next:
# a tokenizers sweep sets each one's context and budget with it; then the optimizer, each tried at its own rates.
SWEEP_PREFERENCE = (MODEL_SIZE, "tokenizer", "optimizer", "lr", "muon_lr", "context_length", "batch_size",
                    "grad_accum", "max_tokens", "max_steps", "epochs", "min_lr", "warmup_steps", "weight_decay",
                    "dropout", "grad_clip", "beta1", "beta2", "stride", "seed", "corpus")
TAG_FALLBACKS = {"config": "lab.config", "corpus": "lab.corpus"}
OTHER_VAL = "metrics.val_loss/"  # the val loss of another corpus (--eval-corpus), as search_runs names it


@dataclass(frozen=True)
class RunCurves:
    """One run as the report needs it: identity, params, tags and its loss histories; tokens is its tokens_seen
    history only when it did not log tokens_per_step (tokens_at and tokens_seen work from either)."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    train: Curve
    val: Curve
    tokens: Curve
    novelty: Curve = ()  # the share of new 8-grams in each sample
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of every metric
    artifact_uri: str = ""  # where the run's artifacts are (samples are read from there)
    bpb_times: tuple[tuple[float, float], ...] = ()  # (seconds since its first step, val_bpb) at each evaluation
    other_val: dict[str, Curve] = field(default_factory=dict)  # --eval-corpus NAME's val_loss/NAME, by NAME
    eval_seconds: tuple[tuple[int, float], ...] = ()  # (step, seconds since its first step) of each evaluation

    def value(self, key: str) -> str | None:
        """A param as logged (config and corpus from tags for older runs); None when missing or unused: every run
        logs muon_lr, only a Muon run trains with it."""
        if key == "muon_lr" and self.params.get("optimizer") != "muon":
            return None
        value = self.params.get(key)
        if value in (None, "") and key in TAG_FALLBACKS:
            value = self.tags.get(TAG_FALLBACKS[key])
        return value if value not in (None, "") else None

    def label(self, swept: Sequence[str]) -> str:
        """The run named by what differs across the runs it is compared with ("lr=0.001", "N=98.3K"), else its
        name."""
        shown = [f"N={count_text(number(self.value(key)) or 0)}" if key == MODEL_SIZE else f"{key}={self.value(key)}"
                 for key in swept if self.value(key) is not None]
        return ", ".join(shown) or self.name

    @property
    def trouble(self) -> str:
        """'diverged' (failed, or a non-finite loss), 'unstable' (its diagnosis: a loss spike), else ''."""
        if self.status == "FAILED" or (self.final_train is not None and not math.isfinite(self.final_train)):
            return "diverged"
        return "unstable" if self.diagnosis == "unstable" else ""

    @property
    def diagnosis(self) -> str:
        """The run's `diagnosis` tag, else worked out from its curves (runs logged before the tag was written)."""
        return self.tags.get("diagnosis") or diagnose(self.train, self.val, vocab_size_of(self.params)).tag

    @property
    def pruned(self) -> bool:
        """A trial of a bayes sweep stopped early: drawn, but left out of fits and comparisons of final losses."""
        return tracking.PRUNED_TAG in self.tags

    @property
    def final_train(self) -> float | None:
        return self.train[-1][1] if self.train else None

    @property
    def final_val(self) -> float | None:
        return self.val[-1][1] if self.val else None

    @property
    def final_novelty(self) -> float | None:
        return self.novelty[-1][1] if self.novelty else None

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
        per_step = number(self.params.get("tokens_per_step"))
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
        raise ReportError(f"MLflow refuses the filter {filter_string!r}: {first_line(error)}") from None
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
        timed = _timed_history(client, run_id, "val_bpb")
        loaded.append(RunCurves(
            run_id=run_id,
            name=tags.get("mlflow.runName") or run_id[:8],
            status=str(row.get("status", "")),
            params=params,
            tags=tags,
            train=_history(client, run_id, "train_loss"),
            val=_history(client, run_id, "val_loss"),
            # tokens_seen is step x tokens_per_step: with that param, tokens_at works it out, and a history as
            # long as train_loss's is not read (half the report's time on a store of long runs)
            tokens=[] if number(params.get("tokens_per_step")) else _history(client, run_id, "tokens_seen"),
            novelty=_history(client, run_id, "novelty"),
            artifact_uri=str(row.get("artifact_uri") or ""),
            bpb_times=tuple((seconds, value) for _, seconds, value in timed),
            eval_seconds=tuple((step, seconds) for step, seconds, _ in timed),
            other_val={k[len(OTHER_VAL):]: _history(client, run_id, k[len("metrics."):]) for k, v in row.items()
                       if k.startswith(OTHER_VAL) and _present(v)},
            metrics={k[len("metrics."):]: float(v) for k, v in row.items() if k.startswith("metrics.") and _present(v)},
        ))
    return loaded


def _history(client: MlflowClient, run_id: str, key: str) -> Curve:
    by_step = {}
    for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[metric.step] = metric.value
    return sorted(by_step.items())


def _timed_history(client: MlflowClient, run_id: str, key: str) -> tuple[tuple[int, float, float], ...]:
    """A metric against wall time: (step, seconds from the run's first training step to the value's timestamp,
    value), in time order. A sweep
    opens its children's runs together, so a run's start_time is not when it began training: the first step's time
    is extrapolated back from its first two train_loss logs (their steps and timestamps)."""
    train = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, "train_loss"))
    if len(train) < 2 or train[1][0] == train[0][0]:
        return ()
    (step1, ms1), (step2, ms2) = train[0], train[1]
    start_ms = ms1 - step1 * (ms2 - ms1) / (step2 - step1)
    timed = ((m.step, (m.timestamp - start_ms) / 1000, m.value) for m in client.get_metric_history(run_id, key))
    return tuple(sorted(timed, key=lambda item: item[1]))


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
                numeric = all(number(run.value(MODEL_SIZE)) for run in runs)
                swept.append(MODEL_SIZE if numeric else size_keys[0])
        elif differs(key):
            swept.append(key)
    return swept


def follows(runs: Sequence[RunCurves], x_key: str, key: str) -> bool:
    """True when key takes one value for each value of x_key: it changes with the axis (a size's layers and
    rate, the batch that keeps a step's tokens), so it is part of each point, not a variable of its own."""
    return len({(run.value(x_key), run.value(key)) for run in runs}) == len({run.value(x_key) for run in runs})


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def number(text) -> float | None:
    """A param's text as a finite number, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def count_text(value: float) -> str:
    """A count as people write it: 25K, 1.2M, 3.4G."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def _normal(text):
    value = number(text)
    return value if value is not None else text


def sort_key(value):
    """Numbers first, in order, then text: how swept values are ordered in tables and on axes."""
    value_number = number(value)
    if value_number is not None:
        return (0, value_number, "")
    return (1, 0.0, "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))
