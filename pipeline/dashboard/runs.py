"""What the page shows of each run, read from MLflow: status, latest metrics, loss histories, the newest sample."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

from mlflow.tracking import MlflowClient

from pipeline.tracking import run_ui_url, ui_url
from pipeline.tracking.models import model_of

SUMMARY_METRICS = ("train_loss", "val_loss", "tokens_per_sec", "tokens_seen")
CURVES = ("train_loss", "val_loss")
MAX_CURVE_POINTS = 1000  # per curve sent to the page; longer histories are thinned evenly, the last point kept
SAMPLES_DIR = "samples"
SAMPLES_TABLE = "samples.json"


def run_url(mlflow_url: str, experiment_id: str, run_id: str) -> str:
    return run_ui_url(experiment_id, run_id, base=mlflow_url)


def compare_url(mlflow_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """MLflow's compare view: #/compare-runs?runs=[...]&experiments=[...] (JSON lists, as its UI writes them)."""
    runs = quote(json.dumps(list(dict.fromkeys(run_ids)), separators=(",", ":")))
    experiments = quote(json.dumps(sorted(set(experiment_ids)), separators=(",", ":")))
    return ui_url(f"compare-runs?runs={runs}&experiments={experiments}", base=mlflow_url)


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
        "model_id": model_of(run) or "",
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


class SampleReader:
    """The newest generated sample of a run: samples/step_NNNNNN.txt, else the last row of samples.json.

    A step file never changes once written, so its text is cached."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self._cache: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def _download_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as folder:
            local = self.client.download_artifacts(run_id, path, folder)
            return Path(local).read_text(encoding="utf-8", errors="replace")

    def latest(self, run_id: str) -> dict | None:
        files = [a.path for a in self.client.list_artifacts(run_id, SAMPLES_DIR) if not a.is_dir]
        steps = [p for p in files if Path(p).name.startswith("step_") and p.endswith(".txt")]
        if steps:
            path = max(steps)
            key = (run_id, path)
            with self._lock:
                text = self._cache.get(key)
            if text is None:
                text = self._download_text(run_id, path)
                if text:
                    with self._lock:
                        self._cache[key] = text
            step = Path(path).stem.removeprefix("step_")
            return {"step": int(step) if step.isdigit() else None, "text": text.rstrip("\n"), "path": path}
        root = {a.path for a in self.client.list_artifacts(run_id)}
        if SAMPLES_TABLE not in root:
            return None
        try:
            table = json.loads(self._download_text(run_id, SAMPLES_TABLE))
            columns, rows = table["columns"], table["data"]
            row = dict(zip(columns, rows[-1]))
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return {"step": row.get("step"), "text": f"{row.get('prompt', '')}{row.get('generation', '')}",
                "path": SAMPLES_TABLE}
