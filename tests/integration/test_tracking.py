"""MLflow tracking of a real 2-iteration run, against a real `mlflow server` and the embedded
sqlite store: what reaches MLflow, that nothing is logged twice, resume through
tracking.json, and that an unreachable server loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eva_runtime.runner import run_all
from eva_runtime.spec import STEPS, EvaRun, load_run
from eva_runtime.tracking import Tracker, TrackingUnavailable, tracking_uri
from mlflow_tools import Server, free_port, launch_mlflow
from tiny_run import tiny_manifest

pytestmark = pytest.mark.timeout(300)

LINEAGE = {"parent_id", "root_id", "method", "iteration", "depth"}
HTTP_BOUNDS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from tests
    for name in HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with launch_mlflow(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


def _manifest(tmp: Path, model: Path) -> Path:
    """Two iterations in seconds. minChars 24 makes the cleaner drop some evolved prompts
    (dropped_too_short) and, in iteration 1, all of them (evolved_empty: an empty set)."""
    return tiny_manifest(
        tmp,
        model,
        prompts=10,
        spec={
            "iterations": 2,
            "prompts": {"heldOut": 2},
            "generation": {"samplesPerPrompt": 2, "maxNewTokens": 8},
            "creator": {
                "evolve": {"variantsPerPrompt": 2, "minChars": 24, "evolver": {"maxNewTokens": 16}}
            },
            "solver": {"maxLength": 64},
            "evaluation": {"samplesPerPrompt": 1},
        },
    )


@dataclass
class Built:
    run: EvaRun
    run_dir: Path
    seconds: float


@pytest.fixture(scope="module")
def eva_run(
    mlflow_server: Server, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    # Depends on the server only so that it boots while the run computes.
    tmp = tmp_path_factory.mktemp("eva-run")
    run = load_run(_manifest(tmp, tiny_model))
    t0 = time.time()
    result = run_all(run, tmp / "runs", tracking=False)
    return Built(run, result.run_dir, time.time() - t0)


@dataclass
class Synced:
    tracker: Tracker
    logged: dict[str, Any]
    url: str
    seconds: float


@pytest.fixture(scope="module")
def synced(eva_run: Built, mlflow_server: Server) -> Synced:
    url = mlflow_server.wait_ready()
    tracker = Tracker(eva_run.run, eva_run.run_dir, uri=url)
    t0 = time.time()
    logged = tracker.sync()
    tracker.finish()
    return Synced(tracker, logged, url, time.time() - t0)


# --------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts(run_dir: Path, key: str) -> dict[str, Any]:
    return json.loads((run_dir / key / "_SUCCESS.json").read_text())["counts"]


def _numeric(counts: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in counts.items() if isinstance(v, int | float)}


def _copy_run(src: Path, dst: Path, only: tuple[str, ...] | None = None) -> Path:
    """A run directory without its tracking state (optionally only some top-level entries)."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name in ("tracking.json", ".tracking.lock") or (only and entry.name not in only):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)
    return dst


def _renamed(run: EvaRun, name: str) -> EvaRun:
    """The same spec under another name: its own experiment and registered model."""
    other = run.model_copy(deep=True)
    other.metadata.name = name
    return other


def _runs(client: Any, experiment: str) -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    nested.sort(key=lambda r: int(r.data.tags["eva.iteration"]))
    return parents[0], nested


def _snapshot(client: Any, experiment: str, model: str) -> dict[str, Any]:
    """Every metric point, dataset input and model version of a run, to compare."""
    parent, nested = _runs(client, experiment)
    out: dict[str, Any] = {}
    for r in [parent, *nested]:
        rid = r.info.run_id
        for key in r.data.metrics:
            out[f"{rid}:{key}"] = sorted(
                (m.step, m.timestamp, m.value) for m in client.get_metric_history(rid, key)
            )
        out[f"{rid}:inputs"] = sorted(
            (d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs
        )
        out[f"{rid}:status"] = r.info.status
    out["versions"] = sorted(
        str(v.version) for v in client.search_model_versions(f"name='{model}'")
    )
    return out


def _uri_path(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


# --------------------------------------------------------------------------- tests


def test_importing_tracking_loads_neither_mlflow_nor_torch() -> None:
    code = (
        "import sys, eva_runtime.tracking; "
        "assert 'mlflow' not in sys.modules and 'torch' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('mlflow', 'torch')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sync_mirrors_the_run_directory_into_mlflow(
    synced: Synced, eva_run: Built, mlflow_server: Server
) -> None:
    from mlflow import MlflowClient

    run_dir = eva_run.run_dir.resolve()
    client = MlflowClient(synced.url)
    steps = ["prepare"] + [f"iter-{t}/{s}" for t in (0, 1) for s in STEPS]
    assert synced.logged["steps"] == steps
    assert [m["version"] for m in synced.logged["models"]] == ["1", "2"]
    print(
        f"tiny 2-iteration run: {eva_run.seconds:.1f}s; first sync to the server: "
        f"{synced.seconds:.1f}s"
    )

    parent, nested = _runs(client, "default/tiny")
    pid = parent.info.run_id
    assert [r.data.tags["eva.iteration"] for r in nested] == ["0", "1"]
    assert all(r.data.tags["mlflow.parentRunId"] == pid for r in nested)
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in nested)
    tags = parent.data.tags
    assert (tags["eva.name"], tags["eva.namespace"]) == ("tiny", "default")
    assert tags["eva.run_dir"] == str(run_dir) and tags["eva.iterations"] == "2"
    params = parent.data.params
    assert params["creator.sampleFraction"] == "0.5"
    assert params["creator.evolve.minChars"] == "24"
    assert params["solver.beta"] == "0.1" and params["rewardModel.type"] == "python"
    assert params["policy.model"] == eva_run.run.spec.policy.model
    assert "iterations" not in params  # a run may be extended; params cannot change

    # Every numeric count of every step, on its iteration's run, at step = iteration.
    for t, r in enumerate(nested):
        expected = {
            f"{s}/{k}": v
            for s in STEPS
            for k, v in _numeric(_counts(run_dir, f"iter-{t}/{s}")).items()
        }
        assert any(k.startswith("create/dropped") for k in expected)
        got = {k: v for k, v in r.data.metrics.items() if k in expected}
        assert got == pytest.approx(expected), t
        # Where each step's time went, as <step>/seconds_<part> from its marker.
        for s in STEPS:
            marker = json.loads((run_dir / f"iter-{t}" / s / "_SUCCESS.json").read_text())
            for part, seconds in marker["timings"]["phases"].items():
                assert r.data.metrics[f"{s}/seconds_{part}"] == pytest.approx(seconds), (s, part)
        for key in expected:
            history = client.get_metric_history(r.info.run_id, key)
            assert [m.step for m in history] == [t], key

        hist = pd.read_parquet(run_dir / f"iter-{t}" / "train" / "history.parquet")
        for key, column in (
            ("train/loss", "loss"),
            ("train/rewards/accuracies", "rewards/accuracies"),
        ):
            points = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            assert len(points) == len(hist) > 0, key
            assert [m.step for m in points] == hist["step"].astype(int).tolist()
            assert [m.value for m in points] == pytest.approx(hist[column].tolist())

    # Curves over iterations on the parent.
    def curve(key: str) -> dict[int, float]:
        points = client.get_metric_history(pid, key)
        assert len({m.step for m in points}) == len(points), key  # one point per iteration
        return {m.step: m.value for m in points}

    ev = [_counts(run_dir, f"iter-{t}/evaluate") for t in (0, 1)]
    gen = [_counts(run_dir, f"iter-{t}/generate") for t in (0, 1)]
    assert curve("heldout_reward") == pytest.approx({t: ev[t]["reward_new"] for t in (0, 1)})
    assert curve("win_rate") == pytest.approx({t: ev[t]["win_rate"] for t in (0, 1)})
    assert curve("reward_mean") == pytest.approx({t: gen[t]["reward_mean"] for t in (0, 1)})
    assert curve("heldout_reward_base") == pytest.approx({0: ev[0]["reward_previous"]})

    # Prompt sets as dataset inputs: source = the parquet file, digest = its sha256 (MLflow
    # keeps 36 characters; the full one is in the input tag and the profile).
    expected_inputs = {
        pid: {"initial", "heldout"},
        nested[0].info.run_id: {
            "initial",
            "evolved-iter-0",
            "mixed-iter-0",
            "pairs-iter-0",
            "heldout",
        },
        nested[1].info.run_id: {
            "mixed-iter-0",
            "evolved-iter-1",
            "mixed-iter-1",
            "pairs-iter-1",
            "heldout",
        },
    }
    for r in [parent, *nested]:
        inputs = r.inputs.dataset_inputs
        assert {d.dataset.name for d in inputs} == expected_inputs[r.info.run_id]
        for d in inputs:
            path = _uri_path(json.loads(d.dataset.source)["uri"])
            assert path.is_relative_to(run_dir) and path.suffix == ".parquet"
            sha = _sha256(path)
            assert d.dataset.digest == sha[:36]
            assert {t.key: t.value for t in d.tags}["eva.sha256"] == sha
            assert json.loads(d.dataset.profile)["sha256"] == sha
            if not d.dataset.name.startswith("pairs") and d.dataset.name != "heldout":
                columns = {c["name"] for c in json.loads(d.dataset.schema)["mlflow_colspec"]}
                assert columns >= LINEAGE, d.dataset.name

    # One registered version per iteration, the model folder itself as source (no copy).
    name = "default-tiny"
    for t, r in enumerate(nested):
        v = client.get_model_version_by_alias(name, f"iter-{t}")
        assert str(v.version) == str(t + 1) and v.run_id == r.info.run_id
        model_dir = run_dir / f"iter-{t}" / "train" / "model"
        assert v.source == model_dir.as_uri()
        assert client.get_model_version_download_uri(name, v.version) == model_dir.as_uri()
        create = run_dir / f"iter-{t}" / "create"
        for label, path in (
            ("pairs", run_dir / f"iter-{t}" / "train" / "pairs.parquet"),
            ("evolved", create / "evolved.parquet"),
            ("mixed", create / "mixed.parquet"),
        ):
            assert v.tags[f"eva.{label}_uri"] == path.as_uri()
            assert v.tags[f"eva.{label}_sha256"] == _sha256(path)
    assert str(client.get_model_version_by_alias(name, "newest").version) == "2"
    assert (
        client.get_model_version(name, "2").tags["eva.prompts_uri"]
        == (run_dir / "iter-0" / "create" / "mixed.parquet").as_uri()
    )
    # The server's artifact store holds no weights (os.walk does not follow the links).
    copied = [
        f
        for _root, _dirs, files in os.walk(mlflow_server.artifacts)
        for f in files
        if f.endswith(".safetensors")
    ]
    assert copied == []


def test_a_second_sync_logs_nothing(synced: Synced, eva_run: Built, mlflow_server: Server) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(synced.url)
    before = _snapshot(client, "default/tiny", "default-tiny")
    state = (eva_run.run_dir / "tracking.json").read_text()
    posts = mlflow_server.posts()
    assert synced.tracker.sync() == {"steps": [], "models": []}
    assert Tracker(eva_run.run, eva_run.run_dir, uri=synced.url).sync() == {
        "steps": [],
        "models": [],
    }
    time.sleep(0.3)
    assert mlflow_server.posts() == posts  # not one write request
    assert (eva_run.run_dir / "tracking.json").read_text() == state
    assert _snapshot(client, "default/tiny", "default-tiny") == before


def test_a_resumed_run_continues_the_same_mlflow_runs(
    eva_run: Built, mlflow_server: Server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    url = mlflow_server.wait_ready()
    client = MlflowClient(url)
    run = _renamed(eva_run.run, "tiny-resume")
    rd = _copy_run(
        eva_run.run_dir, tmp_path / "default" / "tiny", only=("evarun.yaml", "prepare", "iter-0")
    )

    first = Tracker(run, rd, uri=url)
    assert first.sync()["steps"] == ["prepare"] + [f"iter-0/{s}" for s in STEPS]
    first.finish("FAILED")  # the run was killed here
    parent_id = json.loads((rd / "tracking.json").read_text())["servers"][url]["parent_run_id"]

    # The run resumes: a new process syncs after each step of iteration 1.
    again = Tracker(run, rd, uri=url)
    (rd / "iter-1").mkdir()
    shutil.copytree(eva_run.run_dir / "iter-1" / "generate", rd / "iter-1" / "generate")
    assert again.sync()["steps"] == ["iter-1/generate"]
    parent, nested = _runs(client, "default/tiny-resume")
    assert parent.info.run_id == parent_id and parent.info.status == "RUNNING"
    assert [r.info.status for r in nested] == ["FINISHED", "RUNNING"]  # iter-0 was complete
    for step in STEPS[1:]:
        shutil.copytree(eva_run.run_dir / "iter-1" / step, rd / "iter-1" / step)
    logged = again.sync()
    assert logged["steps"] == [f"iter-1/{s}" for s in STEPS[1:]]
    assert [m["version"] for m in logged["models"]] == ["2"]
    parent, nested = _runs(client, "default/tiny-resume")
    assert parent.info.run_id == parent_id and len(nested) == 2
    assert [r.data.tags["mlflow.parentRunId"] for r in nested] == [parent_id, parent_id]
    assert [r.info.status for r in nested] == ["FINISHED", "FINISHED"]
    assert str(client.get_model_version_by_alias("default-tiny-resume", "newest").version) == "2"

    # A crash between logging a step and recording it: the step is sent again, and MLflow
    # ends up with no duplicate point and no second model version.
    before = _snapshot(client, "default/tiny-resume", "default-tiny-resume")
    state = json.loads((rd / "tracking.json").read_text())
    state["servers"][url]["logged"].remove("iter-1/train")
    del state["servers"][url]["models"]["1"]
    (rd / "tracking.json").write_text(json.dumps(state))
    resent = Tracker(run, rd, uri=url).sync()
    assert resent["steps"] == ["iter-1/train"] and resent["models"][0]["version"] == "2"
    assert _snapshot(client, "default/tiny-resume", "default-tiny-resume") == before
    again.finish()
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_an_unreachable_server_loses_nothing(
    eva_run: Built, mlflow_server: Server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    run = _renamed(eva_run.run, "tiny-offline")
    rd = _copy_run(eva_run.run_dir, tmp_path / "default" / "tiny")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    t0 = time.time()
    with pytest.raises(TrackingUnavailable) as err:
        Tracker(run, rd, uri=down).sync()
    elapsed = time.time() - t0
    assert elapsed < 10, f"an unreachable server cost {elapsed:.1f}s"
    assert down in str(err.value) and "nothing was lost" in str(err.value)
    state = rd / "tracking.json"
    assert not state.exists() or all(
        not srv["logged"] for srv in json.loads(state.read_text())["servers"].values()
    )
    assert not any(name in os.environ for name in HTTP_BOUNDS)  # the bounds were only for the call
    print(f"unreachable server: TrackingUnavailable after {elapsed:.2f}s")

    url = mlflow_server.wait_ready()
    logged = Tracker(run, rd, uri=url).sync()
    assert logged["steps"] == ["prepare"] + [f"iter-{t}/{s}" for t in (0, 1) for s in STEPS]
    client = MlflowClient(url)
    _parent, nested = _runs(client, "default/tiny-offline")
    assert len(nested) == 2
    assert str(client.get_model_version_by_alias("default-tiny-offline", "newest").version) == "2"


def test_the_embedded_default_needs_no_server(
    eva_run: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert eva_run.run.spec.tracking.mlflow.tracking_uri is None
    workdir = tmp_path / "work"
    rd = _copy_run(eva_run.run_dir, workdir / "default" / "tiny")
    uri = tracking_uri(eva_run.run, rd)
    assert uri == f"sqlite:///{workdir.resolve()}/mlflow.db"

    tracker = Tracker(eva_run.run, rd)
    t0 = time.time()
    logged = tracker.sync()
    tracker.finish()
    print(f"embedded sqlite sync: {time.time() - t0:.1f}s")
    assert len(logged["steps"]) == 11 and len(logged["models"]) == 2
    assert (workdir / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert tracker.ui_command() == f"mlflow ui --backend-store-uri {uri}"

    client = MlflowClient(uri)
    parent, nested = _runs(client, "default/tiny")
    assert len(nested) == 2 and parent.info.status == "FINISHED"
    assert parent.data.params["creator.sampleFraction"] == "0.5"
    v = client.get_model_version_by_alias("default-tiny", "newest")
    assert str(v.version) == "2"
    assert v.source == (rd / "iter-1" / "train" / "model").resolve().as_uri()
