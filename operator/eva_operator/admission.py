"""Which EvaRuns and which changes the cluster accepts: pure functions over plain dicts.

The messages are those of ``eva validate`` (``spec.field.path: rule``), so a user sees the
same words from ``kubectl apply`` as from the command line.
"""

from __future__ import annotations

from typing import Any

from eva_operator.jobs import StepDefaults
from eva_runtime.spec import SpecError, parse_run, spec_changes


def _manifest(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace")},
        "spec": body.get("spec"),
    }


def review(
    operation: str,
    body: dict[str, Any],
    old: dict[str, Any] | None,
    defaults: StepDefaults | None = None,
) -> list[str]:
    """Every reason to refuse this CREATE or UPDATE (empty: admit it)."""
    if operation not in ("CREATE", "UPDATE"):
        return []
    try:
        new = parse_run(_manifest(body))
    except SpecError as exc:
        return list(exc.errors)
    problems: list[str] = []
    d = defaults or StepDefaults()
    if not (new.spec.storage.claim_name or d.claim_name):
        problems.append(
            "spec.storage.claimName: required in this cluster (the operator has no default "
            "artifact claim); name a PersistentVolumeClaim in the run's namespace"
        )
    if operation == "UPDATE" and old is not None:
        started = bool((old.get("status") or {}).get("phase"))
        try:
            before = parse_run(_manifest(old))
        except SpecError:
            before = None  # the stored object predates a schema change: judge the new one only
        if started and before is not None:
            for path in spec_changes(before, new):
                problems.append(
                    f"{path}: cannot change while the run exists (only iterations, resources, "
                    "runPolicy and credentials can); create a new EvaRun instead"
                )
            reached = int((old.get("status") or {}).get("iteration") or 0)
            if new.spec.iterations <= reached:
                problems.append(
                    f"spec.iterations: {new.spec.iterations} is not past the iteration the run "
                    f"has reached ({reached}); it must be at least {reached + 1}"
                )
    return problems
