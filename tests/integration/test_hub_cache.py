"""One download per hub model (eva_runtime.hub), against a local stand-in for the hub.

The tiny model is published on tests/hub_stub.py's server; ``eva phase`` processes reach it
through ``HF_ENDPOINT``, as step pods reach the real hub, and share one ``HF_HOME`` as step
pods share the model-cache claim. The stub counts every file it serves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hub_stub import HubStub
from tiny_run import eva_process, tiny_manifest

pytestmark = pytest.mark.timeout(300)
REPO = "tiny-org/tiny-lm"
WEIGHTS = "model.safetensors"


def hub_env(hub: HubStub, cache: Path, *, offline: bool = False) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(cache),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def phase(tmp: Path, manifest: Path, run_dir: Path, step: str, env: dict[str, str], *extra: str):
    args = ["--spec", str(manifest), "--run-dir", str(run_dir), "--iteration", "0", *extra]
    return eva_process("phase", step, *args, cwd=tmp, **env)


def finished(p, timeout: float = 180) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def manifest_for(tmp: Path, tiny_model: Path, name: str = "hub", **policy: str) -> Path:
    return tiny_manifest(tmp, tiny_model, name=name, spec={"policy": {"model": REPO, **policy}})


def test_each_model_is_downloaded_once_and_later_steps_load_it_offline(
    tmp_path: Path, tiny_model: Path
) -> None:
    cache = tmp_path / "hf"
    with HubStub() as hub:
        commit = hub.add(REPO, tiny_model)
        manifest = manifest_for(tmp_path, tiny_model)
        run_dir = tmp_path / "run"
        rc, _, err = finished(phase(tmp_path, manifest, run_dir, "prepare", hub_env(hub, cache)))
        assert rc == 0, err
        files = sorted(p.name for p in tiny_model.iterdir() if p.is_file())
        # Every file of the model, once; the record names the commit and every checksum.
        assert sorted(Path(p).name for p in hub.downloads()) == files
        prepare = json.loads((run_dir / "prepare" / "_SUCCESS.json").read_text())
        assert prepare["models"] == {REPO: commit}
        assert "models.json" in prepare["digests"]
        assert prepare["counts"]["hub_models_downloaded"] == 1
        size = sum(p.stat().st_size for p in tiny_model.iterdir() if p.is_file())
        assert prepare["counts"]["hub_bytes_downloaded"] == size
        assert prepare["timings"]["phases"]["download"] > 0
        record = json.loads((run_dir / "prepare" / "models.json").read_text())["models"][REPO]
        assert record["commit"] == commit and record["fields"] == ["policy.model"]
        assert set(record["files"]) == set(files)
        assert len(record["files"][WEIGHTS]["sha256"]) == 64  # LFS files: sha256
        assert len(record["files"]["config.json"]["blob"]) == 40  # the rest: git blob id

        # A later step pod: the hub offline (as the operator sets it), the same cache.
        before = len(hub.requests)
        rc, _, err = finished(
            phase(tmp_path, manifest, run_dir, "generate", hub_env(hub, cache, offline=True))
        )
        assert rc == 0, err
        assert hub.requests[before:] == []
        assert (run_dir / "iter-0" / "generate" / "_SUCCESS.json").exists()

        # Another run on the same cache: the revision is resolved (one API call), no file is
        # downloaded again.
        other = manifest_for(tmp_path, tiny_model, name="hub2")
        before = len(hub.downloads())
        rc, _, err = finished(
            phase(tmp_path, other, tmp_path / "run2", "prepare", hub_env(hub, cache))
        )
        assert rc == 0, err
        assert len(hub.downloads()) == before
        again = json.loads((tmp_path / "run2" / "prepare" / "_SUCCESS.json").read_text())
        assert again["counts"]["hub_models_downloaded"] == 0 and again["models"][REPO] == commit
        assert again["counts"]["hub_bytes_downloaded"] == 0

        # A run prepared with the hub offline (a laptop with a filled cache) uses the cached
        # copy of the branch, recorded as found (sizes only: there is no hub to check against).
        third = manifest_for(tmp_path, tiny_model, name="hub3")
        before = len(hub.requests)
        rc, _, err = finished(
            phase(tmp_path, third, tmp_path / "run3", "prepare", hub_env(hub, cache, offline=True))
        )
        assert rc == 0, err
        assert hub.requests[before:] == []
        found = json.loads((tmp_path / "run3" / "prepare" / "models.json").read_text())
        entry = found["models"][REPO]
        assert (entry["commit"], entry["checked"]) == (commit, False)
        assert set(entry["files"]) == set(files)

        # A run prepared before prepare recorded models (no models.json, none in its
        # digests) still loads its hub model: the cached copy, with no request.
        old_run = tmp_path / "old-run"
        shutil.copytree(run_dir / "prepare", old_run / "prepare")
        shutil.copy(run_dir / "evarun.yaml", old_run / "evarun.yaml")
        marker = old_run / "prepare" / "_SUCCESS.json"
        old_style = json.loads(marker.read_text())
        for key in ("digests", "sizes"):
            old_style[key].pop("models.json")
        marker.write_text(json.dumps(old_style))
        (old_run / "prepare" / "models.json").unlink()
        before = len(hub.requests)
        rc, _, err = finished(
            phase(tmp_path, manifest, old_run, "generate", hub_env(hub, cache, offline=True))
        )
        assert rc == 0, err
        assert hub.requests[before:] == []

        # The cache emptied under an offline pod: a clear error naming the commit, no traceback.
        shutil.rmtree(cache)
        rc, _, err = finished(
            phase(tmp_path, manifest, run_dir, "create", hub_env(hub, cache, offline=True))
        )
        assert rc == 2 and "Traceback" not in err
        assert f"spec.policy.model: hub model {REPO} at commit {commit}" in err
        assert "missing from the model cache" in err


def test_two_shards_racing_for_a_lost_model_download_it_once(
    tmp_path: Path, tiny_model: Path
) -> None:
    cache = tmp_path / "hf"
    with HubStub(delay_s=3.0) as hub:
        hub.add(REPO, tiny_model)
        manifest = manifest_for(tmp_path, tiny_model)
        run_dir = tmp_path / "run"
        env = hub_env(hub, cache)
        rc, _, err = finished(phase(tmp_path, manifest, run_dir, "prepare", env))
        assert rc == 0, err
        assert len(hub.downloads(WEIGHTS)) == 1
        shutil.rmtree(cache)  # lost (a new cache volume): both shards need it at once
        shards = [
            phase(
                tmp_path, manifest, run_dir, "generate", env, "--shard", str(i), "--num-shards", "2"
            )
            for i in (0, 1)
        ]
        results = [finished(p) for p in shards]
        assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
        assert len(hub.downloads(WEIGHTS)) == 2  # prepare's, and one for both shards
        assert any("waiting for another process downloading" in err for _, _, err in results)
        assert (run_dir / "iter-0" / "generate" / "_SUCCESS.json").exists()


def test_a_pinned_revision_is_loaded_and_recorded(tmp_path: Path, tiny_model: Path) -> None:
    other = tmp_path / "v2"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "eva_note": "v2"}))
    with HubStub() as hub:
        old = hub.add(REPO, tiny_model, ref="v1")
        new = hub.add(REPO, other, ref="main")
        assert old != new
        manifest = manifest_for(tmp_path, tiny_model, revision="v1")
        run_dir = tmp_path / "run"
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        env = hub_env(hub, tmp_path / "hf") | {"MLFLOW_TRACKING_URI": tracking}
        rc, _, err = finished(phase(tmp_path, manifest, run_dir, "prepare", env))
        assert rc == 0, err
        record = json.loads((run_dir / "prepare" / "models.json").read_text())["models"][REPO]
        assert (record["revision"], record["commit"]) == ("v1", old)
        assert all(f"/resolve/{old}/" in p for p in hub.downloads())
    # MLflow: the commit as a tag of the run, the record as an artifact.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`mlflow.parentRunId` IS NULL",
    )
    assert parent.data.tags[f"eva.hub_commit.{REPO}"] == old
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "prepare")] == [
        "prepare/models.json"
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("revision", "spec.policy.revision: tiny-org/tiny-lm has no revision 'nope'"),
        ("gated", "spec.policy.model: hub model tiny-org/tiny-lm is gated"),
        ("missing", "is not on http://"),
        ("full", "GB in the model cache"),
        ("corrupt", "file model.safetensors does not match the hub's checksum"),
    ],
)
def test_what_the_hub_or_the_volume_refuses_is_named(
    tmp_path: Path, tiny_model: Path, case: str, expected: str
) -> None:
    with HubStub() as hub:
        hub.add(REPO if case != "missing" else "tiny-org/another", tiny_model)
        repo = hub.repos.get(REPO)
        if case == "gated":
            repo.gated = True
        if case == "full":  # listed larger than any disk: refused before a byte is fetched
            repo.listed_size[WEIGHTS] = 10**18
        if case == "corrupt":
            repo.served[WEIGHTS] = (tiny_model / WEIGHTS).read_bytes()[:-8] + b"\0" * 8
        policy = {"revision": "nope"} if case == "revision" else {}
        manifest = manifest_for(tmp_path, tiny_model, **policy)
        run_dir = tmp_path / "run"
        rc, _, err = finished(
            phase(tmp_path, manifest, run_dir, "prepare", hub_env(hub, tmp_path / "hf")), 120
        )
        assert rc == 2, err
        assert expected in err and "Traceback" not in err, err
        assert not (run_dir / "prepare" / "_SUCCESS.json").exists()
        if case == "full":
            assert hub.downloads() == []
