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
from pipeline.settings import TrainSettings, coerce, settings_from_mapping, short_number

EXPERIMENTS_PATH = project_file("experiments.yaml")
METHODS = ("grid", "random", "list")
SWEEP_KEYS = {"description", "base", "method", "parameters", "runs", "metric", "run_cap", "seed"}
DISTRIBUTIONS = ("log_uniform_values", "uniform", "int_uniform")
GOALS = ("minimize", "maximize")
# The scales an exercise comes in: a sweep NAME_cpu finishes in minutes on a laptop CPU, NAME_gpu is sized for a GPU
SCALES = ("auto", "cpu", "gpu")


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
class Sweep:
    name: str
    description: str
    method: str
    metric: str
    goal: str
    points: tuple[SweepPoint, ...]
    spec: dict

    @property
    def swept(self) -> list[str]:
        return sorted({key for point in self.points for key in point.overrides})


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
    if not isinstance(spec, dict):
        raise SettingsError(f"{where}: must be a mapping of {', '.join(sorted(SWEEP_KEYS))}")
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(SWEEP_KEYS))})")
    method = spec.get("method", "grid")
    if method not in METHODS:
        raise SettingsError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    base_values = spec.get("base", {}) or {}
    if not isinstance(base_values, dict):
        raise SettingsError(f"{where}: 'base' must be a mapping of train settings")
    base = settings_from_mapping(base_values, where=f"{where}, base")
    metric_spec = spec.get("metric", {}) or {}
    if not isinstance(metric_spec, dict) or set(metric_spec) - {"name", "goal"}:
        raise SettingsError(f"{where}: 'metric' must be a mapping with 'name' and 'goal'")
    metric, goal = metric_spec.get("name", "val_loss"), metric_spec.get("goal", "minimize")
    if goal not in GOALS:
        raise SettingsError(f"{where}, metric: goal must be minimize or maximize, got {goal!r}")

    if method == "list":
        if "parameters" in spec:
            raise SettingsError(f"{where}: method list takes 'runs', not 'parameters'")
        runs = spec.get("runs")
        if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
            raise SettingsError(f"{where}: 'runs' must be a non-empty list of mappings of train settings")
        choices = runs
    else:
        if "runs" in spec:
            raise SettingsError(f"{where}: method {method} takes 'parameters', not 'runs'")
        parameters = spec.get("parameters")
        if not isinstance(parameters, dict) or not parameters:
            raise SettingsError(f"{where}: 'parameters' must map at least one setting to its values")
        if method == "grid":
            choices = _grid(where, parameters)
        else:
            choices = _random(where, parameters, spec.get("run_cap"), spec.get("seed", 0))
    if method != "random" and ("run_cap" in spec or "seed" in spec):
        raise SettingsError(f"{where}: run_cap and seed belong to method random")

    points = []
    for index, overrides in enumerate(choices):
        settings = settings_from_mapping(overrides, base=base, where=f"{where}, run {index + 1}")
        settings.validate()
        label = "-".join(f"{k}={_label(v)}" for k, v in overrides.items() if k != "run_name")
        run_name = settings.run_name or f"{name}-{index + 1:02d}" + (f"-{label}" if label else "")
        points.append(SweepPoint(run_name, overrides, settings))
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise SettingsError(f"{where}: two runs have the same settings")
    return Sweep(name, str(spec.get("description", "")), method, metric, goal, tuple(points), spec)


def _values(where: str, setting: str, spec) -> list:
    if not isinstance(spec, dict) or not ({"values", "value"} & set(spec)) or set(spec) - {"values", "value"}:
        raise SettingsError(f"{where}, parameter '{setting}': give values: [...] or value: x")
    values = spec["values"] if "values" in spec else [spec["value"]]
    if not isinstance(values, list) or not values:
        raise SettingsError(f"{where}, parameter '{setting}': values must be a non-empty list")
    return [coerce(setting, v, f"{where}, parameter '{setting}'") for v in values]


def _grid(where: str, parameters: dict) -> list[dict]:
    names = list(parameters)
    value_lists = [_values(where, _known(where, n), parameters[n]) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*value_lists)]


def _random(where: str, parameters: dict, run_cap, seed) -> list[dict]:
    if not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1:
        raise SettingsError(f"{where}: method random needs run_cap, a whole number of runs of at least 1")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SettingsError(f"{where}: seed must be a whole number")
    rng = np.random.default_rng(seed)
    draws: list[dict] = [{} for _ in range(run_cap)]
    for setting, spec in parameters.items():
        _known(where, setting)
        context = f"{where}, parameter '{setting}'"
        if isinstance(spec, dict) and "distribution" in spec:
            if set(spec) != {"distribution", "min", "max"}:
                raise SettingsError(f"{context}: a distribution takes exactly distribution, min and max")
            kind, low, high = spec["distribution"], spec["min"], spec["max"]
            if kind not in DISTRIBUTIONS:
                raise SettingsError(f"{context}: distribution must be one of {', '.join(DISTRIBUTIONS)}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) or low >= high:
                raise SettingsError(f"{context}: min and max must be numbers with min < max")
            if kind == "log_uniform_values" and low <= 0:
                raise SettingsError(f"{context}: log_uniform_values needs min > 0")
            for draw in draws:
                if kind == "log_uniform_values":
                    value = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
                elif kind == "uniform":
                    value = float(f"{rng.uniform(low, high):.3g}")
                else:
                    value = int(rng.integers(int(low), int(high) + 1))
                draw[setting] = coerce(setting, value, context)
        else:
            values = _values(where, setting, spec)
            for draw in draws:
                draw[setting] = values[int(rng.integers(len(values)))]
    return draws


def _known(where: str, setting: str) -> str:
    if setting not in {f.name for f in fields(TrainSettings)}:
        raise SettingsError(f"{where}: unknown parameter '{setting}' (not a train setting)")
    return setting


def _label(value) -> str:
    return short_number(value) if isinstance(value, float) else str(value).rsplit("/", 1)[-1]
