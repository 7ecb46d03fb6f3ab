"""What the page shows of each run, read from MLflow: status, latest metrics, loss histories (samples are read by
pipeline.tracking.samples)."""

from __future__ import annotations

import json
from urllib.parse import quote

from mlflow.tracking import MlflowClient

SUMMARY_METRICS = ("train_loss", "val_loss", "tokens_per_sec", "tokens_seen")
CURVES = ("train_loss", "val_loss")
MAX_CURVE_POINTS = 1000  # per curve sent to the page; longer histories are thinned evenly, the last point kept


def run_url(mlflow_url: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(mlflow_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """MLflow's compare view: #/compare-runs?runs=[...]&experiments=[...] (JSON lists, as its UI writes them)."""
    runs = quote(json.dumps(list(dict.fromkeys(run_ids)), separators=(",", ":")))
    experiments = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return f"{mlflow_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


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
        "total_steps": params.get("total_steps", ""),
        "metrics": {key: data.metrics.get(key) for key in SUMMARY_METRICS},
        "diagnosis": tags.get("diagnosis", ""),
        "diagnosis_detail": tags.get("diagnosis_detail", ""),
        "error": tags.get("error", ""),
        "sweep": tags.get("lab.sweep", ""),
        "role": tags.get("lab.role", ""),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "links": {"run": run_url(mlflow_url, info.experiment_id, info.run_id)},
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
