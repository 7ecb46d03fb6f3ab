"""Resuming a run: the options given beside --resume checked against the run's own settings, and a larger budget
that trains the run longer.

Options equal to the run's own are accepted without a word; any other change is refused in one line naming each
option with both values, except --device and a larger budget (--max-steps, --max-tokens, --epochs). A larger
budget re-plans the learning rate as nanoGPT (a larger max_iters) and Hugging Face's Trainer (a new max_steps)
do: the steps left follow the schedule of the new budget, as if it had been the budget from the start (the same
warmup, then the cosine from lr down to min_lr at the new last step). The rate therefore rises at the resume
step to where the longer schedule is, and a later resume of the extended run stays exact, as the schedule is a
function of its saved settings. Each extension is a param of the run, `extension_N`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from pipeline.errors import SettingsError
from pipeline.settings import MODEL_FIELDS, TrainSettings
from pipeline.training.schedule import total_steps_for

BUDGET_FIELDS = ("epochs", "max_steps", "max_tokens")
ANY_VALUE = ("resume", "device")  # the run to continue, and where: neither changes what it computes
EXTENSION_PARAM = "extension_"
TOTAL_STEPS_TAG = "lab.total_steps"


def settings_to_resume(saved: TrainSettings, model_config: dict, given: TrainSettings, given_names) -> TrainSettings:
    """The run's own settings with the device given now and any budget given; SettingsError naming every other
    option given with a value that differs from the run's. model_config: the run's model, as its checkpoint
    keeps it."""
    refused, budget = [], {}
    for f in fields(TrainSettings):
        if f.name not in given_names or f.name in ANY_VALUE:
            continue
        run_value, value = getattr(saved, f.name), getattr(given, f.name)
        if f.name in MODEL_FIELDS and run_value is None:  # left to the config (or the --init-from source)
            run_value = model_config[f.name]
        if value == run_value:
            continue
        if f.name in BUDGET_FIELDS:
            budget[f.name] = value
        else:
            refused.append(f"{_flag(f.name)} is {_shown(run_value)} there, {_shown(value)} given")
    if refused:
        raise SettingsError(f"--resume continues run {given.resume} with its own settings: {'; '.join(refused)} "
                            "(only --device may change, and a larger --max-steps, --max-tokens or --epochs "
                            "trains it longer)")
    return replace(saved, resume=given.resume, device=given.device, **budget)


@dataclass(frozen=True)
class Extension:
    """A resume with a larger budget: the run planned old_total steps, now new_total, from step start_step."""

    start_step: int
    old_total: int
    new_total: int
    changes: dict  # the budget settings given, {name: (run's value, new value)}

    def describe(self) -> str:
        return (f"extended from {self.old_total:,} to {self.new_total:,} steps at step {self.start_step:,}, "
                f"the learning rate re-planned for {self.new_total:,} steps")

    def as_param(self) -> str:
        changed = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in self.changes.items())
        return f"at step {self.start_step}: {self.old_total} -> {self.new_total} steps ({changed})"


def check_budget(settings: TrainSettings, saved: TrainSettings, start_step: int, total_steps: int,
                 n_windows: int, window_length: int) -> Extension | None:
    """The extension a resume's budget makes (None when it keeps the run's own); SettingsError for a budget that
    would shorten the run, and for a finished run given no larger one."""
    run_id = settings.resume
    old_total = total_steps_for(saved, n_windows, window_length)
    if total_steps < old_total:
        raise SettingsError(f"the budget given ends run {run_id} at step {total_steps:,}, before the "
                            f"{old_total:,} steps it planned: a resume may lengthen a run, not shorten it")
    if start_step >= total_steps:
        raise SettingsError(f"run {run_id} is finished ({start_step:,} of {total_steps:,} steps): to train it "
                            f"longer, give a larger budget, e.g. --resume {run_id} --max-steps {2 * total_steps}")
    if total_steps == old_total:
        return None
    changes = {name: (getattr(saved, name), getattr(settings, name)) for name in BUDGET_FIELDS
               if getattr(saved, name) != getattr(settings, name)}
    return Extension(start_step, old_total, total_steps, changes)


def record_extension(client, run_id: str, extension: Extension) -> None:
    """The extension as the run's next `extension_N` param (params never change: one key per extension), and
    its new length as the tag `lab.total_steps` (the param total_steps keeps the first plan's)."""
    count = sum(key.startswith(EXTENSION_PARAM) for key in client.get_run(run_id).data.params)
    client.log_param(run_id, f"{EXTENSION_PARAM}{count + 1}", extension.as_param())
    client.set_tag(run_id, TOTAL_STEPS_TAG, str(extension.new_total))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return '""' if value == "" else str(value)
