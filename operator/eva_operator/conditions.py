"""Run phases, condition types and the reasons the operator gives, each documented once.

Conditions follow the Kubernetes convention (type, status, reason, message,
lastTransitionTime); ``lastTransitionTime`` moves only when ``status`` flips.
"""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------- phases
# Defined with the API (eva_runtime.api); re-exported here beside the reasons.
from eva_runtime.api import (  # noqa: F401
    FAILED,
    PENDING,
    PHASES,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
)

# --------------------------------------------------------------------------- condition types
COND_RUNNING = "Running"
COND_SUSPENDED = "Suspended"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
# True while the current step cannot make progress by itself (its pods are refused, cannot be
# scheduled or cannot pull their image); the run fails if it lasts past the pending deadline.
COND_STEP_BLOCKED = "StepBlocked"

# --------------------------------------------------------------------------- reasons
# Used both as condition reasons and as Event reasons.
STEP_STARTED = "StepStarted"  # a step's Job was created
STEP_SUCCEEDED = "StepSucceeded"  # a step's Job completed; its summary is in status.history
STEP_RETRYING = "StepRetrying"  # a failed step runs again from its last complete shard
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # a step failed more than runPolicy.backoffLimit
POD_PENDING_TOO_LONG = "PodPendingTooLong"  # a pod stayed Pending past pendingDeadlineSeconds
PODS_NOT_CREATED = "PodsNotCreated"  # a Job made no pod within pendingDeadlineSeconds
DEADLINE_EXCEEDED = "DeadlineExceeded"  # the run ran past runPolicy.activeDeadlineSeconds
INVALID_SPEC = "InvalidSpec"  # the spec fails validation (e.g. applied without the webhook)
# The run needs what this API server lacks (Indexed Jobs, Job suspend: Kubernetes 1.22+).
UNSUPPORTED_BY_CLUSTER = "UnsupportedByCluster"
POD_PENDING = "PodPending"  # StepBlocked: a pod cannot be scheduled or cannot start
PROGRESSING = "Progressing"  # StepBlocked cleared: the step's pods exist and can run
JOB_REJECTED = "JobRejected"  # the API server refused a step Job (e.g. a bad affinity)
SUSPENDED_REASON = "Suspended"  # runPolicy.suspend was set
RESUMED = "Resumed"  # runPolicy.suspend was cleared; the run continues at the same step
RUN_SUCCEEDED = "RunSucceeded"  # every iteration complete
CONTINUED = "Continued"  # spec.iterations grew after the run had succeeded
ITERATION_SUCCEEDED = "IterationSucceeded"  # an iteration's evaluation finished


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; the transition time moves only when the status flips."""
    value = "True" if status else "False"
    old = condition(conditions, type_)
    new: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            old["lastTransitionTime"]
            if old and old.get("status") == value and old.get("lastTransitionTime")
            else now
        ),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    if old is None:
        return [*conditions, new]
    return [new if c.get("type") == type_ else c for c in conditions]


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
