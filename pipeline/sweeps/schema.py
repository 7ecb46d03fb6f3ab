"""The shape of one sweep in experiments.yaml as pydantic models (unknown keys refused, `method` choosing the
model), and the one line that names the sweep and the key when a spec does not fit."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StrictFloat, StrictInt, Tag, ValidationError,
                      model_validator)
from pydantic_core import PydanticCustomError

from pipeline.errors import SettingsError

METHODS = ("grid", "random", "bayes", "list")
DISTRIBUTIONS = ("log_uniform_values", "uniform", "int_uniform")
Number = Union[StrictInt, StrictFloat]


def problem(text: str) -> PydanticCustomError:
    """An error whose text is the message the user reads (after the sweep and key it is about)."""
    return PydanticCustomError("lab", text)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Values(_Spec):
    """`values: [...]` to choose from, or `value: x`."""

    values: Annotated[list[Any], Field(min_length=1)] | None = None
    value: Any = None

    @model_validator(mode="before")
    @classmethod
    def _one_of_them(cls, data):
        if not isinstance(data, dict) or not {"values", "value"} & set(data):
            raise problem("give values: [...] or value: x")
        return data

    def choices(self) -> list:
        return self.values if self.values is not None else [self.value]


class Distribution(_Spec):
    """Numbers drawn between min and max: log-uniform (rates), uniform, or whole numbers."""

    distribution: Literal["log_uniform_values", "uniform", "int_uniform"]
    min: Number
    max: Number

    @model_validator(mode="after")
    def _ordered(self):
        if self.min >= self.max:
            raise problem("min and max must be numbers with min < max")
        if self.distribution == "log_uniform_values" and self.min <= 0:
            raise problem("log_uniform_values needs min > 0")
        return self


def _parameter_kind(value) -> str:
    return "distribution" if isinstance(value, dict) and "distribution" in value else "values"


Parameter = Annotated[Union[Annotated[Values, Tag("values")], Annotated[Distribution, Tag("distribution")]],
                      Discriminator(_parameter_kind)]


class Metric(_Spec):
    name: str = "val_loss"
    goal: Literal["minimize", "maximize"] = "minimize"


class Hyperband(_Spec):
    """W&B's hyperband: at evaluations min_iter, min_iter*eta, ... a trial goes on only if its val loss is among
    the best 1/eta of the trials that got there (asynchronous successive halving)."""

    type: Literal["hyperband"]
    min_iter: Annotated[StrictInt, Field(ge=1)] = 1
    eta: Annotated[StrictInt, Field(ge=2)] = 3


class Median(_Spec):
    """From evaluation min_iter on, a trial stops when its val loss is worse than the median of the finished
    trials' at the same evaluation, once startup_trials have finished."""

    type: Literal["median"]
    min_iter: Annotated[StrictInt, Field(ge=1)] = 1
    startup_trials: Annotated[StrictInt, Field(ge=1)] = 2


EarlyTerminate = Annotated[Union[Hyperband, Median], Field(discriminator="type")]


class _Sweep(_Spec):
    description: str = ""
    base: dict[str, Any] = {}
    metric: Metric = Metric()


class GridSweep(_Sweep):
    method: Literal["grid"]
    parameters: Annotated[dict[str, Values], Field(min_length=1)]


class RandomSweep(_Sweep):
    method: Literal["random"]
    parameters: Annotated[dict[str, Parameter], Field(min_length=1)]
    run_cap: Annotated[StrictInt, Field(ge=1)]
    seed: StrictInt = 0


class BayesSweep(RandomSweep):
    method: Literal["bayes"]
    early_terminate: EarlyTerminate | None = None


class ListSweep(_Sweep):
    method: Literal["list"]
    runs: Annotated[list[dict[str, Any]], Field(min_length=1)]


MODELS = {"grid": GridSweep, "random": RandomSweep, "bayes": BayesSweep, "list": ListSweep}

# what a key must be, for the messages of keys given wrongly or left out
KEY_NEEDS = {
    "run_cap": "a whole number of runs of at least 1",
    "seed": "a whole number",
    "goal": "minimize or maximize",
    "base": "a mapping of train settings",
    "runs": "a non-empty list of mappings of train settings",
    "parameters": "a mapping of at least one setting to its values",
    "values": "a non-empty list",
    "distribution": f"one of {', '.join(DISTRIBUTIONS)}",
    "min": "a number", "max": "a number",
    "min_iter": "a whole number of evaluations of at least 1",
    "eta": "a whole number of at least 2",
    "startup_trials": "a whole number of at least 1",
    "description": "one line of text", "name": "a metric name",
    "metric": "a mapping with name and goal",
    "early_terminate": "a mapping with type (hyperband or median) and its keys",
}
# keys that belong to another method
MISPLACED = {"run_cap": "run_cap and seed belong to methods random and bayes",
             "seed": "run_cap and seed belong to methods random and bayes",
             "early_terminate": "early_terminate belongs to method bayes",
             "runs": "method {method} takes 'parameters', not 'runs'",
             "parameters": "method list takes 'runs', not 'parameters'"}


def validate(name: str, spec) -> GridSweep | RandomSweep | BayesSweep | ListSweep:
    """The spec as its method's model; SettingsError with one line naming the sweep and the key otherwise."""
    where = f"sweep '{name}'"
    if not isinstance(spec, dict):
        raise SettingsError(f"{where}: must be a mapping of description, base, method, parameters or runs, ...")
    method = spec.get("method", "grid")
    if method not in MODELS:
        raise SettingsError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    try:
        return MODELS[method].model_validate({**spec, "method": method})
    except ValidationError as error:
        errors = error.errors()
        misplaced = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
        raise SettingsError(_one_line(where, method, (misplaced or errors)[0])) from None


def _one_line(where: str, method: str, error: dict) -> str:
    kind = error["type"]
    loc = tuple(part for part in error["loc"] if part not in ("int", "float"))  # a Number's member types
    key = str(loc[-1]) if loc else ""
    context = where
    if len(loc) >= 2:
        context += f", parameter '{loc[1]}'" if loc[0] == "parameters" else f", {loc[0]}"
    if kind == "lab":
        return f"{context}: {error['msg']}"
    if kind == "extra_forbidden":
        if len(loc) == 1 and key in MISPLACED:
            return f"{where}: {MISPLACED[key].format(method=method)}"
        known = f" (known: {', '.join(sorted(MODELS[method].model_fields))})" if len(loc) == 1 else ""
        return f"{context}: unknown key '{key}'{known}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{context}: {key} needs type: hyperband or median, got {error['input']!r}"
    if key == "parameters" and kind in ("missing", "too_short", "dict_type"):
        return f"{where}: 'parameters' must map at least one setting to its values"
    if loc and loc[0] == "runs" and kind in ("missing", "too_short", "list_type", "dict_type"):
        return f"{where}: 'runs' must be {KEY_NEEDS['runs']}"
    if kind == "missing":
        return f"{context}: method {method} needs {key}, {KEY_NEEDS.get(key, 'a value')}"
    if key in KEY_NEEDS:
        return f"{context}: {key} must be {KEY_NEEDS[key]}, got {error['input']!r}"
    return f"{context}: {key}: {error['msg']}"
