"""`python -m pipeline.tracking.handover RUN_ID`: deletes a run that `mlflow run` made and the lab replaced
(runs._replace) once `mlflow run` has ended it. MLflow ends that run itself after the program exits, and fails
the whole command when the run is deleted by then, so only a process that outlives the program can delete it.
Started detached by runs.release_placeholder."""

from __future__ import annotations

import sys
import time

from pipeline.tracking.runs import client_for, tracking_uri

# `mlflow run` ends the run within seconds of the program's exit; if it never does (it was killed), the run is
# left as MLflow left it, tagged lab.replaced_by.
WAIT_S = 600


def delete_when_ended(run_id: str) -> bool:
    """True once the run is deleted; False if it was still RUNNING after WAIT_S."""
    client = client_for(tracking_uri())
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.info.lifecycle_stage == "deleted":
            return True
        if run.info.status != "RUNNING":
            client.delete_run(run_id)
            return True
        time.sleep(1)
    return False


if __name__ == "__main__":
    try:
        sys.exit(0 if delete_when_ended(sys.argv[1]) else 1)
    except Exception:  # detached: nobody to tell; the run stays, ended and tagged lab.replaced_by
        sys.exit(1)
