"""A sweep's child runs: each point (or bayes trial) is a nested MLflow run that one `pipeline.train` process
logs into. Both ways of sweeping (runner.py's grid, random and list; search.py's bayes) start children here."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace

from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.files import child_python_path
from pipeline.settings import TrainSettings, settings_to_args
from pipeline.sweeps.spec import Sweep, SweepPoint

log = logging.getLogger(__name__)

CHILD_ROLE = "sweep_child"


@dataclass(frozen=True)
class ChildOutcome:
    point: SweepPoint
    run_id: str
    status: str  # FINISHED, FAILED or KILLED
    skipped: bool
    error: str = ""
    pruned: bool = False  # a trial of a bayes sweep stopped early (FINISHED, tagged lab.pruned)


def train_command(settings: TrainSettings, python: str = sys.executable, names=None) -> list[str]:
    """The one way the lab starts a trainer in a process of its own (a sweep's child, the dashboard's run);
    names: only these settings on its command line (a resume: the run id and a budget)."""
    return [python, "-m", "pipeline.train", *settings_to_args(settings, names)]


def point_command(point: SweepPoint) -> list[str]:
    """The trainer of a sweep point, its run named after the point."""
    return train_command(replace(point.settings, run_name=point.name))


def create_child(client: MlflowClient, sweep: Sweep, point: SweepPoint, parent_id: str, experiment_id: str,
                 tags: dict[str, str] | None = None) -> str:
    run = client.create_run(experiment_id, run_name=point.name, tags={
        "mlflow.parentRunId": parent_id,
        "lab.sweep": sweep.name,
        "lab.role": CHILD_ROLE,
        "lab.child_key": point.key,
        **(tags or {}),
    })
    return run.info.run_id


def run_child(client: MlflowClient, point: SweepPoint, run_id: str, env: dict[str, str] | None = None) -> ChildOutcome:
    """One `pipeline.train` process logging into the child run made for it; its output is prefixed and shown."""
    env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "PYTHONPATH": child_python_path(), **(env or {})}
    log.info("start %s (run %s)", point.name, run_id)
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(point_command(point), env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in process.stdout:
            log.info("[%s] %s", point.name, line.rstrip())
        process.wait()
        errors.seek(0)
        error_lines = [line.strip() for line in errors if line.strip()]
    run = client.get_run(run_id)
    status = run.info.status
    if status == "RUNNING":  # the process died before it could end its run
        status = tracking.STATUS_FAILED
        tracking.finish_run(client, run_id, status)
    error = "" if status == "FINISHED" else (error_lines[-1] if error_lines else f"exit code {process.returncode}")
    pruned = status == "FINISHED" and tracking.PRUNED_TAG in run.data.tags
    log.info("%s %s%s%s", point.name, status, " (pruned)" if pruned else "", f": {error}" if error else "")
    return ChildOutcome(point, run_id, status, skipped=False, error=error, pruned=pruned)
