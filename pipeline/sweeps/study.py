"""The Optuna side of method bayes: where a sweep's study is stored, the sampler and pruner its spec asks for,
and the trainer's handle on its own trial.

The study lives in an SQLite file beside the MLflow store (`mlflow.db` -> `mlflow-optuna.db`), so a sweep run
again finds its trials and goes on. Each trial's trainer is a process of its own: it opens the same study from
the storage, study name and trial number its parent puts in LAB_TRIAL, reports val loss at each evaluation and
asks the pruner there whether to go on. Nothing travels through signals or is polled: the decision is taken in
the trainer, at the step it is about, on what every other trial has stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import first_line
from pipeline.sweeps import schema

log = logging.getLogger(__name__)

TRIAL_ENV = "LAB_TRIAL"  # JSON: storage, study, trial (number), early_terminate (the spec's, as a mapping)
STORAGE_ENV = "LAB_STUDY_STORAGE"  # an Optuna storage URL to use instead of the file beside the MLflow store


def storage_url(tracking_uri: str) -> str:
    """The study's storage: $LAB_STUDY_STORAGE, else an SQLite file beside a local MLflow store, else
    optuna.db in the current folder (a sweep's trials run on this machine, whatever the tracking server)."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri[len("sqlite:///"):].split("?")[0]).resolve()
        return f"sqlite:///{store.with_name(store.stem + '-optuna.db')}"
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path or tracking_uri).resolve()
        return f"sqlite:///{folder.with_name(folder.name + '-optuna.db')}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def study_name(sweep) -> str:
    """experiment/sweep/fingerprint: a changed search (base, parameters, metric, seed, pruning) is a new study;
    a changed run_cap or description continues the old one."""
    kept = {k: v for k, v in sweep.spec.items() if k not in ("run_cap", "description")}
    fingerprint = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{sweep.experiment}/{sweep.name}/{fingerprint}"


def _storage(url: str):
    import optuna

    # trainers of parallel trials write to one SQLite file: wait for its lock rather than fail at once
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def open_study(sweep, url: str):
    """The sweep's study, created on the first run and loaded on later ones, sampling with TPE, seeded so that
    a continued study does not draw its first trials again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if sweep.goal == "maximize" else "minimize"
    study = optuna.create_study(study_name=study_name(sweep), storage=_storage(url), direction=direction,
                                load_if_exists=True)
    run_cap = sweep.search.run_cap
    # random draws first (a third of the trials, 2 to 10), then TPE's model of what worked
    study.sampler = optuna.samplers.TPESampler(seed=sweep.search.seed + len(study.trials),
                                               n_startup_trials=max(2, min(10, run_cap // 3)))
    return study


def distributions(search) -> dict:
    """The parameters as Optuna distributions: values to choose from, or a range (log-scaled for rates)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, parameter in search.parameters.items():
        if isinstance(parameter, list):
            out[name] = CategoricalDistribution(parameter)
        elif parameter.distribution == "int_uniform":
            out[name] = IntDistribution(int(parameter.min), int(parameter.max))
        else:
            out[name] = FloatDistribution(float(parameter.min), float(parameter.max),
                                          log=parameter.distribution == "log_uniform_values")
    return out


def pruner(early_terminate: schema.Hyperband | schema.Median | None):
    """The rule that stops a trial early; steps are evaluations (1, 2, ...), as W&B counts min_iter."""
    import optuna

    if early_terminate is None:
        return optuna.pruners.NopPruner()
    if isinstance(early_terminate, schema.Hyperband):  # W&B's hyperband is asynchronous successive halving
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=early_terminate.min_iter,
                                                      reduction_factor=early_terminate.eta)
    return optuna.pruners.MedianPruner(n_startup_trials=early_terminate.startup_trials,
                                       n_warmup_steps=early_terminate.min_iter)


def trial_env(url: str, name: str, number: int, early_terminate) -> dict[str, str]:
    """What a trial's trainer needs to find its trial: for the environment of its process."""
    rule = early_terminate.model_dump() if early_terminate is not None else None
    return {TRIAL_ENV: json.dumps({"storage": url, "study": name, "trial": number, "early_terminate": rule})}


class TrialHandle:
    """A trainer's own trial: it reports val loss at each evaluation and learns whether to stop."""

    def __init__(self, storage: str, study: str, number: int, early_terminate: dict | None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rule = None
        if early_terminate:
            model = schema.Hyperband if early_terminate["type"] == "hyperband" else schema.Median
            rule = model.model_validate(early_terminate)
        backend = _storage(storage)
        loaded = optuna.load_study(study_name=study, storage=backend, pruner=pruner(rule))
        trial_id = backend.get_trial_id_from_study_id_trial_number(backend.get_study_id_from_name(study), number)
        self.trial = optuna.trial.Trial(loaded, trial_id)
        self.prunes = rule is not None

    @classmethod
    def from_env(cls) -> "TrialHandle | None":
        """The trial named in $LAB_TRIAL, None for a run that is not a trial of a search."""
        given = os.environ.get(TRIAL_ENV)
        if not given:
            return None
        spec = json.loads(given)
        return cls(spec["storage"], spec["study"], int(spec["trial"]), spec.get("early_terminate"))

    def should_stop(self, evaluation: int, val_loss: float) -> bool:
        """Report the val loss of the evaluation-th evaluation; True when the pruner says this trial is behind."""
        try:
            self.trial.report(val_loss, evaluation)
            return self.prunes and self.trial.should_prune()
        except Exception as error:  # the study is away or the trial was ended by its sweep: train on, unpruned
            log.warning("trial %d: no pruning at evaluation %d (%s)", self.trial.number, evaluation,
                        first_line(error))
            return False
