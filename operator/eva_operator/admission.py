"""Which EvaRuns and which changes the cluster accepts: pure functions over plain dicts.

The messages are those of ``eva validate`` (``spec.field.path: rule``), so a user sees the
same words from ``kubectl apply`` as from the command line.
"""

from __future__ import annotations

from typing import Any

from eva_operator.jobs import NO_CLAIM, StepDefaults, artifact_claim
from eva_runtime.spec import SpecError, mutable_fields_text, parse_run, spec_changes


def _manifest(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
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
    """Every reason to refuse this CREATE or UPDATE (empty: admit it).

    An update that leaves the spec as it was (finalizers, labels, annotations: kopf's own
    bookkeeping) and any write to an object being deleted pass: rules that arrived after a
    run was created must never make it impossible to finish or delete.
    """
    if operation not in ("CREATE", "UPDATE"):
        return []
    if not isinstance(body, dict):
        return ["the object is not a JSON object"]
    meta = body.get("metadata")
    if operation == "UPDATE" and (
        (isinstance(meta, dict) and meta.get("deletionTimestamp"))
        or (isinstance(old, dict) and old.get("spec") == body.get("spec"))
    ):
        return []
    try:
        new = parse_run(_manifest(body))
    except SpecError as exc:
        return list(exc.errors)
    problems: list[str] = []
    if not artifact_claim(new, defaults or StepDefaults()):
        problems.append(NO_CLAIM)
    if operation == "UPDATE" and isinstance(old, dict):
        status = old.get("status")
        status = status if isinstance(status, dict) else {}
        started = bool(status.get("phase"))
        try:
            before = parse_run(_manifest(old))
        except SpecError:
            before = None  # the stored object predates a schema change: judge the new one only
        if started and before is not None:
            for path in spec_changes(before, new):
                problems.append(
                    f"{path}: cannot change while the run exists (only {mutable_fields_text()} "
                    "can); create a new EvaRun instead"
                )
            if new.spec.iterations < before.spec.iterations:
                problems.append(
                    f"spec.iterations: {new.spec.iterations} is below {before.spec.iterations}; "
                    "a started run's iterations may only be raised"
                )
            iteration = status.get("iteration")
            reached = iteration if isinstance(iteration, int) and iteration >= 0 else 0
            if new.spec.iterations <= reached:
                problems.append(
                    f"spec.iterations: {new.spec.iterations} is not past the iteration the run "
                    f"has reached ({reached}); it must be at least {reached + 1}"
                )
    return problems
