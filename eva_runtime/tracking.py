"""MLflow tracking of an eva run, fed from the run directory after each step.

Why the run directory drives tracking: every complete step already has a ``_SUCCESS.json``
with its counts and the sha256 of each file, so MLflow only mirrors what the run directory
holds and never becomes a second source of truth. ``Tracker.sync()`` logs every complete
step that MLflow has not had yet, so it works the same after one step (a Kubernetes pod
running ``eva phase``), at the end of ``eva run``, or days later (``eva track RUN_DIR``).

**MLflow unreachable: the run directory is the buffer.** Training must not stop or stall
because a tracking server is down, and nothing may be lost silently. So ``sync()`` gives
MLflow a short leash (unless the user set them, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``,
``..._BACKOFF_FACTOR=1``, ``..._BACKOFF_JITTER=0.5`` and ``..._TIMEOUT=10`` for the duration
of the call: a refused connection fails in about a second, a black-holed one in about 20 s,
instead of MLflow's default of minutes of retries) and raises ``TrackingUnavailable``, naming
the tracking URI. A step is marked as logged only after all of it reached MLflow, so the
next ``sync()`` (the next step, a resumed run, or ``eva track``) logs everything still
missing. Metric timestamps come from the step's own timings, so a step that is sent again
after a failure half-way repeats exactly the same points and MLflow's stores drop them as
duplicates instead of doubling the curves.

**Resume.** The MLflow ids (experiment, parent run, one nested run per iteration, model
versions) and the set of steps already logged live in ``<run_dir>/tracking.json``, written
atomically, keyed by tracking URI (credentials removed), so a resumed ``eva run`` or another
pod continues the same MLflow runs, and the same run directory can also be sent to a second
server. An advisory lock (``<run_dir>/.tracking.lock``) keeps two processes from creating the
same runs twice.

**What is logged, and where.**

* Experiment ``spec.tracking.mlflow.experiment``, default ``<namespace>/<name>``; one parent
  run per EvaRun (tags ``eva.name``, ``eva.namespace``, ``eva.uid``, ``eva.run_dir``); its
  params are the flattened spec in the manifest's spelling (``creator.sampleFraction``),
  except ``iterations``, which a run may raise later and MLflow params cannot change: it is
  the tag ``eva.iterations``.
* One nested run per iteration (``mlflow.parentRunId``, tag ``eva.iteration``). Each numeric
  count of a step's ``_SUCCESS.json`` becomes the metric ``<step>/<count>`` at
  ``step=iteration`` (``generate/reward_mean``, ``create/informativeness_q50``,
  ``create/dropped_too_short``, ``train/pairs``, ``evaluate/win_rate``); the training history
  becomes ``train/<column>`` at ``step=<training step>`` (``train/loss``,
  ``train/rewards/accuracies``: TRL's own names, '/' is valid in MLflow metric names).
* The parent gets curves over iterations (``step=iteration``): ``reward_mean``,
  ``reward_gap_mean``, ``prompts_selected``, ``prompts_evolved``, ``pairs``, ``train_loss``,
  ``reward_accuracy``, ``heldout_reward`` (the new policy's), ``win_rate``, and once
  ``heldout_reward_base`` (the starting policy's).
* Prompt sets are dataset inputs: ``initial``, ``heldout``, ``evolved-iter-<t>``,
  ``mixed-iter-<t>`` and the preference pairs ``pairs-iter-<t>``, with the parquet file's URI
  as source. MLflow caps a dataset digest at 36 characters, so the digest is the first 36 hex
  digits of the file's sha256 (from ``_SUCCESS.json``); the full sha256 is in the dataset's
  profile (``sha256``) and in the input tag ``eva.sha256``.
* Each iteration's policy is a new version of the registered model ``<namespace>-<name>``
  (registry names cannot hold '/'), with the model folder itself as source: weights are never
  copied. Aliases ``iter-<t>`` and ``newest`` (MLflow reserves ``latest``; ``models:/<name>/
  latest`` already means the highest version). Version tags give the URIs and sha256 of the
  prompts and pairs that trained it (``eva.pairs_uri``, ``eva.pairs_sha256``, ``eva.evolved_*``,
  ``eva.mixed_*``, ``eva.prompts_*``), so a version leads back to its data.

**Model sources on a tracking server.** An MLflow server accepts a local folder as a model
version source only inside the artifact directory of the run named with it (a guard against
registering arbitrary server paths). When the iteration run's artifact directory is a local
path that this process can write (the server and the run directory share a filesystem), the
tracker makes that directory a symbolic link to the model folder, so the folder is the run's
artifacts and the server accepts it; nothing else is ever written there, and MLflow's garbage
collection refuses to delete through a link. When that is impossible (the server keeps
artifacts elsewhere) the version is not registered: a warning says why and the iteration run
keeps the tag ``eva.model_uri``. The embedded sqlite store has no such guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from eva_runtime.artifacts import SUCCESS, RunDir, StepDir, atomic_write_json
from eva_runtime.errors import EvaError
from eva_runtime.spec import ITERATION_STEPS, EvaRun, flatten

if TYPE_CHECKING:
    from mlflow import MlflowClient

STATE_FILE = "tracking.json"
LOCK_FILE = ".tracking.lock"
STATUSES = ("FINISHED", "FAILED", "KILLED")
NEWEST_ALIAS = "newest"
DIGEST_CHARS = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # MAX_ENTITY_KEY_LENGTH: metric and param names
LOCK_WAIT_S = 60.0

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

# Counts that also make a curve over iterations on the parent run: (step, count) -> metric.
_PARENT_METRICS = {
    ("generate", "reward_mean"): "reward_mean",
    ("generate", "reward_gap_mean"): "reward_gap_mean",
    ("create", "selected"): "prompts_selected",
    ("create", "evolved"): "prompts_evolved",
    ("train", "pairs"): "pairs",
    ("train", "train_loss"): "train_loss",
    ("train", "reward_accuracy"): "reward_accuracy",
    ("evaluate", "reward_new"): "heldout_reward",
    ("evaluate", "win_rate"): "win_rate",
}


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


@dataclass(frozen=True)
class _Step:
    key: str  # "prepare" or "iter-<t>/<step>": the folder, relative to the run directory
    iteration: int | None
    name: str
    dir: StepDir


class Tracker:
    """Mirrors one run directory into MLflow; safe to call from any process at any time."""

    def __init__(self, run: EvaRun, run_dir: str | Path, uri: str | None = None):
        import mlflow  # noqa: F401  (fail here, where callers expect ImportError without mlflow)

        self.run = run
        self.run_dir = Path(run_dir).resolve()
        self.rd = RunDir(self.run_dir)
        self.uri = (uri or tracking_uri(run, self.run_dir)).rstrip("/")
        self._key = _redact(self.uri)
        self._remote = urlparse(self.uri).scheme in ("http", "https")

    # ------------------------------------------------------------------ public

    def sync(self) -> dict[str, list[Any]]:
        """Log every complete step not logged yet; return what was logged this time."""
        logged: dict[str, list[Any]] = self._guarded(self._sync)
        return logged

    def finish(self, status: str = "FINISHED") -> None:
        """End the iteration runs still open and the parent run with ``status``."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        self._guarded(lambda: self._finish(status))

    def parent_run_id(self) -> str | None:
        """The MLflow run of the whole EvaRun on this server (None before the first sync)."""
        return self._server_state(self._load_state()).get("parent_run_id")

    def ui_command(self) -> str:
        """How a user opens this run: the server's page, or `mlflow ui` over the store."""
        shown = _redact(self.uri)
        if self._remote:
            exp = self._server_state(self._load_state()).get("experiment_id")
            return f"{shown}/#/experiments/{exp}" if exp else shown
        if urlparse(self.uri).scheme.startswith("databricks"):
            return f"open the experiment {experiment_name(self.run)!r} in the Databricks workspace"
        return f"mlflow ui --backend-store-uri {shown}"

    # ------------------------------------------------------------------ plumbing

    def _guarded(self, fn: Any) -> Any:
        """Run ``fn`` under the lock and the HTTP bounds; turn MLflow failures into
        TrackingUnavailable so that tracking never stops a run."""
        from mlflow.exceptions import MlflowException

        with self._locked(), _mlflow_env():
            try:
                return fn()
            except TrackingUnavailable:
                raise
            except Exception as exc:
                reason = _short(exc)
                if _is_unreachable(exc):
                    raise TrackingUnavailable(self._key, reason) from exc
                if isinstance(exc, MlflowException):
                    raise TrackingUnavailable(self._key, reason, refused=True) from exc
                raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOCK_FILE, "w") as fh:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TrackingUnavailable(
                            self._key, f"another process kept {self.run_dir / LOCK_FILE} locked"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_state(self) -> dict[str, Any]:
        path = self.run_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.exists() else {}
        state.setdefault("version", 1)
        state.setdefault("servers", {})
        return state

    def _server_state(self, state: dict[str, Any]) -> dict[str, Any]:
        srv: dict[str, Any] = state["servers"].setdefault(self._key, {})
        srv.setdefault("experiment_id", None)
        srv.setdefault("parent_run_id", None)
        srv.setdefault("iterations", {})
        srv.setdefault("logged", [])
        srv.setdefault("models", {})
        srv.setdefault("ended", {})
        return srv

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir / STATE_FILE, state)

    def _client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _complete_steps(self) -> list[_Step]:
        out: list[_Step] = []
        prep = self.rd.prepare()
        if not prep.complete():
            return out
        out.append(_Step("prepare", None, "prepare", prep))
        for t in self.rd.iterations():
            for name in ITERATION_STEPS:
                sd = self.rd.step(t, name)
                if sd.complete():
                    out.append(_Step(f"iter-{t}/{name}", t, name, sd))
        return out

    # ------------------------------------------------------------------ sync

    def _sync(self) -> dict[str, list[Any]]:
        state = self._load_state()
        srv = self._server_state(state)
        done = set(srv["logged"])
        pending = [s for s in self._complete_steps() if s.key not in done]
        result: dict[str, list[Any]] = {"steps": [], "models": []}
        if not pending:
            return result
        client = self._client()
        self._ensure_parent(client, state, srv, pending[0])
        parent = srv["parent_run_id"]
        if any(self._in_progress(step) for step in pending):
            self._reopen(client, state, srv, parent)
        if "params" not in done:
            self._log_params(client, parent)
            self._mark(state, srv, "params")
        client.set_tag(parent, "eva.iterations", str(self.run.spec.iterations))
        for step in pending:
            model = self._log_step(client, state, srv, step)
            self._mark(state, srv, step.key)
            result["steps"].append(step.key)
            if model is not None:
                result["models"].append(model)
        return result

    def _mark(self, state: dict[str, Any], srv: dict[str, Any], key: str) -> None:
        if key not in srv["logged"]:
            srv["logged"].append(key)
        self._save(state)

    def _ensure_parent(
        self, client: MlflowClient, state: dict[str, Any], srv: dict[str, Any], first: _Step
    ) -> None:
        from mlflow.exceptions import MlflowException

        if srv["parent_run_id"]:
            try:
                client.get_run(srv["parent_run_id"])
                return
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            # The server lost the runs (a wiped database): start over and log everything.
            state["servers"][self._key] = {}
            srv.clear()
            srv.update(self._server_state(state))
            self._save(state)
        if not srv["experiment_id"]:
            srv["experiment_id"] = self._experiment(client)
            self._save(state)
        meta = self.run.metadata
        uid = meta.uid
        tags = {
            "eva.name": self.run.name,
            "eva.namespace": self.run.namespace,
            "eva.run_dir": str(self.run_dir),
            "eva.iterations": str(self.run.spec.iterations),
            **({"eva.uid": str(uid)} if uid else {}),
        }
        run = client.create_run(
            srv["experiment_id"],
            start_time=_started_ms(first.dir),
            tags=tags,
            run_name=self.run.name,
        )
        srv["parent_run_id"] = run.info.run_id
        self._save(state)

    def _experiment(self, client: MlflowClient) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name(self.run)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=self._artifact_root())
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)  # another process created it
        if exp is None or exp.lifecycle_stage == "deleted":
            raise TrackingUnavailable(
                self._key,
                f"experiment {name!r} is deleted; restore it or set "
                "spec.tracking.mlflow.experiment",
                refused=True,
            )
        return exp.experiment_id

    def _artifact_root(self) -> str | None:
        """Beside a sqlite file, not ./mlruns in whatever folder the run was started from."""
        if self.uri.startswith("sqlite:///") and ":memory:" not in self.uri:
            db = Path(self.uri.removeprefix("sqlite:///")).resolve()
            return (db.parent / "mlartifacts").as_uri()
        return None

    def _in_progress(self, step: _Step) -> bool:
        """Whether the step's iteration is still being worked on (its evaluate step is not
        complete): only then do new steps mean the run is running again. Steps of complete
        iterations are backfill (after an outage) and leave the recorded statuses alone."""
        t = 0 if step.iteration is None else step.iteration
        return not self.rd.step(t, "evaluate").complete()

    def _reopen(
        self, client: MlflowClient, state: dict[str, Any], srv: dict[str, Any], rid: str
    ) -> None:
        """New work after finish() (a resumed or extended run): the run is running again."""
        if rid in srv["ended"]:
            client.update_run(rid, status="RUNNING")
            del srv["ended"][rid]
            self._save(state)

    def _iteration_run(
        self, client: MlflowClient, state: dict[str, Any], srv: dict[str, Any], step: _Step
    ) -> str:
        t = str(step.iteration)
        if t not in srv["iterations"]:
            run = client.create_run(
                srv["experiment_id"],
                start_time=_started_ms(step.dir),
                tags={
                    "mlflow.parentRunId": srv["parent_run_id"],
                    "eva.iteration": t,
                    "eva.name": self.run.name,
                    "eva.namespace": self.run.namespace,
                },
                run_name=f"iter-{t}",
            )
            srv["iterations"][t] = run.info.run_id
            self._save(state)
        rid = str(srv["iterations"][t])
        if self._in_progress(step):
            self._reopen(client, state, srv, rid)
        return rid

    def _log_params(self, client: MlflowClient, parent: str) -> None:
        from mlflow.entities import Param

        flat = flatten(self.run.spec.model_dump(by_alias=True, mode="json", exclude_none=True))
        flat.pop("iterations", None)
        params = [Param(k[:MAX_KEY], _param_value(v)) for k, v in sorted(flat.items())]
        for i in range(0, len(params), 100):
            client.log_batch(parent, params=params[i : i + 100])

    # ------------------------------------------------------------------ one step

    def _log_step(
        self, client: MlflowClient, state: dict[str, Any], srv: dict[str, Any], step: _Step
    ) -> dict[str, Any] | None:
        summary = step.dir.summary()
        counts = summary.get("counts", {})
        ts = _finished_ms(step.dir, summary)
        parent = srv["parent_run_id"]
        if step.iteration is None:  # prepare: the starting prompt sets, on the parent
            self._metrics(client, parent, _count_metrics("prepare", counts, 0, ts))
            self._dataset(client, parent, step.dir, "train.parquet", "initial", "initial")
            self._dataset(client, parent, step.dir, "heldout.parquet", "heldout", "evaluation")
            # The hub models' commits (eva_runtime.hub): which weights every step loaded.
            for ref, commit in sorted((summary.get("models") or {}).items()):
                client.set_tag(parent, f"eva.hub_commit.{ref}", str(commit))
            if (step.dir.path / "models.json").is_file():
                client.log_artifact(parent, str(step.dir.path / "models.json"), "prepare")
            return None

        t = step.iteration
        rid = self._iteration_run(client, state, srv, step)
        metrics = _count_metrics(step.name, counts, t, ts)
        # Where the step's time went: <step>/seconds_<part> (eva_runtime.timing).
        parts = (summary.get("timings") or {}).get("phases") or {}
        metrics += [
            _metric(f"{step.name}/seconds_{k}", v, ts, t)
            for k, v in sorted(parts.items())
            if _is_number(v)
        ]
        parent_metrics = [
            _metric(_PARENT_METRICS[(step.name, k)], v, ts, t)
            for k, v in counts.items()
            if (step.name, k) in _PARENT_METRICS and _is_number(v)
        ]
        if step.name == "benchmark":
            # bench/<name>/score (ci_low, ci_high, base_score...) by iteration on the run.
            parent_metrics += [
                _metric(k, v, ts, t)
                for k, v in sorted(counts.items())
                if k.startswith("bench/") and _is_number(v)
            ]
        model = None
        if step.name == "generate":
            path, name = self._prompts_of(t)
            self._dataset(client, rid, path.parent, path.name, name, "generate")
        elif step.name == "create":
            for file, name in (("evolved.parquet", "evolved"), ("mixed.parquet", "mixed")):
                self._dataset(client, rid, step.dir, file, f"{name}-iter-{t}", name)
        elif step.name == "train":
            metrics += self._history(step.dir, summary)
            self._dataset(client, rid, step.dir, "pairs.parquet", f"pairs-iter-{t}", "training")
            client.set_tag(rid, "eva.model_uri", (step.dir.path / "model").as_uri())
        elif step.name == "evaluate":
            heldout = self.rd.prepare()
            self._dataset(client, rid, heldout, "heldout.parquet", "heldout", "evaluation")
            if t == 0 and _is_number(counts.get("reward_previous")):
                parent_metrics.append(
                    _metric("heldout_reward_base", counts["reward_previous"], ts, 0)
                )
        self._metrics(client, rid, metrics)
        self._metrics(client, parent, parent_metrics)
        if step.name == "train" and self.run.spec.tracking.mlflow.register_model:
            model = self._register(client, state, srv, t, rid, step)
        if step.name == "evaluate":  # the iteration is complete
            client.set_terminated(rid, "FINISHED", end_time=ts)
            srv["ended"][rid] = "FINISHED"
            self._save(state)
        return model

    def _prompts_of(self, t: int) -> tuple[Path, str]:
        """The prompt set iteration t generated on: X_0 is the initial set, X_t the previous
        iteration's mix (or the initial set again in the creator-less baseline)."""
        if t > 0 and self.run.spec.creator.enabled:
            return self.rd.step(t - 1, "create").path / "mixed.parquet", f"mixed-iter-{t - 1}"
        return self.rd.prepare().path / "train.parquet", "initial"

    def _metrics(self, client: MlflowClient, run_id: str, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def _history(self, sd: StepDir, summary: dict[str, Any]) -> list[Any]:
        """Every logged training step of every numeric column, spread over the step's time
        so the curves have a real time axis (and the same timestamps on every resend)."""
        import pandas as pd

        path = sd.path / "history.parquet"
        if not path.exists():
            return []
        hist = pd.read_parquet(path)
        if "step" not in hist.columns or hist.empty:
            return []
        start = _started_ms(sd)
        end = _finished_ms(sd, summary)
        cols = [c for c in hist.columns if c != "step" and pd.api.types.is_numeric_dtype(hist[c])]
        out = []
        n = len(hist)
        for i, record in enumerate(hist.to_dict("records")):
            ts = start + (end - start) * (i + 1) // n
            if not _is_number(record["step"]) or record["step"] != record["step"]:
                continue
            step = int(record["step"])
            for c in cols:
                v = record.get(c)
                if _is_number(v) and v == v:  # NaN marks "not logged at this step"
                    out.append(_metric(f"train/{c}", v, ts, step))
        return out

    def _dataset(
        self,
        client: MlflowClient,
        run_id: str,
        where: StepDir | Path,
        file: str,
        name: str,
        context: str,
    ) -> None:
        """A prompt set as a dataset input: the parquet file's URI as source, its sha256 from
        the step's marker as digest (cut to MLflow's 36 characters; full in profile and tag)."""
        import warnings

        import mlflow.data
        import pandas as pd
        from mlflow.entities import Dataset, DatasetInput, InputTag

        folder = where.path if isinstance(where, StepDir) else Path(where)
        path = folder / file
        if not path.exists():
            return
        sha = _digest_of(folder, file) or _sha256(path)
        frame = pd.read_parquet(path)
        with warnings.catch_warnings():
            # MLflow warns that a file URI matches two equivalent source types and that
            # integer columns cannot hold missing values: neither applies to a logged input.
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                frame, source=path.as_uri(), name=name, digest=sha[:DIGEST_CHARS]
            )
            fields = ds.to_dict()
        profile = json.loads(fields.get("profile") or "{}")
        fields["profile"] = json.dumps({**profile, "sha256": sha})
        entity = Dataset(**fields)
        tags = [InputTag("mlflow.data.context", context), InputTag("eva.sha256", sha)]
        client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])

    # ------------------------------------------------------------------ registry

    def _register(
        self,
        client: MlflowClient,
        state: dict[str, Any],
        srv: dict[str, Any],
        t: int,
        rid: str,
        step: _Step,
    ) -> dict[str, Any] | None:
        from mlflow.exceptions import MlflowException

        from eva_runtime.progress import warn

        name = registered_model_name(self.run)
        model_dir = step.dir.path / "model"
        if not (model_dir / "config.json").exists() and not any(model_dir.glob("adapter_*")):
            return None
        source = model_dir.as_uri()
        try:
            client.create_registered_model(
                name,
                tags={"eva.name": self.run.name, "eva.namespace": self.run.namespace},
                description=f"Policies of the eva run {self.run.namespace}/{self.run.name}, "
                "one version per iteration",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # A version created just before a crash (before tracking.json was written) is reused.
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{rid}'")
        if existing:
            version = existing[0]
        else:
            if self._remote:
                self._link_run_artifacts(client, rid, model_dir)
            try:
                version = client.create_model_version(
                    name,
                    source,
                    run_id=rid,
                    tags=self._version_tags(t, step, source),
                    description=f"iteration {t} of {self.run.namespace}/{self.run.name}",
                )
            except MlflowException as exc:
                if "Invalid model version source" not in str(exc):
                    raise
                reason = (
                    f"{_short(exc)}; the server keeps run artifacts where {model_dir} cannot be "
                    "linked, and weights are not copied"
                )
                warn(
                    f"MLflow at {self._key}: the policy of iteration {t} is not registered "
                    f"({reason}). Its folder is the tag eva.model_uri of run {rid}."
                )
                client.set_tag(rid, "eva.model_registration", f"refused: {reason}"[:5000])
                srv["models"][str(t)] = {"name": name, "refused": reason}
                self._save(state)
                return None
        client.set_registered_model_alias(name, f"iter-{t}", version.version)
        registered = [int(k) for k, v in srv["models"].items() if "version" in v]
        if not registered or t >= max(registered):
            client.set_registered_model_alias(name, NEWEST_ALIAS, version.version)
        srv["models"][str(t)] = {"name": name, "version": str(version.version)}
        self._save(state)
        return {"iteration": t, "name": name, "version": str(version.version)}

    def _version_tags(self, t: int, train: _Step, source: str) -> dict[str, str]:
        """Where the data that trained this version lives, and its sha256."""
        tags = {
            "eva.run": f"{self.run.namespace}/{self.run.name}",
            "eva.run_dir": str(self.run_dir),
            "eva.iteration": str(t),
            "eva.model_uri": source,
        }
        model_files = {
            k: v
            for k, v in train.dir.summary().get("digests", {}).items()
            if k.startswith("model/")
        }
        if model_files:
            lines = "".join(f"{v}  {k}\n" for k, v in sorted(model_files.items()))
            tags["eva.model_sha256"] = hashlib.sha256(lines.encode()).hexdigest()
        prompts, _ = self._prompts_of(t)
        sets = {"prompts": prompts, "pairs": train.dir.path / "pairs.parquet"}
        if self.run.spec.creator.enabled:
            create = self.rd.step(t, "create").path
            sets["evolved"] = create / "evolved.parquet"
            sets["mixed"] = create / "mixed.parquet"
        for label, path in sets.items():
            if path.exists():
                tags[f"eva.{label}_uri"] = path.as_uri()
                tags[f"eva.{label}_sha256"] = _digest_of(path.parent, path.name) or _sha256(path)
        return tags

    def _link_run_artifacts(self, client: MlflowClient, rid: str, model_dir: Path) -> bool:
        """Make the iteration run's (still empty) local artifact directory a link to the model
        folder, so a server accepts the folder as the version's source without a copy."""
        art = urlparse(client.get_run(rid).info.artifact_uri)
        if art.scheme not in ("", "file") or art.netloc not in ("", "localhost"):
            return False
        link = Path(unquote(art.path))
        target = model_dir.resolve()
        if link.is_symlink():
            return link.resolve() == target
        if link.exists():
            return False
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)
        except OSError:
            return False
        return True

    # ------------------------------------------------------------------ finish

    def _finish(self, status: str) -> None:
        state = self._load_state()
        srv = self._server_state(state)
        if not srv["parent_run_id"]:
            return
        client = self._client()
        now = int(time.time() * 1000)
        for rid in [*srv["iterations"].values(), srv["parent_run_id"]]:
            if rid not in srv["ended"]:
                client.set_terminated(rid, status, end_time=now)
                srv["ended"][rid] = status
                self._save(state)


# ---------------------------------------------------------------------- helpers


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


def _sha256(path: Path) -> str:
    from eva_runtime.artifacts import sha256_file

    return sha256_file(path)


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
