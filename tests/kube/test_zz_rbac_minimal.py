"""Minimal RBAC: every rule the chart grants the operator was used by the operator during this
tier (each test already fails on any request the rules refuse: sufficient). Judged over the
whole tier, so this module runs last (its name) and only when the whole tier ran."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import OPERATOR_USER, RELEASE

HERE = Path(__file__).parent
# Checked by the API server's OwnerReferencesPermissionEnforcement plugin when a Job with
# blockOwnerDeletion is created, not a request of its own (tested directly in
# test_owner_references_need_the_finalizers_rule_the_chart_grants).
IMPLIED = {("eva.dev", "evaruns/finalizers", "update")}


def tier_tests() -> set[str]:
    names = set()
    for path in HERE.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                names.add(f"{path.name}::{node.name}")
    return names


def test_every_rule_the_chart_grants_the_operator_is_used(
    request: pytest.FixtureRequest, control_plane, installed
) -> None:
    ran = {f"{Path(str(i.fspath)).name}::{i.originalname}" for i in request.session.items}
    missing = tier_tests() - ran - {f"{Path(__file__).name}::{request.node.originalname}"}
    if missing:
        pytest.skip(f"judged over the whole tier; not run here: {sorted(missing)[:3]}...")
    granted = set()
    for obj in installed.objects:
        if obj["kind"] == "ClusterRole" and obj["metadata"]["name"].startswith(RELEASE):
            for rule in obj["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((group, resource, verb))
    used = set()
    for e in control_plane.audit(OPERATOR_USER):
        ref = e.get("objectRef")
        if not ref:
            continue  # /version and other non-resource URLs (public to every identity)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, e["verb"]))
    assert used <= granted | IMPLIED, sorted(used - granted)  # also checked per test
    unused = granted - used - IMPLIED
    assert not unused, f"granted but never used by the operator: {sorted(unused)}"
