from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from eva_runtime.cli import main
from eva_runtime.crd import CRDError, _assert_structural, _schema_for, crd, crd_yaml
from eva_runtime.spec import SpecError, parse_run
from schema_check import apply_defaults, validate

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = [
    ROOT / "charts" / "eva-operator" / "crds" / "evaruns.eva.dev.yaml",
    ROOT / "manifests" / "crds" / "evaruns.eva.dev.yaml",
]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec_schema() -> dict[str, Any]:
    return schema()["properties"]["spec"]


def at(node: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema of a dotted field path, e.g. 'creator.evolve.evolver'."""
    for part in path.split("."):
        node = node["properties"][part]
    return node


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in EXAMPLES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "EvaRun":
                docs.append((f"{path.name}#{i}", doc))
    return docs


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crd_files_match_the_spec_model(path: Path) -> None:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `make crds`"
    assert path.read_text(encoding="utf-8") == crd_yaml(), (
        f"{path.relative_to(ROOT)} is out of date with eva_runtime/spec.py: run `make crds`"
    )


def test_crd_yaml_starts_with_a_do_not_edit_header_and_parses_back_to_the_crd() -> None:
    text = crd_yaml()
    first = text.splitlines()[0]
    assert first.startswith("#") and "eva crd" in first and "eva_runtime/spec.py" in first
    assert "do not edit" in first.lower()
    assert yaml.safe_load(text) == crd()
    assert "&id" not in text and "*id" not in text  # no YAML anchors in a manifest


def test_eva_crd_prints_the_crd_and_writes_it_with_dash_o(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["crd"])
    assert out.exit_code == 0, out.output
    assert out.output == crd_yaml()
    target = tmp_path / "sub" / "crd.yaml"
    out = runner.invoke(main, ["crd", "-o", str(target)])
    assert out.exit_code == 0, out.output
    assert target.read_text(encoding="utf-8") == crd_yaml()


# --------------------------------------------------------------------------- the CRD object


def test_crd_names_group_scope_and_version() -> None:
    c = crd()
    assert (c["apiVersion"], c["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert c["metadata"]["name"] == "evaruns.eva.dev"
    assert c["metadata"]["labels"] == {
        "app.kubernetes.io/name": "eva",
        "app.kubernetes.io/part-of": "eva",
    }
    spec = c["spec"]
    assert (spec["group"], spec["scope"]) == ("eva.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "EvaRun",
        "listKind": "EvaRunList",
        "plural": "evaruns",
        "singular": "evarun",
        "shortNames": ["evarun"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_phase_iteration_step_reward_and_age() -> None:
    cols = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in cols] == [
        ("Phase", "string", ".status.phase"),
        ("Iteration", "integer", ".status.iteration"),
        ("Step", "string", ".status.step"),
        ("Reward", "number", ".status.reward"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    assert cols[3]["description"] == "held-out reward of the newest policy"


def test_every_printer_column_points_at_a_field_of_the_schema() -> None:
    s = schema()
    for col in crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        top, field = col["jsonPath"].lstrip(".").split(".")
        if top == "metadata":
            continue
        assert s["properties"][top]["properties"][field]["type"] == col["type"]


# --------------------------------------------------------------------------- structural schema

FORBIDDEN = {"$ref", "$defs", "$schema", "anyOf", "oneOf", "allOf", "not", "const", "title"}
FORBIDDEN |= {"propertyNames", "patternProperties", "definitions"}


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` (properties, additionalProperties, items)."""
    nodes = [(path or "(root)", node)]
    for name, sub in (node.get("properties") or {}).items():
        nodes += walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        nodes += walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        nodes += walk(node["items"], f"{path}[]")
    return nodes


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert not FORBIDDEN & set(node), (path, FORBIDDEN & set(node))
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert node.get("type") or preserve, f"{path}: no type"
        if "type" in node:
            assert node["type"] in {"object", "array", "string", "integer", "number", "boolean"}
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") in (None,) or isinstance(
            node["additionalProperties"], dict
        ), f"{path}: boolean additionalProperties"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if "exclusiveMaximum" in node:
            assert node["exclusiveMaximum"] is True and "maximum" in node, path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path}: array without items"
        for name in node.get("required", []):
            assert name in node["properties"], (path, name)
        if "default" in node:
            kind = dict if node["type"] == "object" else (bool, int, float, str)
            assert isinstance(node["default"], kind), path
            assert not validate(node["default"], node), (path, node["default"])


def test_metadata_carries_no_schema_beyond_type_object() -> None:
    assert schema()["properties"]["metadata"] == {"type": "object"}
    assert {"apiVersion", "kind", "metadata", "spec", "status"} == set(schema()["properties"])
    assert schema()["required"] == ["spec"]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "object", "properties": {"a": {"description": "no type"}}},
        {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/A", "type": "object"}}},
        {"type": "object", "properties": {"a": {"type": "string", "const": "x"}}},
        {"type": "object", "additionalProperties": True},
        {"type": "integer", "minimum": 0, "exclusiveMinimum": 0},
        {"type": "array"},
    ],
)
def test_the_structural_check_rejects_what_kubernetes_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(CRDError):
        _assert_structural(bad)


# --------------------------------------------------------------------------- from the model


class _Union(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int | str


class _Tree(BaseModel):
    children: list[_Tree] = []


class _Tuples(BaseModel):
    pairs: list[tuple[int, int]] = []


@pytest.mark.parametrize("model", [_Union, _Tree, _Tuples])
def test_fields_without_a_structural_form_fail_loudly_instead_of_vanishing(model: type) -> None:
    with pytest.raises(CRDError):
        _schema_for(model, "x")


def test_a_set_becomes_a_kubernetes_set_list() -> None:
    class Tags(BaseModel):
        tags: set[str] = set()

    tags = _schema_for(Tags, "x")["properties"]["tags"]
    assert tags == {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    _assert_structural(tags)


def test_spec_schema_carries_bounds_and_enums_from_the_model() -> None:
    s = spec_schema()
    assert set(s["required"]) == {"policy", "rewardModel", "prompts"}
    it = at(s, "iterations")
    assert (it["type"], it["minimum"], it["maximum"], it["default"]) == ("integer", 1, 1000, 3)
    assert "gapInverse" in at(s, "creator.informativeness")["enum"]
    assert at(s, "creator.informativeness")["default"] == "gap"
    assert at(s, "solver.algorithm")["enum"] == ["dpo", "simpo", "ipo", "orpo", "rpo", "sppo"]
    assert at(s, "solver.lossType")["enum"][:3] == ["sigmoid", "hinge", "robust"]
    # A fractional exclusive maximum over an integer default is refused by the API server
    # (it truncates the bound): labelSmoothing's upper bound lives in the model only.
    assert "maximum" not in at(s, "solver.labelSmoothing")
    assert at(s, "runPolicy.backoffLimit")["minimum"] == 0
    assert at(s, "generation.shards")["maximum"] == 1024
    types = ["classifier", "armo", "judge", "python", "pairwise"]
    assert at(s, "rewardModel.type")["enum"] == types
    assert at(s, "policy.model")["minLength"] == 1
    assert at(s, "storage.mountPath")["pattern"] == "^/"
    assert at(s, "generation.truncated")["enum"] == ["keep", "drop"]  # a Literal
    assert at(s, "creator.evolve.evolver.type")["enum"] == ["policy", "model", "openai"]


def test_exclusive_bounds_use_the_openapi_v3_0_boolean_form() -> None:
    top_p = at(spec_schema(), "generation.topP")
    assert top_p["minimum"] == 0.0 and top_p["exclusiveMinimum"] is True
    assert top_p["maximum"] == 1.0 and "exclusiveMaximum" not in top_p
    lr = at(spec_schema(), "solver.learningRate")
    assert lr["exclusiveMinimum"] is True and lr["exclusiveMaximum"] is True
    assert (lr["minimum"], lr["maximum"]) == (0.0, 1.0)


def test_optional_fields_are_nullable_and_keep_their_bounds() -> None:
    limit = at(spec_schema(), "prompts.limit")
    assert (limit["type"], limit["nullable"], limit["minimum"]) == ("integer", True, 1)
    assert "default" not in limit
    pending = at(spec_schema(), "runPolicy.pendingDeadlineSeconds")
    assert pending["nullable"] is True and pending["default"] == 600
    endpoint = at(spec_schema(), "generation.endpoint")
    assert endpoint["type"] == "object" and endpoint["nullable"] is True
    assert endpoint["required"] == ["baseUrl", "model"]
    assert "properties" in at(spec_schema(), "generation.endpoint.apiKeySecret")


def test_maps_free_form_blocks_and_open_models_keep_their_shape() -> None:
    s = spec_schema()
    assert at(s, "resources.nodeSelector") == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    affinity = at(s, "resources.affinity")
    assert affinity["type"] == "object" and affinity["x-kubernetes-preserve-unknown-fields"]
    assert "properties" not in affinity
    toleration = at(s, "resources.tolerations")["items"]
    assert set(toleration["properties"]) == {"key", "operator", "value", "effect"}
    assert toleration["x-kubernetes-preserve-unknown-fields"] is True
    # extra=forbid sections: pruned by the API server, never preserved.
    assert "x-kubernetes-preserve-unknown-fields" not in at(s, "generation")


def test_sections_default_to_objects_so_the_server_fills_their_fields() -> None:
    """A structural default applies only where the parent exists: each optional section
    defaults to an object (with what its default instance sets differently), lists never."""
    s = spec_schema()
    for path, node in walk(s):
        if node["type"] == "array":
            assert "default" not in node, path
        if node["type"] == "object" and "default" in node:
            assert set(node["default"]) <= set(node.get("properties") or {}), path
    for section in ("generation", "creator", "creator.evolve", "solver", "runPolicy"):
        assert at(s, section)["default"] == {}, section
    assert at(s, "resources.generate")["default"] == {"gpus": 1}
    assert at(s, "resources.prepare")["default"] == {}
    assert "default" not in at(s, "policy")  # required


def test_status_schema_is_generated_from_the_status_model() -> None:
    status = schema()["properties"]["status"]
    props = status["properties"]
    assert props["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
    assert props["startTime"]["format"] == "date-time"
    assert props["observedGeneration"]["type"] == "integer"
    assert props["observedGeneration"]["format"] == "int64"
    cond = props["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    assert cond["items"]["required"] == ["type", "status"]
    assert cond["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    # History is typed now: a key the model lacks would be pruned, so none is preserved.
    history = props["history"]["items"]
    assert "x-kubernetes-preserve-unknown-fields" not in history
    assert history["required"] == ["iteration"]
    steps = history["properties"]["steps"]["additionalProperties"]
    assert set(steps["properties"]) == {
        "job", "attempts", "completionTime", "seconds",
        "queuedSeconds", "startupSeconds", "runningSeconds", "partSeconds", "modelLoads",
    }  # fmt: skip
    parts = steps["properties"]["partSeconds"]
    assert parts["type"] == "object" and parts["additionalProperties"]["type"] == "number"
    assert props["completed"]["items"] == {"type": "string"}
    assert not any("preserve-unknown" in str(node) for _, node in walk(status))


def test_a_status_the_operator_writes_survives_validation() -> None:
    status = {
        "phase": "Running",
        "iteration": 1,
        "step": "train",
        "attempt": 1,
        "retries": 1,
        "job": "r1-1-train-1",
        "startTime": "2025-01-01T00:00:00Z",
        "stepStartTime": "2025-01-01T01:00:00Z",
        "observedGeneration": 3,
        "completed": ["prepare", "0/generate"],
        "reward": 0.5,
        "winRate": 0.6,
        "mlflowRunId": "abc",
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "reason": "StepStarted",
                "message": "iteration 1 step train",
                "lastTransitionTime": "2025-01-01T01:00:00Z",
                "observedGeneration": 3,
            }
        ],
        "history": [{"iteration": 0, "steps": {"generate": {"seconds": 1.5}}, "pairs": 10}],
    }
    assert validate(status, schema()["properties"]["status"], "status") == []
    unknown = copy.deepcopy(status)
    unknown["history"][0]["pairz"] = 10
    assert validate(unknown, schema()["properties"]["status"], "status")


# --------------------------------------------------------------------------- manifests


def test_there_are_example_manifests() -> None:
    assert example_docs(), "no EvaRun in manifests/examples/*.yaml"


EXAMPLE_PARAMS = [pytest.param(doc, id=name) for name, doc in example_docs()]


@pytest.mark.parametrize("doc", EXAMPLE_PARAMS)
def test_every_example_manifest_validates_against_the_crd(doc: dict) -> None:
    assert validate(doc, schema()) == []


@pytest.mark.parametrize("doc", EXAMPLE_PARAMS)
def test_defaults_the_api_server_fills_in_change_nothing_the_runtime_sees(doc: dict) -> None:
    stored = apply_defaults(doc, schema())
    assert validate(stored, schema()) == []
    assert stored != doc  # the CRD did fill something in
    dump = {"by_alias": True, "mode": "json"}
    assert parse_run(stored).model_dump(**dump) == parse_run(doc).model_dump(**dump)


def test_an_invalid_manifest_is_rejected_by_the_crd_and_the_model_alike() -> None:
    _, doc = example_docs()[0]
    bad = copy.deepcopy(doc)
    bad["spec"]["iterations"] = 0
    bad["spec"].setdefault("creator", {})["informativeness"] = "bogus"
    errors = validate(bad, schema())
    assert any(e.startswith("spec.iterations: must be greater than or equal to 1") for e in errors)
    assert any(e.startswith("spec.creator.informativeness: 'bogus' is not one of") for e in errors)
    assert len(errors) == 2, errors
    with pytest.raises(SpecError) as exc:
        parse_run(bad)
    assert any(e.startswith("spec.iterations") for e in exc.value.errors)
    assert any(e.startswith("spec.creator.informativeness") for e in exc.value.errors)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("generation.topP", 0.0, "must be greater than 0.0"),
        ("solver.learningRate", 1.0, "must be less than 1.0"),
        ("generation.shards", 1025, "must be less than or equal to 1024"),
        ("resources.generate.memory", "64 GB", "does not match"),
        ("resources.generate.gpus", 65, "must be less than or equal to 64"),
        ("resources.generate.gpus", [1], "must be of type integer"),
        ("generation.temprature", 0.5, "unknown field"),
        ("policy.dtype", "int4", "is not one of"),
    ],
)
def test_the_crd_rejects_values_the_model_rejects(path: str, value: Any, message: str) -> None:
    _, doc = example_docs()[0]
    bad = copy.deepcopy(doc)
    node = bad["spec"]
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    errors = validate(bad, schema())
    assert any(e.startswith(f"spec.{path}: ") and message in e for e in errors), errors
    with pytest.raises(SpecError):
        parse_run(bad)


def test_free_form_and_open_fields_accept_what_kubernetes_passes_through() -> None:
    _, doc = example_docs()[0]
    ok = copy.deepcopy(doc)
    ok["spec"].setdefault("resources", {}).update(
        {
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "tolerationSeconds": 30}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
        }
    )
    ok["spec"]["runPolicy"] = {"pendingDeadlineSeconds": None}
    assert validate(ok, schema()) == []
    parse_run(ok)


def _numbers(schema: Any, path: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(schema, dict):
        if schema.get("type") == "number":
            out.append((path, schema))
        for key, sub in (schema.get("properties") or {}).items():
            out += _numbers(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                out += _numbers(schema[key], f"{path}[]")
    return out


def test_no_whole_number_default_sits_under_a_fractional_bound() -> None:
    """Kubernetes reads a default such as 0.0 as the integer 0 and compares it with the
    bounds truncated to integers: 0 < 0.5 becomes 0 < 0 and the whole CRD is refused (the
    real API server did so). Every number field is checked for that shape."""
    bad = []
    for path, schema in _numbers(spec_schema()):
        default = schema.get("default")
        if not isinstance(default, int | float) or float(default) != int(default):
            continue
        for bound in ("minimum", "maximum"):
            value = schema.get(bound)
            if isinstance(value, float) and not value.is_integer():
                bad.append(f"{path}: default {default}, {bound} {value}")
    assert not bad, bad
