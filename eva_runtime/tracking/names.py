"""Where and under which names a run is tracked: the tracking URI, the experiment and
the registered model, and the error of a server that did not take an update."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from eva_runtime.errors import EvaError
from eva_runtime.spec import EvaRun


class TrackingUnavailable(EvaError):
    """MLflow did not take the update. The caller warns and goes on: the run directory still
    holds every step and the next sync sends what is missing."""

    def __init__(self, uri: str, reason: str, *, refused: bool = False):
        self.uri = uri
        what = "refused the update" if refused else "is unreachable"
        super().__init__(
            f"MLflow at {uri} {what} ({reason}); nothing was lost: the run directory keeps "
            "every step and the next sync (or `eva track RUN_DIR`) logs what is missing"
        )


def tracking_uri(run: EvaRun, run_dir: Path) -> str:
    """Where this run is tracked: the spec, else $MLFLOW_TRACKING_URI, else a sqlite file
    beside the run folders, so tracking works with no server and `mlflow ui` can show it."""
    configured = run.spec.tracking.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    workdir = Path(run_dir).resolve().parents[1]
    return f"sqlite:///{workdir / 'mlflow.db'}"


def experiment_name(run: EvaRun) -> str:
    return run.spec.tracking.mlflow.experiment or f"{run.namespace}/{run.name}"


def registered_model_name(run: EvaRun) -> str:
    """'<namespace>-<name>': unique per EvaRun like the experiment, and registry names cannot
    hold '/'."""
    return f"{run.namespace}-{run.name}"


def _redact(uri: str) -> str:
    """The URI without user:password, for messages and for keys stored on disk."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
