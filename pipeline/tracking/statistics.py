"""SQLite stores that stay fast as they grow. Without planner statistics (MLflow never runs ANALYZE) SQLite reads
one run's metric history through the metrics table's primary key, which starts with the metric's name: through
every run's points of that metric, 0.3-0.6 s a history in a store of 1,000 runs x 2,000 steps, where MLflow's own
(run_uuid, key, step) index answers in milliseconds.

ANALYZE itself would read the whole table (minutes on a big store), and its sampled form (analysis_limit) reads
the first rows of each index, all of one run or one metric, so it cannot tell the two apart. The statistics of
the metrics table are instead written from exact counts that cost milliseconds (SQLite documents sqlite_stat1 as
writable by applications)."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from contextlib import closing

log = logging.getLogger(__name__)

MIN_RUNS = 2  # with one run, its points are not rarer than a metric's
GROWTH = 10  # written again once the metrics table has grown this many times since


def keep_statistics(uri: str) -> None:
    """Write the planner statistics of the metrics table of the SQLite store at uri when it has none yet, or when
    it has grown GROWTH times since; other stores are left alone. Connections opened before keep what they read,
    so this runs before a process's first client. Best effort: a busy or read-only store is left as it is."""
    path = _sqlite_path(uri)
    if not path or not os.path.isfile(path):  # a new store: MLflow makes it
        return
    try:
        with closing(sqlite3.connect(path, timeout=1, isolation_level=None)) as db:
            points = db.execute("SELECT max(rowid) FROM metrics").fetchone()[0] or 0
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
            gathered = _points_when_written(db)
            if runs < MIN_RUNS or (gathered and points < GROWTH * gathered):
                return
            metrics = db.execute("SELECT count(DISTINCT key) FROM latest_metrics").fetchone()[0]
            histories = db.execute("SELECT count(*) FROM latest_metrics").fetchone()[0]
            if not metrics:
                return
            # rows for each index's leading columns: "rows, rows per first column, per first two, ..."
            per_run, per_history, per_metric = (math.ceil(points / n) for n in (runs, histories, metrics))
            wanted = {"index_metrics_run_uuid_key_step": f"{points} {per_run} {per_history} 1",
                      "index_metrics_run_uuid": f"{points} {per_run}",
                      "sqlite_autoindex_metrics_1": f"{points} {per_metric} 1 1 1 1 1"}  # the primary key
            indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'metrics' "
                                                      "AND type = 'index'")}
            db.execute("ANALYZE sqlite_master")  # creates sqlite_stat1 when missing, and reads nothing else
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'metrics'")
            db.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('metrics', ?, ?)",
                           [(name, stat) for name, stat in wanted.items() if name in indexes])
            db.execute("COMMIT")
            log.debug("wrote the planner statistics of %s (%d metric points)", path, points)
    except sqlite3.Error as problem:
        log.debug("planner statistics of %s: %s", path, problem)


def _sqlite_path(uri: str) -> str | None:
    if not uri.startswith("sqlite:"):
        return None
    # here, not at the top: importing sqlalchemy takes 0.1 s, which a run against a tracking server never needs
    from sqlalchemy.engine import make_url

    return make_url(uri).database or None  # None for an in-memory store


def _points_when_written(db: sqlite3.Connection) -> int:
    try:
        row = db.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = 'metrics' LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # no sqlite_stat1 yet
        return 0
    return int(row[0].split()[0]) if row else 0
