"""What MLflow is sent, built from the run directory: metrics and params within MLflow's
limits, digests and timestamps of steps; and the bounds and errors of one sync."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eva_runtime.artifacts import SUCCESS, StepDir

DIGEST_CHARS = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH: metric and param names

# Set for the duration of a sync, only where the user has not: see the module docstring.
_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # `eva phase` and `eva track` print JSON on stdout; MLflow's run links would corrupt it.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


_INVALID_NAME_CHARS = re.compile(r"[^/\w.\- :]")


@contextlib.contextmanager
def _mlflow_env() -> Iterator[None]:
    added = {k: v for k, v in _HTTP_BOUNDS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _is_unreachable(exc: BaseException) -> bool:
    """Connection refused, timeouts, exhausted retries, an unopenable database: anything a
    later sync can get past (MLflow re-raises these without chaining, so walk the context)."""
    import requests

    transient: tuple[type[BaseException], ...] = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import OperationalError

        transient = (*transient, OperationalError)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, transient):
            return True
        if getattr(cur, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float)  # bools too: they are counts of 0 or 1


def _metric_key(key: str) -> str:
    key = _INVALID_NAME_CHARS.sub("_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/")
    return key[:MAX_KEY]


def _metric(key: str, value: float | int | bool, ts: int, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(_metric_key(key), float(value), ts, int(step))


def _count_metrics(step: str, counts: dict[str, Any], t: int, ts: int) -> list[Any]:
    return [_metric(f"{step}/{k}", v, ts, t) for k, v in sorted(counts.items()) if _is_number(v)]


def _digest_of(folder: Path, file: str) -> str | None:
    """The sha256 that the step recorded when it wrote the file (the artifact's identity)."""
    marker = folder / SUCCESS
    if not marker.exists():
        return None
    digest = json.loads(marker.read_text()).get("digests", {}).get(file)
    return str(digest) if digest else None


def _started_ms(sd: StepDir) -> int:
    """When the step began; a sharded step's own marker has no start, its shards do."""
    markers = [sd.marker, *sorted(sd.path.glob(f"shard-*/{SUCCESS}"))]
    starts = [
        float(json.loads(m.read_text()).get("timings", {}).get("started") or 0)
        for m in markers
        if m.exists()
    ]
    starts = [s for s in starts if s > 0]
    if starts:
        return int(min(starts) * 1000)
    return int(sd.marker.stat().st_mtime * 1000) if sd.complete() else int(time.time() * 1000)


def _finished_ms(sd: StepDir, summary: dict[str, Any]) -> int:
    """When the step ended: from its own timings, so a resend repeats the same timestamps."""
    timings = summary.get("timings", {})
    if timings.get("started") is not None:
        return int((float(timings["started"]) + float(timings.get("seconds", 0))) * 1000)
    return int(sd.marker.stat().st_mtime * 1000)
