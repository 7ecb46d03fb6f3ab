"""MLflow runs: where they are stored, starting, finding and ending them, and the corpus as a dataset input."""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingError, first_line


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the embedded SQLite store in the working folder (artifacts beside it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def connect() -> MlflowClient:
    """A client on the tracking store, checked to answer before any training starts."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = client_for(uri)
    check_reachable(client)
    return client


def client_for(uri: str) -> MlflowClient:
    """A client on uri that, over HTTP, fails within seconds instead of MLflow's minutes of retries."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return MlflowClient(uri)


def check_reachable(client: MlflowClient) -> None:
    """One cheap request; a TrackingError naming the store when it does not answer. On a new SQLite file this
    also runs MLflow's migrations, once, before parallel processes could race to."""
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # connection refused, DNS, bad URI, locked database...
        raise TrackingError(f"cannot reach the MLflow tracking store at {client.tracking_uri}: "
                            f"{first_line(error)}") from None


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


HEARTBEAT_TAG = "lab.heartbeat"
HEARTBEAT_SECONDS = 30.0  # a trainer refreshes its run's heartbeat this often; three missed beats mean it is gone


def beat(client: MlflowClient, run_id: str) -> None:
    """Mark the run as being trained right now, by this process on this machine."""
    client.set_tag(run_id, HEARTBEAT_TAG, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}")


def live_trainer(run) -> str | None:
    """Who is training the run right now, or None when nobody is (it ended, or its trainer crashed).

    A trainer on this machine is alive while its process exists and beats; one elsewhere while it beats.
    A run left RUNNING by kill -9 or a power cut therefore resumes at once here, within 90 s elsewhere."""
    heartbeat = run.data.tags.get(HEARTBEAT_TAG, "").split()
    if len(heartbeat) != 3:
        return None
    host, pid, beaten_at = heartbeat[0], int(heartbeat[1]), float(heartbeat[2])
    age = time.time() - beaten_at
    if age > 3 * HEARTBEAT_SECONDS:
        return None
    if host == socket.gethostname():
        if pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's process: it exists
            pass
    return f"process {pid} on {host}, heard from {age:.0f} s ago"


def get_run(client: MlflowClient, run_id: str):
    """The run; a TrackingError when the store has no such run (a store that does not answer raises as it is)."""
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise TrackingError(f"no MLflow run with id '{run_id}' in {client.tracking_uri}") from None


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params the run does not have yet: `mlflow run` already logged its -P values, as the user typed them,
    and MLflow refuses to change a param."""
    present = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in present]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])


def finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


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
