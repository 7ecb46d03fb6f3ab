"""The samples a run logged (samples/step_NNNNNN.txt, and the samples.json table): the newest one, read back."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import mlflow.artifacts
from mlflow.tracking import MlflowClient

SAMPLES_DIR = "samples"
SAMPLES_TABLE = "samples.json"


class SampleReader:
    """The newest generated sample of a run: samples/step_NNNNNN.txt, else the last row of samples.json.

    A step file never changes once written, so its text is cached."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self._cache: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # Straight from the run's artifact location: the client's calls by run id look the run up again each time.
    def _list(self, artifact_uri: str, path: str):
        return mlflow.artifacts.list_artifacts(artifact_uri=_join(artifact_uri, path),
                                               tracking_uri=self.client.tracking_uri)

    def _download_text(self, artifact_uri: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as folder:
            local = mlflow.artifacts.download_artifacts(artifact_uri=_join(artifact_uri, path), dst_path=folder,
                                                        tracking_uri=self.client.tracking_uri)
            return Path(local).read_text(encoding="utf-8", errors="replace")

    def latest(self, run_id: str, artifact_uri: str | None = None) -> dict | None:
        """artifact_uri: the run's (run.info.artifact_uri), when the caller has the run at hand."""
        artifact_uri = artifact_uri or self.client.get_run(run_id).info.artifact_uri
        files = [a.path for a in self._list(artifact_uri, SAMPLES_DIR) if not a.is_dir]
        steps = [p for p in files if Path(p).name.startswith("step_") and p.endswith(".txt")]
        if steps:
            path = max(steps)
            key = (run_id, path)
            with self._lock:
                text = self._cache.get(key)
            if text is None:
                text = self._download_text(artifact_uri, path)
                if text:
                    with self._lock:
                        self._cache[key] = text
            step = Path(path).stem.removeprefix("step_")
            return {"step": int(step) if step.isdigit() else None, "text": text.rstrip("\n"), "path": path}
        root = {a.path for a in self._list(artifact_uri, "")}
        if SAMPLES_TABLE not in root:
            return None
        try:
            table = json.loads(self._download_text(artifact_uri, SAMPLES_TABLE))
            columns, rows = table["columns"], table["data"]
            row = dict(zip(columns, rows[-1]))
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return {"step": row.get("step"), "text": f"{row.get('prompt', '')}{row.get('generation', '')}",
                "path": SAMPLES_TABLE}


def _join(uri: str, path: str) -> str:
    return f"{uri.rstrip('/')}/{path}" if path else uri
