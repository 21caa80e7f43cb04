"""Admission (operator/eva_operator/admission.py): which EvaRuns and which changes are accepted."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from eva_operator.admission import review
from eva_operator.jobs import StepDefaults
from eva_runtime.cli import main
from eva_runtime.spec import SpecError, parse_run
from tiny_run import cluster_spec


def body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    s = {**cluster_spec({"iterations": 3}), **spec}
    # What the API server sends: metadata with server fields besides name and namespace.
    meta = {"name": "demo", "namespace": "team-a", "uid": "u-1", "resourceVersion": "41"}
    out = {"apiVersion": "eva.dev/v1alpha1", "kind": "EvaRun", "metadata": meta, "spec": s}
    return out if status is None else out | {"status": status}


RUNNING = {"phase": "Running", "iteration": 1, "step": "train"}


def changed(old: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    new = copy.deepcopy(old)
    new.pop("status", None)
    node = new["spec"]
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return new


def test_a_valid_create_is_admitted() -> None:
    assert review("CREATE", body(), None) == []
    assert review("CREATE", body(), None, StepDefaults()) == []


INVALID = [
    {"iterations": 0},
    {"generation": {"shards": 0, "temprature": 1.0}},
    {"rewardModel": {"type": "armo", "model": "x/y"}},
    {"creator": {"sampleFraction": 1.5}},
    {"resources": {"train": {"memory": "lots"}}},
]


@pytest.mark.parametrize("spec", INVALID)
def test_an_invalid_spec_is_refused_with_the_messages_of_eva_validate(
    spec: dict[str, Any], tmp_path: Any
) -> None:
    b = body(**spec)
    with pytest.raises(SpecError) as exc:
        parse_run(
            {k: b[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": "demo"}}
        )
    problems = review("CREATE", b, None)
    assert problems == exc.value.errors
    assert problems and all(p.startswith("spec.") for p in problems)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(b), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    for p in problems:
        assert f"  {p}" in result.output


def test_invalid_metadata_and_kind_are_refused() -> None:
    b = body()
    b["metadata"]["name"] = "Not_A_Label"
    b["kind"] = "Job"
    problems = review("CREATE", b, None)
    assert any(p.startswith("kind: must be EvaRun") for p in problems)
    assert any(p.startswith("metadata.name: must be a DNS label") for p in problems)


def test_a_missing_claim_is_refused_unless_the_operator_has_a_default() -> None:
    b = body()
    del b["spec"]["storage"]
    problems = review("CREATE", b, None)
    assert len(problems) == 1
    assert problems[0].startswith("spec.storage.claimName: required")
    assert review("CREATE", b, None, StepDefaults()) == problems
    assert review("CREATE", b, None, StepDefaults(claim_name="ops-claim")) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("solver.beta", 0.1),
        ("policy.model", "other/model"),
        ("generation.shards", 4),
        ("creator.enabled", False),
        ("prompts.source", "/data/other.jsonl"),
        ("storage.claimName", "elsewhere"),
        ("seed", 7),
    ],
)
def test_changing_a_fixed_field_of_a_started_run_is_refused(path: str, value: Any) -> None:
    old = body(RUNNING)
    problems = review("UPDATE", changed(old, path, value), old)
    full = "spec." + path
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{full}: cannot change while the run exists")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("iterations", 5),
        ("runPolicy.suspend", True),
        ("runPolicy.backoffLimit", 5),
        ("resources.train", {"gpus": 8, "memory": "200Gi"}),
        ("resources.image", "registry.local/eva:2"),
        ("resources.queueName", "big"),
        ("credentials.hubToken", {"name": "hf", "key": "token"}),
    ],
)
def test_changing_a_mutable_field_of_a_started_run_is_admitted(path: str, value: Any) -> None:
    old = body(RUNNING)
    assert review("UPDATE", changed(old, path, value), old) == []


def test_iterations_cannot_drop_to_or_below_the_reached_iteration() -> None:
    old = body({"phase": "Running", "iteration": 2, "step": "generate"})
    for n in (1, 2):
        problems = review("UPDATE", changed(old, "iterations", n), old)
        assert len(problems) == 2
        assert problems[0] == (
            f"spec.iterations: {n} is below 3; a started run's iterations may only be raised"
        )
        assert problems[1].startswith(f"spec.iterations: {n} is not past the iteration")
        assert "at least 3" in problems[1]
    assert review("UPDATE", changed(old, "iterations", 3), old) == []
    done = body({"phase": "Succeeded", "iteration": 2, "step": "evaluate"})
    assert review("UPDATE", changed(done, "iterations", 6), done) == []


def test_a_run_that_has_not_started_may_change_anything() -> None:
    old = body()
    new = changed(changed(old, "solver.beta", 0.2), "policy.model", "other/model")
    new = changed(new, "iterations", 1)
    assert review("UPDATE", new, old) == []
    assert review("UPDATE", new, body({})) == []


def test_a_fixed_field_change_and_an_invalid_value_are_both_reported() -> None:
    old = body(RUNNING)
    new = changed(changed(old, "solver.beta", 0.3), "generation.temperature", 0.1)
    problems = review("UPDATE", new, old)
    assert [p.split(":")[0] for p in problems] == [
        "spec.generation.temperature",
        "spec.solver.beta",
    ]
    bad = changed(old, "solver.beta", -1)
    assert review("UPDATE", bad, old) == ["spec.solver.beta: must be greater than 0"]


def test_delete_and_connect_are_always_admitted() -> None:
    assert review("DELETE", {}, body(RUNNING)) == []
    assert review("CONNECT", body(), None) == []


def test_metadata_updates_and_objects_being_deleted_pass_rules_they_predate() -> None:
    """A run admitted before a rule existed (here: no claim anywhere) can still get kopf's
    finalizer and annotations, and be deleted; a spec change is judged as usual."""
    old = body(RUNNING, storage={"claimName": None})
    meta_only = copy.deepcopy(old)
    meta_only["metadata"]["finalizers"] = ["eva.dev/cleanup"]
    meta_only["metadata"]["annotations"] = {"eva.dev/last-handled-configuration": "{}"}
    assert review("UPDATE", meta_only, old) == []
    deleting = copy.deepcopy(old)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    deleting["metadata"]["finalizers"] = []
    assert review("UPDATE", deleting, old) == []
    respec = changed(old, "iterations", 5)
    assert any("claimName: required" in p for p in review("UPDATE", respec, old))


def test_a_malformed_body_is_refused_not_crashed_on() -> None:
    assert review("CREATE", "a string", None) == ["the object is not a JSON object"]  # type: ignore[arg-type]
    problems = review(
        "CREATE", {"apiVersion": "eva.dev/v1alpha1", "kind": "EvaRun", "metadata": []}, None
    )
    assert problems and all(isinstance(p, str) for p in problems)


def test_a_started_runs_iterations_may_not_be_lowered_even_past_the_reached_one() -> None:
    old = body({"phase": "Running", "iteration": 0, "step": "generate"}, iterations=5)
    assert review("UPDATE", changed(old, "iterations", 4), old) == [
        "spec.iterations: 4 is below 5; a started run's iterations may only be raised"
    ]
    assert review("UPDATE", changed(old, "iterations", 6), old) == []


@pytest.mark.parametrize(
    "status", ["Running", ["x"], {"phase": "Running", "iteration": "two"}, {"iteration": None}]
)
def test_a_malformed_stored_status_is_judged_without_crashing(status: Any) -> None:
    old = {**body(), "status": status}
    problems = review("UPDATE", changed(old, "iterations", 0), old)
    assert problems and problems[0].startswith("spec.iterations")


@pytest.mark.parametrize("metadata", [["a"], "x", None, 3])
def test_malformed_metadata_is_refused_with_the_field(metadata: Any) -> None:
    new = {**body(), "metadata": metadata}
    problems = review("CREATE", new, None)
    assert any(p.startswith("metadata") for p in problems), problems
    assert review("CREATE", "not an object", None) == ["the object is not a JSON object"]  # type: ignore[arg-type]
