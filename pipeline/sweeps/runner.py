"""Running a sweep: one parent MLflow run, one nested child run per point, each child a `pipeline.train` process.

A re-run skips the points that already FINISHED with the same settings, so an interrupted sweep picks up where
it stopped. Children run in `workers` parallel processes; each writes only its own run, in batches, which
MLflow's SQLite store takes from several processes at once.
"""

from __future__ import annotations

import json
import logging
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.analysis.findings import Findings, comparable_metric, pick_best
from pipeline.files import PROJECT_DIR
from pipeline.errors import SettingsError
from pipeline.sweeps.children import CHILD_ROLE, ChildOutcome, create_child, point_command, run_child
from pipeline.sweeps.search import run_trials
from pipeline.sweeps.spec import Sweep, SweepPoint, source_point

log = logging.getLogger(__name__)

PARENT_ROLE = "sweep"


@dataclass(frozen=True)
class PlannedRun:
    point: SweepPoint
    finished_run_id: str | None  # a FINISHED run with the same settings: skipped


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    status: str
    children: tuple[ChildOutcome, ...]
    report_files: tuple[Path, ...] = ()
    findings: Findings | None = None  # what the report found (None when no report was written)

    @property
    def failures(self) -> list[ChildOutcome]:
        return [c for c in self.children if c.status != "FINISHED"]


def placed(client: MlflowClient, sweep: Sweep) -> Sweep:
    """The sweep with every point in the one experiment its parent goes to (see tracking.experiment_to_use: the
    sweep file's, or `mlflow run --experiment-name`'s), so that the parent and its children are never apart."""
    experiment = tracking.experiment_to_use(client, sweep.experiment)
    points = tuple(replace(p, settings=replace(p.settings, experiment=experiment)) for p in sweep.points)
    return replace(sweep, points=points, base=replace(sweep.base, experiment=experiment))


def plan(client: MlflowClient, sweep: Sweep) -> list[PlannedRun]:
    """Each point of the sweep, with the FINISHED run that already covers it, if any."""
    sweep = placed(client, sweep)
    finished = _finished_children(client, sweep)
    return [PlannedRun(point, finished.get(point.key)) for point in sweep.points]


def run_sweep(client: MlflowClient, sweep: Sweep, workers: int = 1) -> SweepResult:
    """Run every point not yet finished (for bayes: trials up to run_cap), then end the parent FINISHED (FAILED
    if every child failed)."""
    if workers < 1:
        raise SettingsError(f"workers must be at least 1, got {workers}")
    sweep = placed(client, sweep)
    parent_id = _parent_run(client, sweep)
    experiment_id = client.get_run(parent_id).info.experiment_id
    child_ids: dict[str, str] = {}  # made up front, to end those never started if the sweep stops
    outcomes: dict[str, ChildOutcome] = {}
    try:
        if sweep.search:
            children = tuple(run_trials(client, sweep, parent_id, experiment_id, workers))
        else:
            children = _run_points(client, sweep, parent_id, experiment_id, workers, child_ids, outcomes)
        all_failed = all(c.status != "FINISHED" for c in children)
        status = tracking.STATUS_FAILED if all_failed else tracking.STATUS_FINISHED
        best = best_child(client, sweep, children)
        if best:
            client.set_tag(parent_id, "lab.best_run", best.run_id)
        summary = _summary(sweep, children, best)
        client.set_tag(parent_id, "lab.summary", summary[:5000])
        client.log_dict(parent_id, {"sweep": sweep.name, "children": [
            {"name": c.point.name, "run_id": c.run_id, "status": c.status, "skipped": c.skipped, "error": c.error,
             "pruned": c.pruned} for c in children]}, "summary.json")
        # failed runs stay in the report: a rate that diverged is part of the lesson
        report = _report(client, parent_id, [c.run_id for c in children], sweep) if not all_failed else None
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        for key, run_id in child_ids.items():
            if key not in outcomes and client.get_run(run_id).info.status == "RUNNING":  # never started
                tracking.finish_run(client, run_id, tracking.STATUS_KILLED)
        tracking.finish_run(client, parent_id, tracking.STATUS_KILLED if interrupted else tracking.STATUS_FAILED)
        raise
    tracking.finish_run(client, parent_id, status)
    log.info(summary)
    if report is None:
        return SweepResult(parent_id, status, children)
    return SweepResult(parent_id, status, children, report.files, report.findings)


def _run_points(client: MlflowClient, sweep: Sweep, parent_id: str, experiment_id: str, workers: int,
                child_ids: dict[str, str], outcomes: dict[str, ChildOutcome]) -> tuple[ChildOutcome, ...]:
    """grid, random and list: every point not yet FINISHED, in workers parallel processes."""
    planned = plan(client, sweep)
    for item in planned:
        if item.finished_run_id:
            log.info("skip %s: finished as run %s", item.point.name, item.finished_run_id)
            outcomes[item.point.key] = ChildOutcome(item.point, item.finished_run_id, "FINISHED", skipped=True)
    todo = [item.point for item in planned if not item.finished_run_id]
    if todo:
        log.info("sweep %s: %d run(s) to do, %d already finished, %d worker(s)", sweep.name, len(todo),
                 len(planned) - len(todo), workers)
    for point in todo:
        child_ids[point.key] = create_child(client, sweep, point, parent_id, experiment_id)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # in rounds: a run that starts from another's weights (init_from "@NAME") waits for that one to end
        while todo:
            ready = [p for p in todo if source_point(p) is None or source_point(p) not in
                     {waiting.name for waiting in todo}]
            for outcome in pool.map(lambda p: _run_point(client, p, child_ids[p.key], outcomes), ready):
                outcomes[outcome.point.key] = outcome
            todo = [p for p in todo if p not in ready]
    finally:  # stopped (Ctrl-C): the points not yet started never start
        pool.shutdown(wait=True, cancel_futures=True)
    return tuple(outcomes[point.key] for point in sweep.points)


def _run_point(client: MlflowClient, point: SweepPoint, run_id: str, outcomes: dict[str, ChildOutcome]) -> ChildOutcome:
    """run_child, with init_from "@NAME" made the id of that run, which must have FINISHED."""
    source = source_point(point)
    if source is None:
        return run_child(client, point, run_id)
    [ended] = [outcome for outcome in outcomes.values() if outcome.point.name == source]
    if ended.status != tracking.STATUS_FINISHED:
        error = f"its source run {source} ended {ended.status}"
        client.set_tag(run_id, "error", error)
        tracking.finish_run(client, run_id, tracking.STATUS_FAILED)
        return ChildOutcome(point, run_id, tracking.STATUS_FAILED, skipped=False, error=error)
    resolved = replace(point, settings=replace(point.settings, init_from=ended.run_id))
    return replace(run_child(client, resolved, run_id), point=point)


def best_child(client: MlflowClient, sweep: Sweep, children) -> ChildOutcome | None:
    """The FINISHED child, not pruned, with the best last value of the sweep's metric for its goal (val_bpb for
    val_loss where the children's tokenizers differ)."""
    finished = [child for child in children if child.status == "FINISHED" and not child.pruned]
    runs = {child.run_id: client.get_run(child.run_id).data for child in finished}
    metric = comparable_metric(sweep.metric, (run.params.get("tokenizer") for run in runs.values()))
    return pick_best(finished, lambda child: runs[child.run_id].metrics.get(metric), sweep.goal)


def _finished_children(client: MlflowClient, sweep: Sweep) -> dict[str, str]:
    experiment = client.get_experiment_by_name(sweep.experiment)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`lab.sweep` = '{sweep.name}' and tags.`lab.role` = '{CHILD_ROLE}' "
                      "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    finished: dict[str, str] = {}
    for run in runs:
        finished.setdefault(run.data.tags.get("lab.child_key", ""), run.info.run_id)
    return finished


def _parent_run(client: MlflowClient, sweep: Sweep) -> str:
    """The run `mlflow run` made for us (or its replacement in the sweep's experiment), else this sweep's last
    parent run (so re-runs nest under one parent), else a new one."""
    tags = {"lab.sweep": sweep.name, "lab.role": PARENT_ROLE}
    experiment = sweep.experiment
    given = tracking.given_run(client, experiment, f"sweep-{sweep.name}")
    if given:
        parent_id, _ = given
    else:
        experiment_id = tracking.experiment_id(client, experiment)
        previous = client.search_runs(
            [experiment_id], filter_string=f"tags.`lab.sweep` = '{sweep.name}' and tags.`lab.role` = '{PARENT_ROLE}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if previous:
            parent_id = previous[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
        else:
            parent_id = client.create_run(experiment_id, run_name=f"sweep-{sweep.name}", tags=tags).info.run_id
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    client.log_text(parent_id, yaml.safe_dump({sweep.name: sweep.spec}, sort_keys=False), "sweep.yaml")
    return parent_id


def _summary(sweep: Sweep, children: tuple[ChildOutcome, ...], best: ChildOutcome | None) -> str:
    finished = sum(c.status == "FINISHED" for c in children)
    skipped = sum(c.skipped for c in children)
    pruned = sum(c.pruned for c in children)
    line = (f"sweep {sweep.name}: {finished}/{len(children)} runs finished ({skipped} from earlier"
            + (f", {pruned} pruned" if pruned else "") + ")")
    if best:
        metric = comparable_metric(sweep.metric, (c.point.settings.tokenizer for c in children))  # as best_child
        line += f"; best by {metric} ({sweep.goal}): {best.point.name}"
    failures = [f"{c.point.name} {c.status}: {c.error}" for c in children if c.status != "FINISHED"]
    return line + ("; failed: " + "; ".join(failures) if failures else "")


def _report(client: MlflowClient, parent_id: str, run_ids: list[str], sweep: Sweep):
    """The sweep's comparison report (analysis.comparison.Report), or None when it could not be written."""
    from pipeline.analysis.comparison import build_report

    out_dir = Path("reports") / f"{sweep.name}-{parent_id[:8]}"
    try:
        return build_report(client, run_ids, out_dir, parent_run_id=parent_id, metric=sweep.metric, goal=sweep.goal)
    except Exception as error:  # a report is a view of the runs: never lose the sweep over it
        log.warning("report for sweep %s failed: %s", sweep.name, error)
        return None


def scheduler_commands(client: MlflowClient, sweep: Sweep) -> list[str]:
    """One self-contained shell command per point not yet finished, for a scheduler to run anywhere that
    reaches the same tracking server. Each logs into a child run made now (status SCHEDULED) under the parent;
    running the sweep again afterwards finds them finished and only writes the report."""
    if sweep.search:
        raise SettingsError(f"sweep '{sweep.name}' is a bayes search: each trial is drawn from the results before "
                            "it, so it cannot be printed as commands; run it with --workers N")
    if any(source_point(point) is not None for point in sweep.points):
        raise SettingsError(f"sweep '{sweep.name}' has runs that start from another of its runs' weights "
                            "(init_from '@NAME'): run it with python -m pipeline.sweep, which runs them in order")
    sweep = placed(client, sweep)
    parent_id = _parent_run(client, sweep)
    experiment_id = client.get_run(parent_id).info.experiment_id
    commands = []
    for item in plan(client, sweep):
        if item.finished_run_id:
            continue
        run_id = create_child(client, sweep, item.point, parent_id, experiment_id)
        client.update_run(run_id, status="SCHEDULED")
        env = f"MLFLOW_TRACKING_URI={shlex.quote(tracking.tracking_uri())} MLFLOW_RUN_ID={run_id}"
        commands.append(f"cd {shlex.quote(str(PROJECT_DIR))} && {env} python -m pipeline.train "
                        + shlex.join(point_command(item.point)[3:]))
    if commands:
        client.update_run(parent_id, status="SCHEDULED")
        tracking.release_placeholder(parent_id)
    else:
        tracking.finish_run(client, parent_id, tracking.STATUS_FINISHED)
    return commands


def describe(planned: list[PlannedRun]) -> list[str]:
    """One line per run for --dry-run."""
    lines = []
    for item in planned:
        state = f"finished as {item.finished_run_id}, skip" if item.finished_run_id else "to run"
        overrides = json.dumps(item.point.overrides) if item.point.overrides else "{}"
        lines.append(f"{item.point.name}  {overrides}  ({state})")
    return lines
