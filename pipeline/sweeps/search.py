"""Method bayes: Optuna's TPE draws each trial's settings from the trials before it, a child run trains them,
and the study is told the result. A sweep run again continues its study until run_cap trials have run.

A trial counts once its run ended FINISHED (pruned or not) or FAILED. One stopped part-way (its run KILLED, or
the sweep killed before it heard back) is retried with the same settings on the next run of the sweep.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor

from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import SettingsError
from pipeline.settings import settings_from_mapping, short_number
from pipeline.sweeps import study as studies
from pipeline.sweeps.children import ChildOutcome, create_child, run_child
from pipeline.sweeps.spec import Sweep, SweepPoint

log = logging.getLogger(__name__)

RUN_ID_ATTR = "mlflow_run_id"  # the trial's user attribute naming its child run


def run_trials(client: MlflowClient, sweep: Sweep, parent_id: str, experiment_id: str,
               workers: int) -> list[ChildOutcome]:
    """Every trial of the study that counts, the earlier ones first, after running those still to do."""
    from optuna.trial import TrialState

    url = studies.storage_url(tracking.tracking_uri())
    study = studies.open_study(sweep, url)
    runs = _runs_of(client, experiment_id, study.study_name)
    _settle(study, runs, sweep.metric)
    earlier = [_outcome(sweep, trial, runs[trial.user_attrs[RUN_ID_ATTR]])
               for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                     TrialState.FAIL))
               if runs.get(trial.user_attrs.get(RUN_ID_ATTR)) is not None
               and runs[trial.user_attrs[RUN_ID_ATTR]].info.status in ("FINISHED", "FAILED")]
    todo = max(0, sweep.search.run_cap - len(earlier))
    log.info("sweep %s: study %s in %s, %d trial(s) to do, %d done, %d worker(s)", sweep.name, study.study_name,
             url, todo, len(earlier), workers)
    space = studies.distributions(sweep.search)
    lock, stop = threading.Lock(), threading.Event()
    asked: list[int] = []

    def work() -> list[ChildOutcome]:
        done = []
        while not stop.is_set():
            with lock:
                if len(asked) >= todo:
                    return done
                trial = study.ask(space)
                asked.append(trial.number)
            done.append(_run_trial(client, sweep, study, trial, url, parent_id, experiment_id, lock))
        return done

    outcomes = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(work) for _ in range(min(workers, todo))]:
            outcomes += future.result()
    except BaseException:
        stop.set()  # the trials under way end on their own (their trainers got the same Ctrl-C); no new ones
        raise
    finally:
        pool.shutdown(wait=True)
    return earlier + sorted(outcomes, key=lambda outcome: outcome.point.name)


def _run_trial(client, sweep: Sweep, study, trial, url: str, parent_id: str, experiment_id: str,
               lock: threading.Lock) -> ChildOutcome:
    point = _point(sweep, trial.number, trial.params)
    run_id = create_child(client, sweep, point, parent_id, experiment_id,
                          tags={"lab.study": study.study_name, "lab.trial": str(trial.number)})
    trial.set_user_attr(RUN_ID_ATTR, run_id)
    try:
        point.settings.validate()
    except SettingsError as error:  # the corners were checked; a combination (min_lr above lr) may still fail
        client.set_tag(run_id, "error", str(error))
        tracking.finish_run(client, run_id, tracking.STATUS_FAILED)
        outcome = ChildOutcome(point, run_id, tracking.STATUS_FAILED, skipped=False, error=str(error))
    else:
        env = studies.trial_env(url, study.study_name, trial.number, sweep.search.early_terminate)
        outcome = run_child(client, point, run_id, env=env)
    with lock:
        _tell(study, trial.number, trial.params, client.get_run(run_id), sweep.metric)
    return outcome


def _point(sweep: Sweep, number: int, params: dict) -> SweepPoint:
    label = "-".join(f"{k}={short_number(v) if isinstance(v, float) else v}" for k, v in params.items())
    settings = settings_from_mapping(params, base=sweep.base, where=f"sweep '{sweep.name}', trial {number}")
    return SweepPoint(f"{sweep.name}-{number + 1:02d}-{label}", dict(params), settings)


def _tell(study, number: int, params: dict, run, metric: str) -> None:
    """The trial's result as its run shows it: a value, pruned, failed; or interrupted, then asked again."""
    from optuna.trial import TrialState

    status = run.info.status
    value = run.data.metrics.get(metric)
    if status == "FINISHED" and tracking.PRUNED_TAG in run.data.tags:
        study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
    elif status == "FINISHED" and value is not None and math.isfinite(value):
        study.tell(number, value, skip_if_finished=True)
    else:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        if status not in ("FINISHED", "FAILED"):  # stopped part-way: the next run of the sweep tries it again
            study.enqueue_trial(params, skip_if_exists=False)


def _settle(study, runs: dict, metric: str) -> None:
    """Trials a killed sweep left RUNNING: told what their runs show (or retried when they have none)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = runs.get(trial.user_attrs.get(RUN_ID_ATTR))
        if run is None:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, skip_if_exists=False)
        else:
            _tell(study, trial.number, trial.params, run, metric)


def _runs_of(client: MlflowClient, experiment_id: str, study_name: str) -> dict:
    escaped = study_name.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`lab.study` = '{escaped}'", max_results=50000)
    return {run.info.run_id: run for run in runs}


def _outcome(sweep: Sweep, trial, run) -> ChildOutcome:
    return ChildOutcome(_point(sweep, trial.number, trial.params), run.info.run_id, run.info.status, skipped=True,
                        error=run.data.tags.get("error", ""), pruned=tracking.PRUNED_TAG in run.data.tags)


def describe_trials(client: MlflowClient, sweep: Sweep) -> list[str]:
    """For --dry-run: the study, a line per trial so far, and how many are left to draw."""
    from optuna.trial import TrialState

    url = studies.storage_url(tracking.tracking_uri())
    name = studies.study_name(sweep)
    try:
        import optuna

        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:  # no such study yet
        trials = []
    lines = [f"study {name} in {url}: method bayes, run_cap {sweep.search.run_cap}, "
             f"over {', '.join(sweep.swept)}"]
    for trial in trials:
        value = f" {sweep.metric} {trial.value:.4f}" if trial.state == TrialState.COMPLETE else ""
        lines.append(f"trial {trial.number}  {trial.params}  ({trial.state.name.lower()}{value})")
    lines.append(f"{sweep.search.run_cap} trials in all: running the sweep draws those still missing")
    return lines
