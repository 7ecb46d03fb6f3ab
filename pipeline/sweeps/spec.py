"""experiments.yaml: named sweeps, validated whole before anything runs, expanded into train settings."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml

from pipeline.files import project_file
from pipeline.errors import SettingsError, first_line
from pipeline.settings import TrainSettings, coerce, setting_type, settings_from_mapping, short_number
from pipeline.sweeps import schema

EXPERIMENTS_PATH = project_file("experiments.yaml")
# The scales an exercise comes in: a sweep NAME_cpu finishes in minutes on a laptop CPU, NAME_gpu is sized for a GPU
SCALES = ("auto", "cpu", "gpu")
# init_from: "@NAME" starts a run from the final weights of the sweep's run named NAME, which runs before it
SWEEP_RUN = "@"


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its name, the settings it changes on top of base, and the settings in full."""

    name: str
    overrides: dict
    settings: TrainSettings

    @property
    def key(self) -> str:
        """Identifies the point across re-runs: the same settings give the same key."""
        resolved = {k: v for k, v in asdict(self.settings).items() if k not in ("run_name", "resume")}
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Search:
    """What method bayes searches: each setting's values (a list) or distribution, and how many trials."""

    parameters: dict[str, list | schema.Distribution]
    run_cap: int
    seed: int
    early_terminate: schema.Hyperband | schema.Median | None


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    method: str
    metric: str
    goal: str  # minimize or maximize
    points: tuple[SweepPoint, ...]  # none for bayes: its trials are drawn as the search goes
    spec: dict
    base: TrainSettings
    search: Search | None = None  # method bayes only

    @property
    def swept(self) -> list[str]:
        if self.search:
            return sorted(self.search.parameters)
        return sorted({key for point in self.points for key in point.overrides})

    @property
    def experiment(self) -> str:
        return self.points[0].settings.experiment if self.points else self.base.experiment

    @property
    def size(self) -> int:
        """How many runs the sweep makes at most."""
        return self.search.run_cap if self.search else len(self.points)


def load_sweeps(path: Path = EXPERIMENTS_PATH) -> dict[str, Sweep]:
    """Every sweep of the file, each checked; the first problem anywhere raises SettingsError."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"experiments file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"{path} is not valid YAML: {first_line(error, limit=1000)}") from None
    if not isinstance(raw, dict) or set(raw) != {"sweeps"} or not isinstance(raw["sweeps"], dict):
        raise SettingsError(f"{path} must hold one key, 'sweeps', mapping sweep names to their specs")
    if not raw["sweeps"]:
        raise SettingsError(f"{path} defines no sweeps")
    return {str(name): parse_sweep(str(name), spec) for name, spec in raw["sweeps"].items()}


def load_sweep(name: str, path: Path = EXPERIMENTS_PATH, scale: str = "auto") -> Sweep:
    """The sweep called name; an exercise defined at two scales (`NAME_cpu`, `NAME_gpu`) is found by NAME too, at
    the scale given (auto: gpu where PyTorch sees a CUDA GPU, else cpu)."""
    if scale not in SCALES:
        raise SettingsError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    sweeps = load_sweeps(path)
    if name in sweeps:
        return sweeps[name]
    scaled = {f"{name}_{each}" for each in SCALES[1:]} & set(sweeps)
    if scaled:
        chosen = f"{name}_{device_scale() if scale == 'auto' else scale}"
        if chosen not in sweeps:
            raise SettingsError(f"sweep '{name}' has no {chosen.rsplit('_', 1)[1]} scale "
                                f"(there is {sorted(scaled)[0]})")
        return sweeps[chosen]
    raise SettingsError(f"unknown sweep '{name}' (known: {', '.join(sweeps)})")


def device_scale() -> str:
    """The scale of exercise this machine runs in minutes: gpu where PyTorch sees a CUDA GPU, else cpu."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def parse_sweep(name: str, spec) -> Sweep:
    where = f"sweep '{name}'"
    checked = schema.validate(name, spec)
    base = settings_from_mapping(checked.base, where=f"{where}, base")
    if isinstance(checked, schema.ListSweep):
        choices = checked.runs
    else:
        for setting in checked.parameters:
            _known(where, setting)
        if isinstance(checked, schema.GridSweep):
            choices = _grid(where, checked.parameters)
        elif isinstance(checked, schema.BayesSweep):
            return _bayes(name, checked, base, spec)
        else:
            choices = _random(where, checked.parameters, checked.run_cap, checked.seed)

    points = []
    for index, overrides in enumerate(choices):
        settings = _validated(settings_from_mapping(overrides, base=base, where=f"{where}, run {index + 1}"),
                              f"{where}, run {index + 1}")
        label = "-".join(f"{k}={_label(v)}" for k, v in overrides.items() if k != "run_name")
        run_name = settings.run_name or f"{name}-{index + 1:02d}" + (f"-{label}" if label else "")
        points.append(SweepPoint(run_name, overrides, settings))
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise SettingsError(f"{where}: two runs have the same settings")
    for index, point in enumerate(points):
        source = source_point(point)
        if source is not None and source not in [earlier.name for earlier in points[:index]]:
            raise SettingsError(f"{where}, run {index + 1}: init_from '{point.settings.init_from}' names no earlier "
                                f"run of the sweep (its runs: {', '.join(p.name for p in points)})")
    return Sweep(name, checked.description, checked.method, checked.metric.name, checked.metric.goal,
                 tuple(points), spec, base)


def source_point(point: SweepPoint) -> str | None:
    """The name of the sweep's run whose final weights this point starts from (init_from: "@NAME"), or None."""
    init_from = point.settings.init_from
    return init_from[len(SWEEP_RUN):] if init_from.startswith(SWEEP_RUN) else None


def _bayes(name: str, checked: schema.BayesSweep, base: TrainSettings, spec: dict) -> Sweep:
    """A search: no points up front, Optuna draws each trial's settings from the parameters as it goes."""
    where = f"sweep '{name}'"
    parameters = {}
    for setting, parameter in checked.parameters.items():
        context = f"{where}, parameter '{setting}'"
        if isinstance(parameter, schema.Values):
            parameters[setting] = [coerce(setting, v, context) for v in parameter.choices()]
            continue
        whole = setting_type(setting) is int
        if whole != (parameter.distribution == "int_uniform"):
            needs = "int_uniform" if whole else "log_uniform_values or uniform"
            raise SettingsError(f"{context}: '{setting}' is {setting_type(setting).__name__}: use {needs}")
        parameters[setting] = parameter
    for corner in ("min", "max"):  # every draw lies between these two: both must make valid settings
        values = {k: (min if corner == "min" else max)(p, key=_order) if isinstance(p, list) else getattr(p, corner)
                  for k, p in parameters.items()}
        at = f"{where}, parameters at their {corner}"
        _validated(settings_from_mapping(values, base=base, where=at), at)
    if checked.early_terminate is not None:
        if checked.metric.name != "val_loss":
            raise SettingsError(f"{where}: early_terminate stops trials on val_loss: metric must be val_loss")
        if not base.eval_interval:
            raise SettingsError(f"{where}: early_terminate needs evaluations: give base an eval_interval")
    search = Search(parameters, checked.run_cap, checked.seed, checked.early_terminate)
    return Sweep(name, checked.description, "bayes", checked.metric.name, checked.metric.goal, (), spec, base,
                 search)


def _grid(where: str, parameters: dict[str, schema.Values]) -> list[dict]:
    names = list(parameters)
    value_lists = [[coerce(n, v, f"{where}, parameter '{n}'") for v in parameters[n].choices()] for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*value_lists)]


def _random(where: str, parameters: dict, run_cap: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    draws: list[dict] = [{} for _ in range(run_cap)]
    for setting, spec in parameters.items():
        context = f"{where}, parameter '{setting}'"
        if isinstance(spec, schema.Distribution):
            kind, low, high = spec.distribution, spec.min, spec.max
            for draw in draws:
                if kind == "log_uniform_values":
                    value = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
                elif kind == "uniform":
                    value = float(f"{rng.uniform(low, high):.3g}")
                else:
                    value = int(rng.integers(int(low), int(high) + 1))
                draw[setting] = coerce(setting, value, context)
        else:
            values = [coerce(setting, v, context) for v in spec.choices()]
            for draw in draws:
                draw[setting] = values[int(rng.integers(len(values)))]
    return draws


def _order(value) -> tuple:
    """Numbers by size, then anything else by its text: where a list of values has its ends."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def _validated(settings: TrainSettings, where: str) -> TrainSettings:
    try:
        return settings.validate()
    except SettingsError as error:
        raise SettingsError(f"{where}: {error}") from None


def _known(where: str, setting: str) -> str:
    if setting not in {f.name for f in fields(TrainSettings)}:
        raise SettingsError(f"{where}: unknown parameter '{setting}' (not a train setting)")
    return setting


def _label(value) -> str:
    return short_number(value) if isinstance(value, float) else str(value).rsplit("/", 1)[-1]
