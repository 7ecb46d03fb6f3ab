"""Everything the lab keeps in MLflow: runs (runs.py), their metrics (metrics.py), checkpoints and diagnosis, and
the models they logged."""

from pipeline.tracking.metrics import MAX_BATCH, MetricBuffer, retry_until_sent, start_system_metrics
from pipeline.tracking.runs import (
    PRUNED_TAG,
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_KILLED,
    beat,
    check_reachable,
    client_for,
    connect,
    experiment_id,
    experiment_to_use,
    finish_run,
    get_run,
    given_run,
    last_logged_step,
    live_trainer,
    log_dataset,
    log_params_once,
    release_placeholder,
    run_ui_url,
    start_run,
    tracking_uri,
    ui_url,
    unclaim,
    unquoted,
)

__all__ = [
    "MAX_BATCH", "MetricBuffer", "retry_until_sent", "PRUNED_TAG", "STATUS_FAILED", "STATUS_FINISHED",
    "STATUS_KILLED", "beat", "check_reachable", "client_for", "connect", "experiment_id",
    "experiment_to_use", "finish_run", "get_run", "given_run", "last_logged_step", "live_trainer", "log_dataset",
    "log_params_once", "release_placeholder", "run_ui_url", "start_run", "start_system_metrics", "tracking_uri",
    "ui_url", "unclaim", "unquoted",
]
