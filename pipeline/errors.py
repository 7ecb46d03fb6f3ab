"""Typed errors for bad input, and the one place that turns them into a line on stderr and exit code 2."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys

import click

# Tearing the interpreter down runs the cycle collector over every object torch and MLflow made: ~1.3 s of a
# one-step run on a 2-core CPU (bench/startup.py). Registered before torch and MLflow load, this runs after their
# atexit handlers (which run last-in, first-out) and leaves what is left to the OS, which frees it anyway.
atexit.register(gc.freeze)


class LabError(Exception):
    """A problem the user can fix: reported as one line, exit code 2, never a traceback."""

    exit_code = 2


class CorpusError(LabError):
    """An unknown, missing, empty or unreadable corpus, or a download that failed."""


class ShardError(LabError):
    """A token shard that is missing, truncated or not in the expected format."""


class SettingsError(LabError):
    """A setting, model config or override that is unknown, mistyped or out of range."""


class TrackingError(LabError):
    """The MLflow tracking store cannot be reached, or a run id does not exist."""


class OutdatedModelError(TrackingError):
    """A logged model whose own loading code imports lab modules that have moved since it was logged."""


class CheckpointError(LabError):
    """A checkpoint that is missing, corrupt or unsafe to load."""


class ReportError(LabError):
    """No runs to report on, a filter MLflow refuses, or a power law that cannot be fitted."""


class TrainingError(LabError):
    """Training cannot go on: a non-finite loss, or out of memory."""


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of an error's message (its type's name, or "failed", when it has none): what a one-line
    report shows."""
    empty = "failed" if isinstance(error, str) else type(error).__name__
    return (str(error).strip().splitlines() or [empty])[0][:limit]


def run_cli(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command so that every user error ends as one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow sets its loggers' level when it is imported
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "huggingface_hub", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        command.main(args=args, standalone_mode=False)
    except LabError as error:
        _fail(str(error), error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as error:
        _fail(error.format_message(), 2)
    sys.exit(0)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {first_line(message, limit=100_000)}", err=True)
    sys.exit(code)

