"""MLflow runs: where they are stored, starting, finding and ending them (and taking over the run `mlflow run`
made for us), and the corpus as a dataset input."""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.errors import TrackingError, first_line
from pipeline.files import child_python_path
from pipeline.settings import TrainSettings
from pipeline.tracking.statistics import keep_statistics

log = logging.getLogger(__name__)

OUR_DEFAULT_EXPERIMENT = TrainSettings.experiment
STATUS_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
STATUS_FAILED = RunStatus.to_string(RunStatus.FAILED)
STATUS_KILLED = RunStatus.to_string(RunStatus.KILLED)
PRUNED_TAG = "lab.pruned"  # on a bayes sweep's trial stopped early: the step it stopped at (the run is FINISHED)

_replaced: dict[str, str] = {}  # run id -> the run `mlflow run` made that it replaced, in this process


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
    """A client on uri that, over HTTP, fails within seconds instead of MLflow's minutes of retries, and on a
    SQLite store reads one run's metrics through the run's index however big the store grows."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    keep_statistics(uri)  # before the client opens its connections: they keep the statistics they first read
    return MlflowClient(uri)


def check_reachable(client: MlflowClient) -> None:
    """One cheap request; a TrackingError naming the store when it does not answer. On a new SQLite file this
    also runs MLflow's migrations, once, before parallel processes could race to."""
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # connection refused, DNS, bad URI, locked database...
        raise TrackingError(f"cannot reach the MLflow tracking store at {client.tracking_uri}: "
                            f"{first_line(error)}") from None


# MLflow 3's UI opens on its GenAI views (traces, judges) unless told that the page is about model training: by
# the URL's workflowType (what MLflow 3.17 reads) and by the experiment's kind tag (what other versions read).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created (tagged as model training) when missing; an untagged one gets the tag."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if not any(key in experiment.tags for key in EXPERIMENT_KIND):  # a kind the user chose stays
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def ui_base() -> str:
    """The MLflow UI of the tracking store: the server itself, else `mlflow ui` on this machine."""
    uri = tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def ui_url(path: str, base: str | None = None) -> str:
    """A link into the MLflow UI (path as in `#/experiments/1/runs/ID`) that opens its model-training view."""
    joiner = "&" if "?" in path else "?"
    return f"{(base or ui_base()).rstrip('/')}/#/{path.lstrip('#/')}{joiner}{UI_VIEW}"


def run_ui_url(experiment: str, run_id: str, base: str | None = None) -> str:
    return ui_url(f"experiments/{experiment}/runs/{run_id}", base)


def start_run(client: MlflowClient, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A new RUNNING run; under `mlflow run` (or a sweep, the dashboard, a scheduler) the run made for us."""
    given = given_run(client, experiment, run_name)
    if given is None:
        return client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id
    run_id, _ = given
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def experiment_to_use(client: MlflowClient, asked: str) -> str:
    """Where this process's run belongs. An experiment named on purpose (`-P experiment=X`, a sweep file's
    `experiment`) wins; else the one `mlflow run --experiment-name` filed $MLFLOW_RUN_ID under; else ours.
    MLflow's Default experiment only means nobody chose, and our default name cannot tell whether it was typed."""
    given = os.environ.get("MLFLOW_RUN_ID")
    if not given or asked != OUR_DEFAULT_EXPERIMENT:
        return asked
    filed_under = get_run(client, given).info.experiment_id
    return asked if filed_under == DEFAULT_EXPERIMENT_ID else client.get_experiment(filed_under).name


def given_run(client: MlflowClient, experiment: str, run_name: str = "") -> tuple[str, str] | None:
    """The run made for this process before it started ($MLFLOW_RUN_ID), set RUNNING, as (run id, experiment
    name); None when there is none. A run `mlflow run` made in another experiment than experiment_to_use's, or
    with params it shell-quoted (it logs `''` for an empty value, mlflow#6811), is replaced: see _replace."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    experiment = experiment_to_use(client, experiment)
    run = get_run(client, run_id)
    target_id = experiment_id(client, experiment)
    if run.info.experiment_id != target_id or _quoted_by_mlflow_run(run):
        run_id = _replace(client, run, target_id, experiment, run_name)
    client.update_run(run_id, status="RUNNING", name=run_name or None)
    return run_id, experiment


def unquoted(value: str) -> str:
    """What a program received for a value `mlflow run` logged: MLflow logs the shlex.quote'd text it puts in
    the command (`''` for empty, `'a b'`), bash hands the program the text itself."""
    try:
        words = shlex.split(value)
    except ValueError:
        return value
    return words[0] if len(words) == 1 and shlex.quote(words[0]) == value else value


def _quoted_by_mlflow_run(run) -> bool:
    made_by_mlflow_run = MLFLOW_PROJECT_ENTRY_POINT in run.data.tags
    return made_by_mlflow_run and any(unquoted(v) != v for v in run.data.params.values())


def _replace(client: MlflowClient, placeholder, target_id: str, experiment: str, run_name: str) -> str:
    """Runs cannot move between experiments and params cannot change, so the run continues as a new run in the
    right experiment, with `mlflow run`'s tags and its params as the program received them; each names the other
    (lab.replaces, lab.replaced_by). The placeholder stays RUNNING until `mlflow run` ends it after the program
    exits (MLflow always does, and fails the command if the run is deleted by then); it is deleted after that,
    see release_placeholder."""
    old_id = placeholder.info.run_id
    tags = {k: v for k, v in placeholder.data.tags.items() if k != MLFLOW_RUN_NAME}
    new_id = client.create_run(target_id, run_name=run_name or placeholder.info.run_name,
                               tags={**tags, "lab.replaces": old_id}).info.run_id
    params = [Param(k, unquoted(v)) for k, v in placeholder.data.params.items()]
    for start in range(0, len(params), 100):
        client.log_batch(new_id, params=params[start : start + 100])
    client.set_tag(old_id, "lab.replaced_by", new_id)
    client.set_tag(old_id, MLFLOW_RUN_NOTE, f"Continued as run {new_id} in experiment '{experiment}', with the "
                                            "params as the program received them.")
    _replaced[new_id] = old_id
    log.info("run %s (made by mlflow run) continues as run %s in experiment '%s'", old_id, new_id, experiment)
    return new_id


def release_placeholder(run_id: str) -> None:
    """Once run_id is ended, have the run it replaced deleted as soon as `mlflow run` has ended that one: by a
    detached `python -m pipeline.tracking.handover`, since `mlflow run` ends it only after this process exits."""
    placeholder = _replaced.pop(run_id, None)
    if placeholder is None:
        return
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "PYTHONPATH": child_python_path()}
    subprocess.Popen([sys.executable, "-m", "pipeline.tracking.handover", placeholder], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # outlives this process, and Ctrl-C in its terminal


HEARTBEAT_TAG = "lab.heartbeat"
HEARTBEAT_SECONDS = 30.0  # a trainer refreshes its run's heartbeat this often; three missed beats mean it is gone


def beat(client: MlflowClient, run_id: str) -> None:
    """Mark the run as being trained right now, by this process on this machine."""
    client.set_tag(run_id, HEARTBEAT_TAG, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}")


def unclaim(client: MlflowClient, run_id: str) -> None:
    """A resume refused before it trained: the run is free again (its heartbeat, this process's, removed)."""
    client.delete_tag(run_id, HEARTBEAT_TAG)


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
    release_placeholder(run_id)


def last_logged_step(client: MlflowClient, run_id: str, key: str = "train_loss") -> int:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def log_dataset(client: MlflowClient, run_id: str, name: str, source: str, digest: str,
                context: str = "training") -> None:
    """The corpus as the run's dataset input: the run page shows its name, source and digest.

    MLflow adds a dataset new to an experiment after looking for it, so two runs that start together (a sweep's
    workers) can both add it, and the second fails on the table's unique key; it is there by then, and a second
    try links the run to it."""
    dataset = _dataset_input(name, source, digest, context)
    try:
        client.log_inputs(run_id, datasets=[dataset])
    except mlflow.exceptions.MlflowException:
        client.log_inputs(run_id, datasets=[dataset])


def _dataset_input(name: str, source: str, digest: str, context: str):
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

