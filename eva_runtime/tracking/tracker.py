"""The Tracker: mirrors one run directory into MLflow (see the package's docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from eva_runtime.artifacts import RunDir, StepDir, atomic_write_json, sha256_file
from eva_runtime.spec import ITERATION_STEPS, EvaRun, flatten
from eva_runtime.tracking.names import (
    TrackingUnavailable,
    _redact,
    experiment_name,
    registered_model_name,
    tracking_uri,
)
from eva_runtime.tracking.records import (
    DIGEST_CHARS,
    MAX_KEY,
    _count_metrics,
    _digest_of,
    _finished_ms,
    _is_number,
    _is_unreachable,
    _metric,
    _mlflow_env,
    _param_value,
    _short,
    _started_ms,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


STATE_FILE = "tracking.json"
LOCK_FILE = ".tracking.lock"
STATUSES = ("FINISHED", "FAILED", "KILLED")
NEWEST_ALIAS = "newest"
LOCK_WAIT_S = 60.0

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
        sha = _digest_of(folder, file) or sha256_file(path)
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
                tags[f"eva.{label}_sha256"] = _digest_of(path.parent, path.name) or sha256_file(
                    path
                )
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
