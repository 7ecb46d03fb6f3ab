"""Click options made from the TrainSettings dataclass, so the CLI cannot drift from the settings."""

from __future__ import annotations

from dataclasses import MISSING, fields

import click

from pipeline.settings import MODEL_FIELDS, TrainSettings, setting_type


def settings_options(command):
    """Add one option per TrainSettings field: `max_steps` becomes `--max-steps`. Model overrides also accept
    the underscore spelling, which `mlflow run -P n_layer=2` passes for parameters the MLproject leaves out."""
    for f in reversed(fields(TrainSettings)):
        names = [f"--{f.name.replace('_', '-')}"]
        if f.name in MODEL_FIELDS and "_" in f.name:
            names.append(f"--{f.name}")
        kind = setting_type(f.name)
        default = None if f.default is MISSING else f.default
        if kind is bool:  # `--compile` alone, or `--compile true/false` as the MLproject passes it
            option = click.option(*names, f.name, type=bool, is_flag=False, flag_value=True, default=default,
                                  show_default=True, help=f.metadata["help"])
        else:
            option = click.option(*names, f.name, type=kind, default=default, show_default=default is not None,
                                  help=f.metadata["help"])
        command = option(command)
    return command


def settings_from_options(options: dict) -> TrainSettings:
    return TrainSettings(**{f.name: options[f.name] for f in fields(TrainSettings)})


def settings_to_args(settings: TrainSettings) -> list[str]:
    """The `pipeline.train` options that reproduce settings (the inverse of settings_from_options)."""
    args = []
    for f in fields(TrainSettings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        args += [f"--{f.name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args
