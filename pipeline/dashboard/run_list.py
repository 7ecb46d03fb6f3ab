"""What the page shows of each run, read from MLflow: status, latest metrics, loss histories (samples are read by
pipeline.tracking.samples); a finished run's curves and sample never change, so they are kept, not read again at
every poll."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from mlflow.tracking import MlflowClient

from pipeline.tracking import run_ui_url
from pipeline.tracking.models import model_of
from pipeline.tracking.samples import SampleReader

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("train_loss", "val_loss", "tokens_per_sec", "tokens_seen")
CURVES = ("train_loss", "val_loss")
MAX_CURVE_POINTS = 1000  # per curve sent to the page; longer histories are thinned evenly, the last point kept
UNFINISHED = ("RUNNING", "SCHEDULED")  # every other status is final until the run is resumed
KEPT_FINISHED = 100  # finished runs whose curves and sample stay in memory: ~150 KB each at most (2 x 1000 points)


def run_url(mlflow_url: str, experiment_id: str, run_id: str) -> str:
    return run_ui_url(experiment_id, run_id, base=mlflow_url)


def experiment_names(client: MlflowClient) -> dict[str, str]:
    return {e.experiment_id: e.name for e in client.search_experiments()}


def search(client: MlflowClient, experiment_ids: list[str], limit: int):
    if not experiment_ids:
        return []
    return client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], max_results=limit)


def summary(run, experiment_name: str, mlflow_url: str) -> dict:
    info, data = run.info, run.data
    tags, params = data.tags, data.params
    return {
        "run_id": info.run_id,
        "name": info.run_name or info.run_id[:8],
        "experiment_id": info.experiment_id,
        "experiment": experiment_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "config": params.get("config") or tags.get("lab.config", ""),
        "corpus": tags.get("lab.corpus") or params.get("corpus", ""),
        "lr": params.get("lr", ""),
        "total_steps": tags.get("lab.total_steps") or params.get("total_steps", ""),  # the tag: once extended
        "metrics": {key: data.metrics.get(key) for key in SUMMARY_METRICS},
        "diagnosis": tags.get("diagnosis", ""),
        "diagnosis_detail": tags.get("diagnosis_detail", ""),
        "error": tags.get("error", ""),
        "sweep": tags.get("lab.sweep", ""),
        "role": tags.get("lab.role", ""),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "links": {"run": run_url(mlflow_url, info.experiment_id, info.run_id)},
        "model_id": model_of(run) or "",
        "init_from": tags.get("lab.init_from", ""),  # the weights it started from (--init-from)
        "init_from_run": tags.get("lab.init_from_run", ""),
    }



def _thin(points: list[list]) -> list[list]:
    if len(points) <= MAX_CURVE_POINTS:
        return points
    every = len(points) / (MAX_CURVE_POINTS - 1)
    kept = [points[int(i * every)] for i in range(MAX_CURVE_POINTS - 1)]
    return kept + [points[-1]]


def curve(client: MlflowClient, run_id: str, key: str) -> list[list]:
    """[[step, value], ...] by step; a step logged twice (a resumed run) keeps its newest value."""
    by_step: dict[int, tuple[int, float]] = {}
    for metric in client.get_metric_history(run_id, key):
        previous = by_step.get(metric.step)
        if previous is None or metric.timestamp >= previous[0]:
            by_step[metric.step] = (metric.timestamp, metric.value)
    return _thin([[step, value] for step, (_, value) in sorted(by_step.items())])


class Recent:
    """The `size` most recently used values by key; thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._values: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
            return self._values.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)


class RunDetails:
    """A run's curves and newest sample, read from MLflow. A finished run's never change (resuming it changes its
    status and end time), so they are read once and kept for the KEPT_FINISHED runs shown most recently."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self.samples = SampleReader(client)
        self._finished = Recent(KEPT_FINISHED)

    def of(self, run) -> dict:
        """{"curves": {key: [[step, value], ...] for CURVES}, "sample": the newest sample or None}."""
        finished = run.info.status not in UNFINISHED
        key = (run.info.run_id, run.info.end_time)
        kept = self._finished.get(key) if finished else None
        if kept is not None:
            return kept
        detail = {"curves": {name: curve(self.client, run.info.run_id, name) for name in CURVES}, "sample": None}
        try:
            detail["sample"] = self.samples.latest(run.info.run_id, run.info.artifact_uri)
        except Exception as problem:  # an artifact being written right now: next poll
            log.debug("sample of %s: %s", run.info.run_id, problem)
            return detail
        if finished:
            self._finished.put(key, detail)
        return detail
