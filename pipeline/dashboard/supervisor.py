"""What the launcher's routes share: the tracking store, the registry of the processes it started, and ending
the runs of processes that died without ending them."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import tracking
from pipeline.dashboard import run_list
from pipeline.dashboard.processes import ProcessRegistry

INTERRUPTED = 130  # the exit code of a trainer or sweep stopped by Ctrl-C (SIGINT)


class Dashboard:
    """What the routes share: the store, the registry of processes, where children run."""

    def __init__(self, tracking_uri: str, state_dir: Path, workdir: Path, experiments_path: Path, mlflow_url: str,
                 python: str):
        self.tracking_uri = tracking_uri
        self.state_dir = state_dir
        self.workdir = workdir
        self.experiments_path = experiments_path
        self.mlflow_url = mlflow_url.rstrip("/")
        self.python = python
        self.client = tracking.client_for(tracking_uri)
        self.registry = ProcessRegistry(state_dir)
        self.details = run_list.RunDetails(self.client)
        self._experiment_names: dict[str, str] = {}

    def check_store(self) -> None:
        """Reach the store once (this also creates a new SQLite file, before any child process could race)."""
        tracking.check_reachable(self.client)

    def experiment_names(self) -> dict[str, str]:
        """Every experiment's name by id, read afresh (and kept for experiment_name)."""
        self._experiment_names = run_list.experiment_names(self.client)
        return self._experiment_names

    def experiment_name(self, experiment_id: str) -> str:
        """An experiment's name as the last run list read it; read afresh when the experiment is newer."""
        if experiment_id not in self._experiment_names:
            self.experiment_names()
        return self._experiment_names.get(experiment_id, "")

    def on_process_ended(self, entry: dict) -> None:
        """A trainer that ended without ending its run (killed hard, or failed before it started the run): end
        the run KILLED if a stop was asked for, else FAILED with the process's error line."""
        if entry.get("kind") == "sweep":
            self._end_orphan_sweep_runs(entry)
            return
        if entry.get("kind") != "train" or not entry.get("run_id"):
            return
        run = self.client.get_run(entry["run_id"])
        if run.info.status != "RUNNING":
            return
        error = self.registry.last_error(entry)
        if entry.get("stop_requested_at") is not None:
            status = tracking.STATUS_KILLED
        else:
            status = tracking.STATUS_FAILED
            if error and "error" not in run.data.tags:
                self.client.set_tag(entry["run_id"], "error", error[:5000])
        tracking.finish_run(self.client, entry["run_id"], status)

    def _end_orphan_sweep_runs(self, entry: dict) -> None:
        """A sweep creates its child runs up front; stopped (or failed) part-way, those it never started stay
        RUNNING. Once no process of the sweep is left, end them: KILLED after a Stop, else FAILED."""
        try:
            os.killpg(entry["pid"], 0)
            return  # a trainer of the sweep still runs: it ends its own run
        except ProcessLookupError:
            pass
        except PermissionError:
            return
        experiment = self.client.get_experiment_by_name(entry.get("experiment") or "")
        name = entry.get("sweep") or ""
        if experiment is None or not name or "'" in name or "\\" in name:  # a name the filter cannot quote
            return
        started_ms = int(entry.get("started_at", 0) * 1000)
        status = tracking.STATUS_KILLED if entry.get("stop_requested_at") is not None else tracking.STATUS_FAILED
        orphans = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`lab.sweep` = '{name}' and tags.`lab.role` = 'sweep_child' "
                          f"and attributes.status = 'RUNNING' and attributes.start_time >= {started_ms}")
        for run in orphans:
            if status == tracking.STATUS_FAILED and "error" not in run.data.tags:
                self.client.set_tag(run.info.run_id, "error", "its sweep ended before it ran")
            tracking.finish_run(self.client, run.info.run_id, status)

    def processes(self) -> list[dict]:
        return self.registry.refresh(self.on_process_ended)

    def process_view(self, entry: dict) -> dict:
        ended = entry.get("ended_at") is not None
        view = {
            "id": entry["id"], "kind": entry["kind"], "pid": entry["pid"], "name": entry.get("name", ""),
            "running": not ended, "stopping": entry.get("stop_requested_at") is not None and not ended,
            "stoppable": not ended and entry.get("stop_requested_at") is None,
            "stop_requested": entry.get("stop_requested_at") is not None,
            "exit_code": entry.get("exit_code"), "started_at": entry.get("started_at"),
            "ended_at": entry.get("ended_at"),
        }
        if entry["kind"] == "sweep":
            view.update(sweep=entry.get("sweep"), workers=entry.get("workers"), points=entry.get("points"),
                        log_tail=self.registry.log_tail(entry, lines=4))
        elif not ended:  # the trainer's own progress line: newer than the metrics it writes in batches
            tail = self.registry.log_tail(entry, lines=1)
            view["last_line"] = tail[-1] if tail else ""
        if ended and entry.get("exit_code") == INTERRUPTED:  # Ctrl-C or Stop: the trainer's own line says so
            view["note"] = self.registry.last_error(entry)
        elif ended and entry.get("exit_code") not in (0, None):
            view["error"] = self.registry.last_error(entry)
        return view
