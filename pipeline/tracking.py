"""MLflow glue: where runs are stored, starting and ending them, and logging that costs next to nothing.

Metrics are buffered and written with one `log_batch` call every few seconds (MLflow's synchronous
`log_metric` costs 4-13 ms a call on SQLite, a batch well under 1 ms a point).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pipeline.errors import LabError, TrackingError

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store in the working folder (artifacts beside it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def connect() -> MlflowClient:
    """A client on the tracking store, checked to answer before any training starts."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith("http"):
        # fail within seconds instead of MLflow's minutes of retries when the server is not there
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # connection refused, DNS, bad URI, locked database...
        raise TrackingError(f"cannot reach the MLflow tracking store at {uri}: {_first_line(error)}") from None
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def start_run(client: MlflowClient, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A new RUNNING run; under `mlflow run` (or a sweep) the run it already made for us ($MLFLOW_RUN_ID)."""
    existing = os.environ.get("MLFLOW_RUN_ID")
    if existing:
        client.update_run(existing, status="RUNNING", name=run_name or None)
        for key, value in tags.items():
            client.set_tag(existing, key, value)
        return existing
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags)
    return run.info.run_id


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"no MLflow run with id '{run_id}' in {tracking_uri()}") from None


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params the run does not have yet: `mlflow run` already logged its -P values, as the user typed them,
    and MLflow refuses to change a param."""
    present = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in present]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])


def finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


class MetricBuffer:
    """Collects metric points and writes them in batches, at most every `flush_seconds`.

    When the tracking store is away, points wait in memory and training goes on; they are sent when it is
    back. Points at or before `skip_through` are dropped: a resumed run re-computes steps it had already
    logged after its last checkpoint, and its history must not hold them twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 5.0, skip_through: int = -1):
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.skip_through = skip_through
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.unreachable_since: float | None = None

    def log(self, step: int, **values: float) -> None:
        if step <= self.skip_through:
            return
        timestamp = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), timestamp, step) for key, value in values.items())

    def maybe_flush(self) -> None:
        """Flush if flush_seconds have passed; call it between steps, so a step's points go out together."""
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Send what is pending; False (and a warning, once per outage) when the store cannot be reached."""
        self.last_flush = time.monotonic()
        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:MAX_BATCH])
                self.pending = self.pending[MAX_BATCH:]
        except Exception as error:  # connection refused, server error, locked database...
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                log.warning("cannot reach the tracking store (%s); training goes on, %d metric points wait",
                            _first_line(error), len(self.pending))
            return False
        if self.unreachable_since is not None:
            log.warning("the tracking store is back after %.0f s; waiting metrics sent",
                        time.monotonic() - self.unreachable_since)
            self.unreachable_since = None
        return True


def retry_until_sent(action, what: str, timeout: float | None = None) -> None:
    """Call action() until it succeeds, for up to timeout seconds ($LAB_TRACKING_RETRY_SECONDS, default 300)."""
    timeout = float(os.environ.get("LAB_TRACKING_RETRY_SECONDS", 300)) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            if action() is not False:
                return
            error_text = "not sent"
        except LabError:  # a problem retrying cannot fix, such as a full disk
            raise
        except Exception as error:
            error_text = _first_line(error)
        if time.monotonic() >= deadline:
            raise TrackingError(f"could not send {what} to the tracking store at {tracking_uri()} for "
                                f"{timeout:.0f} s ({error_text})")
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def last_logged_step(client: MlflowClient, run_id: str, key: str = "train_loss") -> int:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def dataset_input(name: str, source: str, digest: str, context: str = "training"):
    """The corpus as an MLflow dataset input: the run page shows its name, source and digest."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if source.startswith(("http://", "https://")):
        dataset_source = HTTPDatasetSource(source)
    else:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset_source = resolve_dataset_source(source)
    dataset = MetaDataset(dataset_source, name=name, digest=digest[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


STATUS_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
STATUS_FAILED = RunStatus.to_string(RunStatus.FAILED)
STATUS_KILLED = RunStatus.to_string(RunStatus.KILLED)
