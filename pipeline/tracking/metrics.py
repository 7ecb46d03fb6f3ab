"""Metrics that cost next to nothing per step, and sending what must arrive even through an outage.

Points are buffered and written with one `log_batch` call every few seconds (MLflow's synchronous
`log_metric` costs 4-13 ms a call on SQLite, a batch well under 1 ms a point).
"""

from __future__ import annotations

import logging
import os
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.errors import LabError, TrackingError, first_line
from pipeline.tracking.runs import tracking_uri

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call


class MetricBuffer:
    """Collects metric points and writes them in batches, at most every `flush_seconds`.

    When the tracking store is away, points wait in memory and training goes on; they are sent when it is
    back. Points at or before `skip_through` are dropped: a resumed run re-computes steps it had already
    logged after its last checkpoint, and its history must not hold them twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 5.0, skip_through: int = -1):
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.skip_through = skip_through
        self.pending: list[Metric] = []
        self.latest: dict[str, Metric] = {}  # each key's newest point, as logged (the model links to them)
        self.last_flush = time.monotonic()
        self.unreachable_since: float | None = None

    def log(self, step: int, **values: float) -> None:
        if step <= self.skip_through:
            return
        timestamp = int(time.time() * 1000)
        points = [Metric(key, float(value), timestamp, step) for key, value in values.items()]
        self.pending.extend(points)
        self.latest.update((point.key, point) for point in points)

    def maybe_flush(self) -> None:
        """Flush if flush_seconds have passed; call it between steps, so a step's points go out together."""
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Send what is pending; False (and a warning, once per outage) when the store cannot be reached."""
        self.last_flush = time.monotonic()
        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:MAX_BATCH])
                self.pending = self.pending[MAX_BATCH:]
        except Exception as error:  # connection refused, server error, locked database...
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                log.warning("cannot reach the tracking store (%s); training goes on, %d metric points wait",
                            first_line(error), len(self.pending))
            return False
        if self.unreachable_since is not None:
            log.warning("the tracking store is back after %.0f s; waiting metrics sent",
                        time.monotonic() - self.unreachable_since)
            self.unreachable_since = None
        return True


def retry_until_sent(action, what: str, timeout: float | None = None) -> None:
    """Call action() until it succeeds, for up to timeout seconds ($LAB_TRACKING_RETRY_SECONDS, default 300)."""
    timeout = float(os.environ.get("LAB_TRACKING_RETRY_SECONDS", 300)) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            if action() is not False:
                return
            error_text = "not sent"
        except LabError:  # a problem retrying cannot fix, such as a full disk
            raise
        except Exception as error:
            error_text = first_line(error)
        if time.monotonic() >= deadline:
            raise TrackingError(f"could not send {what} to the tracking store at {tracking_uri()} for "
                                f"{timeout:.0f} s ({error_text})")
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


SYSTEM_METRICS_SECONDS = 10.0  # MLflow's own default; $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it


def start_system_metrics(run_id: str, resumed: bool):
    """MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory through nvidia-ml-py)
    sampled every 10 s by a thread of its own, into the run's System metrics tab, plus one sample when it starts
    and one when .finish() stops it: a run shorter than the interval still has its tab filled."""
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start and stop are not news
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class Monitor(SystemMetricsMonitor):
            def sample_now(self) -> None:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

            def finish(self) -> None:
                super().finish()  # MLflow's thread drops the interval it was in when told to stop
                try:
                    self.sample_now()
                except Exception as error:  # a store gone away: the run's own end reports that
                    log.warning("no last system metrics sample (%s)", first_line(error))

        monitor = Monitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS, resume_logging=resumed,
                          tracking_uri=tracking_uri())
        monitor.sample_now()
    except Exception as error:  # psutil missing, a store that is away: the run goes on without them
        log.warning("no system metrics for this run (%s)", first_line(error))
        return None
    monitor.start()
    return monitor
