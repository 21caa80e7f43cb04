"""The pure parts of one download per model (eva_runtime.hub) and the spec's revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from eva_runtime.hub import bytes_to_fetch, git_blob_id, missing_files, room_problem
from eva_runtime.models import ModelError, check_model_reachable
from eva_runtime.spec import SpecError, parse_run
from tiny_run import cluster_spec

FILES = {"config.json": {"size": 10, "blob": "x"}, "model.safetensors": {"size": 1000}}


def test_a_cached_copy_is_complete_only_with_every_file_at_its_size() -> None:
    assert missing_files(FILES, {"config.json": 10, "model.safetensors": 1000}) == []
    assert missing_files(FILES, {"config.json": 10, "model.safetensors": 999}) == [
        "model.safetensors"
    ]
    assert missing_files(FILES, {"config.json": None}) == ["config.json", "model.safetensors"]
    assert bytes_to_fetch(FILES, {"config.json": 10, "model.safetensors": None}) == 1000


def test_room_is_checked_with_a_margin_before_downloading() -> None:
    assert room_problem(10**9, 2 * 10**9, "/c", "o/m") is None
    problem = room_problem(18 * 10**9, 17 * 10**9, "/models/huggingface/hub", "google/gemma")
    assert problem is not None
    assert "google/gemma needs 18.00 GB" in problem and "17.00 GB free" in problem
    assert room_problem(10**9, 10**9 + (1 << 20), "/c", "o/m") is not None  # no margin left
    assert room_problem(0, 0, "/c", "o/m") is None  # nothing to fetch: a full disk is fine


def test_git_blob_id_is_what_git_hash_object_gives() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(6, iter([b"hel", b"lo\n"])) == "ce013625030ba8dba906f756967f9e9ca394464a"


def run_with(policy: dict, **sections: dict):
    spec = cluster_spec({"policy": policy, **sections})
    return parse_run(
        {
            "apiVersion": "eva.dev/v1alpha1",
            "kind": "EvaRun",
            "metadata": {"name": "r"},
            "spec": spec,
        }
    )


def test_revisions_are_pinned_per_model_and_listed_with_their_fields() -> None:
    run = run_with(
        {"model": "org/policy", "revision": "v1.0"},
        rewardModel={
            "type": "classifier",
            "model": "org/rm",
            "revision": "a" * 40,
            "function": None,
        },
        creator={"enabled": True, "evolve": {"evolver": {"type": "model", "model": "org/ev"}}},
    )
    refs = run.spec.model_refs()
    assert [(m.field, m.ref, m.revision) for m in refs] == [
        ("policy.model", "org/policy", "v1.0"),
        ("rewardModel.model", "org/rm", "a" * 40),
        ("creator.evolve.evolver.model", "org/ev", None),
    ]
    assert refs[0].revision_field == "policy.revision"


@pytest.mark.parametrize(
    ("policy", "sections", "message"),
    [
        ({"model": "org/p", "revision": "has space"}, {}, "policy.revision"),
        ({"model": "org/p", "revision": ""}, {}, "policy.revision"),
        (
            {"model": "org/p"},
            {"creator": {"evolve": {"evolver": {"revision": "main"}}}},
            "revision: only evolver type model reads it",
        ),
    ],
)
def test_a_bad_revision_is_refused_naming_its_field(
    policy: dict, sections: dict, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        run_with(policy, **sections)


def test_a_revision_on_a_local_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    check_model_reachable("org/name", revision="main")  # a hub id: fine
    with pytest.raises(ModelError, match="pins a hub model"):
        check_model_reachable(str(tmp_path), revision="main")


def test_eva_run_refuses_a_revision_on_a_local_model_naming_the_revision(tmp_path: Path) -> None:
    from eva_runtime.errors import EvaError
    from eva_runtime.runner import preflight

    (tmp_path / "config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    run = run_with({"model": str(tmp_path), "revision": "main"}, prompts={"source": str(prompts)})
    with pytest.raises(EvaError, match=r"spec\.policy\.revision: .* is a local folder"):
        preflight(run)
