"""What to do next for one EvaRun: a pure function of the run, the Jobs and Pods it owns, and
the time.

``plan`` returns the run's next status plus the Jobs to create or delete and the Events to
post; it performs no I/O, so every behaviour (retries, deadlines, suspension, restarts) is
tested by feeding it plain dicts. Completed steps are recorded in ``status.completed``; a
Job's existence is never taken as progress, so a step is never run twice by mistake and a
Job deleted while suspended or by its TTL loses nothing.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eva_operator import conditions as cond
from eva_operator.jobs import (
    CONTAINER,
    NO_CLAIM,
    StepDefaults,
    artifact_claim,
    build_job,
    job_name,
    run_dir,
)
from eva_runtime.api import LABEL_ATTEMPT, LABEL_ITERATION, LABEL_STEP
from eva_runtime.spec import EvaRun, RunPolicy, SpecError, iteration_steps, parse_run
from eva_runtime.status import (
    HISTORY_FIELDS,
    BenchScore,
    HistoryEntry,
    bench_results,
    merge_shard_counts,
)
from eva_runtime.timing import STEP_PARTS

# Waiting reasons of a pod that will not start by itself.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# How often a step whose Job has made no pod yet is looked at again (its FailedCreate Events).
NO_POD_RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class ServerFeatures:
    """What the API server offers that some runs need (read from ``/version`` at start)."""

    version: tuple[int, int] = (1, 99)

    @property
    def indexed_jobs(self) -> bool:  # completionMode: Indexed, on by default from 1.22
        return self.version >= (1, 22)

    @property
    def job_suspend(self) -> bool:  # Job.spec.suspend (how Kueue admits Jobs), from 1.22
        return self.version >= (1, 22)


def unsupported(run: EvaRun, server: ServerFeatures) -> list[str]:
    """What this run needs that the server lacks (it would silently get the wrong Jobs)."""
    where = f"this API server is Kubernetes {server.version[0]}.{server.version[1]}"
    out = []
    if run.spec.generation.shards > 1 and not server.indexed_jobs:
        out.append(
            f"spec.generation.shards: {run.spec.generation.shards} needs Indexed Jobs "
            f"(Kubernetes 1.22+) and {where}; use shards: 1 here"
        )
    if run.spec.resources.queue_name and not server.job_suspend:
        out.append(
            f"spec.resources.queueName: a Kueue queue admits Jobs through Job suspend "
            f"(Kubernetes 1.22+) and {where}; remove queueName here"
        )
    return out


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Actions:
    """The plan's answer; the reconciler applies it in this order: delete, create, status."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # (step, seconds) for each step that just finished; (step, reason) for each failed Job.
    finished_steps: list[tuple[str, float]] = field(default_factory=list)
    # (step, stage, seconds) of each step that just finished: queued, startup, running.
    step_stages: list[tuple[str, str, float]] = field(default_factory=list)
    failed_jobs: list[tuple[str, str]] = field(default_factory=list)

    def changed(self, old_status: dict[str, Any]) -> bool:
        return self.status != old_status


@dataclass(frozen=True)
class JobView:
    name: str
    iteration: int
    step: str
    attempt: int
    state: str  # active | succeeded | failed | deleting
    message: str = ""
    reason: str = ""
    created: str | None = None
    suspended: bool = False  # e.g. held by Kueue until admitted


@dataclass(frozen=True)
class PodView:
    name: str
    job: str
    phase: str
    created: str | None = None
    waiting_reason: str = ""
    waiting_message: str = ""
    unschedulable: str = ""
    termination_message: str = ""
    exit_code: int | None = None
    scheduled: str | None = None  # PodScheduled became True
    started: str | None = None  # the container started
    finished: str | None = None  # the container terminated


# --------------------------------------------------------------------------- observing


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def sequence(run: EvaRun) -> list[tuple[int, str]]:
    """Every step of the run in order: prepare once, then each iteration's steps."""
    steps = iteration_steps(run.spec)
    return [(0, "prepare")] + [(t, s) for t in range(run.spec.iterations) for s in steps]


def step_key(iteration: int, step: str) -> str:
    return "prepare" if step == "prepare" else f"{iteration}/{step}"


def observe_job(job: dict[str, Any]) -> JobView:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = job.get("status") or {}
    conds = {x.get("type"): x for x in status.get("conditions") or []}
    completions = (job.get("spec") or {}).get("completions") or 1
    if meta.get("deletionTimestamp"):
        state, reason, message = "deleting", "", ""
    elif (conds.get("Complete") or {}).get("status") == "True" or (
        status.get("succeeded") or 0
    ) >= completions:
        state, reason, message = "succeeded", "", ""
    elif (conds.get("Failed") or {}).get("status") == "True":
        failed = conds["Failed"]
        state, reason, message = "failed", failed.get("reason", ""), failed.get("message", "")
    else:
        state, reason, message = "active", "", ""
    return JobView(
        name=meta.get("name", ""),
        iteration=int(labels.get(LABEL_ITERATION, 0)),
        step=labels.get(LABEL_STEP, ""),
        attempt=int(labels.get(LABEL_ATTEMPT, 0)),
        state=state,
        reason=reason,
        message=message,
        created=meta.get("creationTimestamp"),
        suspended=bool((job.get("spec") or {}).get("suspend")),
    )


def observe_pod(pod: dict[str, Any]) -> PodView:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    waiting_reason = waiting_message = termination = ""
    exit_code = None
    started = finished = scheduled = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        state = cs.get("state") or {}
        if state.get("waiting"):
            waiting_reason = state["waiting"].get("reason", "")
            waiting_message = state["waiting"].get("message", "")
        if state.get("running"):
            started = state["running"].get("startedAt")
        if state.get("terminated"):
            termination = state["terminated"].get("message", "") or ""
            exit_code = state["terminated"].get("exitCode")
            started = state["terminated"].get("startedAt") or started
            finished = state["terminated"].get("finishedAt")
    unschedulable = ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            unschedulable = condition.get("message") or condition.get("reason") or "Unschedulable"
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            scheduled = condition.get("lastTransitionTime")
    return PodView(
        name=meta.get("name", ""),
        job=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name", ""),
        phase=status.get("phase", "Pending"),
        created=meta.get("creationTimestamp"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        unschedulable=unschedulable,
        termination_message=termination,
        exit_code=exit_code,
        scheduled=scheduled if isinstance(scheduled, str) else None,
        started=started if isinstance(started, str) else None,
        finished=finished if isinstance(finished, str) else None,
    )


STEP_STAGES = ("queued", "startup", "running")


def step_stages(job_created: str | None, pods: list[PodView]) -> dict[str, float]:
    """What only the cluster sees of a finished step's Job, in seconds: ``queued`` (Job
    created -> its first pod scheduled), ``startup`` (scheduled -> its container started:
    image pull, volume mounts) and ``running`` (first container start -> last container end).
    A stage whose timestamps are missing or out of order is left out."""

    def earliest(values: list[str | None]) -> datetime | None:
        times = [t for t in map(parse_time, values) if t is not None]
        return min(times) if times else None

    created = parse_time(job_created)
    scheduled = earliest([p.scheduled for p in pods])
    started = earliest([p.started for p in pods])
    ends = [t for t in (parse_time(p.finished) for p in pods) if t is not None]
    finished = max(ends) if ends else None
    out: dict[str, float] = {}
    for stage, a, b in (
        ("queued", created, scheduled),
        ("startup", scheduled, started),
        ("running", started, finished),
    ):
        if a is not None and b is not None and b >= a:
            out[stage] = round((b - a).total_seconds(), 1)
    return out


def step_summary(pods: list[PodView]) -> dict[str, Any]:
    """The step's summary from its pods' termination messages.

    The shard that completes a sharded step writes the whole step's summary (scope
    ``step``); without one, the shards' counts are merged as that shard would
    (``eva_runtime.status.merge_shard_counts``).
    """
    messages = []
    for p in pods:
        try:
            doc = json.loads(p.termination_message)
        except (TypeError, ValueError, RecursionError):  # whatever a step's image wrote
            continue
        if isinstance(doc, dict):
            messages.append(doc)
    whole = [m for m in messages if m.get("scope") == "step"]
    if whole:
        return whole[0]
    if not messages:
        return {}
    out = dict(messages[0])
    shards = [m["counts"] for m in messages if isinstance(m.get("counts"), dict)]
    out["counts"] = merge_shard_counts(shards)
    return out


def step_parts(summary: dict[str, Any]) -> dict[str, Any]:
    """``partSeconds`` and ``modelLoads`` of a step's summary (eva_runtime.timing), where the
    pod reported them as they should be: known parts, finite non-negative seconds."""
    out: dict[str, Any] = {}
    phases = summary.get("phases")
    if isinstance(phases, dict):
        parts = {
            k: round(float(v), 3)
            for k, v in phases.items()
            if k in STEP_PARTS
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= 0
        }
        if parts:
            out["partSeconds"] = parts
    loads = summary.get("loads")
    if isinstance(loads, int) and not isinstance(loads, bool) and loads >= 0:
        out["modelLoads"] = loads
    return out


def failure_message(job: JobView, pods: list[PodView]) -> str:
    """The most specific account of a failure: the pod's own message, else the Job's."""
    for p in pods:
        if p.phase == "Failed" or (p.exit_code not in (None, 0)):
            text = p.termination_message.strip()
            if text:
                try:
                    doc = json.loads(text)
                    if isinstance(doc, dict) and doc.get("error"):
                        return str(doc["error"])
                except (ValueError, RecursionError):
                    pass
                return text[-1000:]
    return job.message or job.reason or "the Job failed"


# --------------------------------------------------------------------------- planning


def plan(
    obj: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    now: datetime,
    defaults: StepDefaults | None = None,
    *,
    events: list[dict[str, Any]] | None = None,
    server: ServerFeatures | None = None,
) -> Actions:
    """The next status of ``run`` and what to create, delete and announce to get there.

    ``events`` are the Kubernetes Events about the current step's Job (why its pods cannot
    be created); ``server`` says what the API server supports.
    """
    old = obj.get("status") or {}
    status = copy.deepcopy(old)
    acts = Actions(status=status)
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return acts
    ts = rfc3339(now)
    generation = meta.get("generation")
    status.setdefault("completed", [])
    status.setdefault("conditions", [])
    status.setdefault("history", [])
    if generation is not None:
        status["observedGeneration"] = generation
    if status.get("phase") == cond.FAILED:
        return acts
    er = _admitted(acts, obj, defaults, server, ts, generation)
    if er is None:
        return acts
    if not status.get("phase"):
        status["phase"] = cond.PENDING
        status["startTime"] = ts
    seq = sequence(er)
    done = set(status["completed"])
    if status.get("phase") == cond.SUCCEEDED and all(step_key(t, s) in done for t, s in seq):
        return acts
    views = {v.name: v for v in (observe_job(j) for j in jobs)}
    pod_views = [observe_pod(p) for p in pods]
    live = [v for v in views.values() if v.state == "active"]
    rp = er.spec.run_policy

    started = parse_time(status.get("startTime")) or now
    if rp.active_deadline_seconds and (now - started).total_seconds() > rp.active_deadline_seconds:
        acts.delete += [v.name for v in live]
        fail(
            acts,
            cond.DEADLINE_EXCEEDED,
            f"the run exceeded runPolicy.activeDeadlineSeconds ({rp.active_deadline_seconds} s)",
            ts,
            generation,
        )
        return acts

    if _suspended_or_resumed(acts, rp.suspend, live, ts, generation):
        return acts

    for t, step in seq:
        key = step_key(t, step)
        if key in done:
            continue
        same_step = status.get("iteration") == t and status.get("step") == step
        attempt = int(status.get("attempt", 0)) if same_step else 0
        name = job_name(er.name, t, step, attempt)
        job = views.get(name)
        if job is None:
            remaining = None
            if rp.active_deadline_seconds:
                remaining = rp.active_deadline_seconds - (now - started).total_seconds()
            manifest = build_job(
                er,
                meta,
                t,
                step,
                attempt,
                defaults=defaults,
                active_deadline_seconds=None if remaining is None else int(remaining) + 1,
            )
            acts.create.append(manifest)
            if status.get("job") != name:
                _start_step(acts, t, step, attempt, name, ts, ts, generation)
            return acts
        if status.get("job") != name:
            # The Job exists but the status never said so (a status write was lost).
            _start_step(acts, t, step, attempt, name, job.created or ts, ts, generation)
        if job.state == "deleting":
            return acts  # a suspended or replaced Job is still going away; wait for it
        mine = [p for p in pod_views if p.job == name]
        if job.state == "succeeded":
            _step_succeeded(acts, er, seq, done, t, step, attempt, job, mine, now, ts)
            continue
        if job.state == "failed":
            acts.failed_jobs.append((step, job.reason or "Failed"))
            why = failure_message(job, mine)
            if attempt < rp.backoff_limit:
                _retrying(acts, t, step, attempt, rp.backoff_limit, why)
                # The next attempt starts in this same plan.
                return _again(acts, obj, status, jobs, pods, now, defaults, events, server)
            fail(
                acts,
                cond.BACKOFF_LIMIT_EXCEEDED,
                f"iteration {t} step {step} failed {attempt + 1} times "
                f"(runPolicy.backoffLimit {rp.backoff_limit}); last error: {why}",
                ts,
                generation,
            )
            return acts
        _step_active(
            acts, step, job, mine, events or [], now, rp.pending_deadline_seconds, ts, generation
        )
        return acts

    _run_succeeded(acts, er, ts, generation)
    return acts


def _admitted(
    acts: Actions,
    obj: dict[str, Any],
    defaults: StepDefaults | None,
    server: ServerFeatures | None,
    ts: str,
    generation: int | None,
) -> EvaRun | None:
    """The run's spec, parsed; None (and the run failed) where the operator cannot run it."""
    try:
        er = parse_run({k: obj.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except SpecError as exc:
        fail(acts, cond.INVALID_SPEC, "; ".join(exc.errors), ts, generation)
        return None
    if not artifact_claim(er, defaults or StepDefaults()):
        fail(acts, cond.INVALID_SPEC, NO_CLAIM, ts, generation)
        return None
    missing = unsupported(er, server or ServerFeatures())
    if missing:
        fail(acts, cond.UNSUPPORTED_BY_CLUSTER, "; ".join(missing), ts, generation)
        return None
    return er


def _suspended_or_resumed(
    acts: Actions, suspend: bool, live: list[JobView], ts: str, generation: int | None
) -> bool:
    """runPolicy.suspend: stop the live Jobs and say so once (True: nothing more to do);
    a suspended run whose flag was cleared resumes (False: plan on)."""
    status = acts.status
    if suspend:
        acts.delete += [v.name for v in live]
        if status.get("phase") != cond.SUSPENDED:
            status["phase"] = cond.SUSPENDED
            where = _where(status)
            msg = f"suspended at {where}; set runPolicy.suspend: false to resume"
            status["conditions"] = cond.set_condition(
                status["conditions"],
                cond.COND_SUSPENDED,
                True,
                cond.SUSPENDED_REASON,
                msg,
                ts,
                generation,
            )
            status["conditions"] = cond.set_condition(
                status["conditions"],
                cond.COND_RUNNING,
                False,
                cond.SUSPENDED_REASON,
                msg,
                ts,
                generation,
            )
            acts.events.append(Event("Normal", cond.SUSPENDED_REASON, msg))
        return True
    if status.get("phase") == cond.SUSPENDED:
        msg = f"resumed at {_where(status)}"
        status["conditions"] = cond.set_condition(
            status["conditions"], cond.COND_SUSPENDED, False, cond.RESUMED, msg, ts, generation
        )
        status["conditions"] = cond.set_condition(
            status["conditions"], cond.COND_RUNNING, True, cond.RESUMED, msg, ts, generation
        )
        acts.events.append(Event("Normal", cond.RESUMED, msg))
        status["phase"] = cond.RUNNING
    return False


def _step_succeeded(
    acts: Actions,
    er: EvaRun,
    seq: list[tuple[int, str]],
    done: set[str],
    t: int,
    step: str,
    attempt: int,
    job: JobView,
    mine: list[PodView],
    now: datetime,
    ts: str,
) -> None:
    """Record a finished step: its counts in the status, its time, its Events."""
    status = acts.status
    summary = step_summary(mine)
    seconds = _seconds_since(status.get("stepStartTime"), now)
    stages = step_stages(job.created, mine)
    _record(status, er, t, step, job.name, attempt, summary, ts, seconds, stages)
    done.add(step_key(t, step))
    status["completed"] = [step_key(*k) for k in seq if step_key(*k) in done]
    acts.finished_steps.append((step, seconds))
    acts.step_stages += [(step, stage, s) for stage, s in stages.items()]
    counts = summary.get("counts") or {}
    msg = f"iteration {t} step {step} complete" + _brief(step, counts)
    acts.events.append(Event("Normal", cond.STEP_SUCCEEDED, msg))
    if step == iteration_steps(er.spec)[-1]:
        acts.events.append(
            Event(
                "Normal", cond.ITERATION_SUCCEEDED, f"iteration {t} complete" + _brief(step, counts)
            )
        )


def _retrying(acts: Actions, t: int, step: str, attempt: int, limit: int, why: str) -> None:
    """A failed attempt with attempts left: the next one is planned at once."""
    status = acts.status
    status["attempt"] = attempt + 1
    status["retries"] = int(status.get("retries", 0)) + 1
    msg = (
        f"iteration {t} step {step} failed (attempt {attempt + 1} of {limit + 1}), retrying: {why}"
    )
    acts.events.append(Event("Warning", cond.STEP_RETRYING, msg))


def _step_active(
    acts: Actions,
    step: str,
    job: JobView,
    mine: list[PodView],
    events: list[dict[str, Any]],
    now: datetime,
    pending_deadline: int | None,
    ts: str,
    generation: int | None,
) -> None:
    """A running step: fail fast on pods that cannot start or were never created; say when
    the cluster blocks its pods, and when it no longer does."""
    stuck = _stuck_pod(mine, job, now, pending_deadline)
    reason = cond.POD_PENDING_TOO_LONG
    if stuck is None and not mine:
        stuck, reason = _no_pods(job, now, pending_deadline), cond.PODS_NOT_CREATED
    if stuck is not None:
        acts.delete.append(job.name)
        acts.failed_jobs.append((step, reason))
        fail(acts, reason, stuck, ts, generation)
        return
    blocked = _blocked(job, mine, events)
    if blocked is not None:
        _set_blocked(acts, blocked[0], blocked[1], ts, generation)
    elif mine:
        _clear_blocked(acts, f"the pods of Job {job.name} exist and can run", ts, generation)


def _run_succeeded(acts: Actions, er: EvaRun, ts: str, generation: int | None) -> None:
    status = acts.status
    _clear_blocked(acts, "every step is complete", ts, generation)
    status.update({"phase": cond.SUCCEEDED, "completionTime": ts, "attempt": 0})
    status.pop("job", None)
    msg = f"{er.spec.iterations} iterations complete" + _brief(
        "evaluate", {"reward_new": status.get("reward"), "win_rate": status.get("winRate")}
    )
    status["conditions"] = cond.set_condition(
        status["conditions"], cond.COND_RUNNING, False, cond.RUN_SUCCEEDED, msg, ts, generation
    )
    status["conditions"] = cond.set_condition(
        status["conditions"], cond.COND_SUCCEEDED, True, cond.RUN_SUCCEEDED, msg, ts, generation
    )
    acts.events.append(Event("Normal", cond.RUN_SUCCEEDED, msg))


def _blocked(
    job: JobView, pods: list[PodView], events: list[dict[str, Any]]
) -> tuple[str, str] | None:
    """(reason, message) while the Job's pods are refused or cannot start, else None."""
    for p in pods:
        if p.phase == "Pending" and (p.unschedulable or p.waiting_reason in STUCK_REASONS):
            why = p.waiting_reason or "Unschedulable"
            detail = p.waiting_message or p.unschedulable
            return cond.POD_PENDING, f"pod {p.name} of Job {job.name}: {why}" + (
                f": {detail}" if detail else ""
            )
    if pods:
        return None
    refused = [
        e
        for e in events
        if e.get("reason") == "FailedCreate"
        and (e.get("involvedObject") or {}).get("name") == job.name
    ]
    if not refused:
        return None
    last = max(refused, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return cond.PODS_NOT_CREATED, (
        f"Job {job.name} cannot create its pods: {last.get('message') or 'FailedCreate'}"
    )


def _set_blocked(acts: Actions, reason: str, message: str, ts: str, gen: int | None) -> None:
    status = acts.status
    old = cond.condition(status["conditions"], cond.COND_STEP_BLOCKED) or {}
    if old.get("status") == "True" and old.get("message") == message:
        return
    status["conditions"] = cond.set_condition(
        status["conditions"], cond.COND_STEP_BLOCKED, True, reason, message, ts, gen
    )
    acts.events.append(Event("Warning", reason, message))


def _clear_blocked(acts: Actions, message: str, ts: str, gen: int | None) -> None:
    status = acts.status
    old = cond.condition(status["conditions"], cond.COND_STEP_BLOCKED)
    if old is None or old.get("status") != "True":
        return
    status["conditions"] = cond.set_condition(
        status["conditions"], cond.COND_STEP_BLOCKED, False, cond.PROGRESSING, message, ts, gen
    )


def current_job(status: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job of the step the status says is running, if it is among ``jobs``."""
    name = status.get("job")
    if not name:
        return None
    return next((j for j in jobs if (j.get("metadata") or {}).get("name") == name), None)


def next_wake(
    obj: dict[str, Any],
    status: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    now: datetime,
) -> float | None:
    """Seconds until the plan's answer could change with time alone (a deadline), or a
    re-check of a step Job that has made no pod yet (its FailedCreate Events)."""
    if status.get("phase") not in (cond.RUNNING, cond.PENDING):
        return None
    try:
        policy = RunPolicy.model_validate((obj.get("spec") or {}).get("runPolicy") or {})
    except ValueError:
        return None  # an invalid spec fails in the plan; nothing to wait for
    waits: list[float] = []
    started = parse_time(status.get("startTime"))
    if policy.active_deadline_seconds and started:
        waits.append(policy.active_deadline_seconds - (now - started).total_seconds() + 0.5)
    pending = policy.pending_deadline_seconds
    current = status.get("job")
    mine = [p for p in map(observe_pod, pods) if p.job == current]
    if pending:
        for p in mine:
            if p.phase == "Pending":
                since = parse_time(p.created)
                if since is not None:
                    waits.append(pending - (now - since).total_seconds() + 0.5)
    job = current_job(status, jobs)
    if job is not None and not mine and observe_job(job).state == "active":
        waits.append(NO_POD_RECHECK_SECONDS)
        since = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
        if pending and since is not None:
            waits.append(pending - (now - since).total_seconds() + 0.5)
    return min(waits) if waits else None


def job_refusal(code: int, message: str) -> str:
    """What a refused Job create means: ``exists`` (409: made already), ``retry`` (a full
    ResourceQuota, or the server's trouble) or ``rejected`` (the Job itself is wrong)."""
    if code == 409:
        return "exists"
    if code == 403 and "exceeded quota" in message:
        return "retry"
    if code in (400, 403, 422):
        return "rejected"
    return "retry"


def _start_step(
    acts: Actions,
    t: int,
    step: str,
    attempt: int,
    name: str,
    started: str,
    ts: str,
    generation: int | None,
) -> None:
    status = acts.status
    _clear_blocked(acts, f"iteration {t} step {step} started", ts, generation)
    if status.get("phase") == cond.SUCCEEDED:  # more iterations were asked for: not done after all
        msg = f"continuing with iteration {t}"
        status["conditions"] = cond.set_condition(
            status["conditions"], cond.COND_SUCCEEDED, False, cond.CONTINUED, msg, ts, generation
        )
        status.pop("completionTime", None)
    status.update(
        {
            "phase": cond.RUNNING,
            "iteration": t,
            "step": step,
            "attempt": attempt,
            "job": name,
            "stepStartTime": started,
        }
    )
    msg = f"iteration {t} step {step}: Job {name}" + (
        f" (attempt {attempt + 1})" if attempt else ""
    )
    status["conditions"] = cond.set_condition(
        status["conditions"], cond.COND_RUNNING, True, cond.STEP_STARTED, msg, ts, generation
    )
    acts.events.append(Event("Normal", cond.STEP_STARTED, msg))


def _again(
    acts: Actions,
    obj: dict[str, Any],
    status: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    now: datetime,
    defaults: StepDefaults | None,
    events: list[dict[str, Any]] | None,
    server: ServerFeatures | None,
) -> Actions:
    """Plan once more from the updated status and merge the answers (a retry starts now)."""
    nxt = plan({**obj, "status": status}, jobs, pods, now, defaults, events=events, server=server)
    nxt.events[:0] = acts.events
    nxt.delete[:0] = acts.delete
    nxt.create[:0] = acts.create
    nxt.finished_steps[:0] = acts.finished_steps
    nxt.step_stages[:0] = acts.step_stages
    nxt.failed_jobs[:0] = acts.failed_jobs
    return nxt


def _stuck_pod(
    pods: list[PodView], job: JobView, now: datetime, deadline: int | None
) -> str | None:
    if deadline is None:
        return None
    for p in pods:
        # Pulling a large image (ContainerCreating) or waiting for a free node is progress;
        # an unschedulable pod or an image that cannot be pulled is not.
        if p.phase != "Pending" or not (p.unschedulable or p.waiting_reason in STUCK_REASONS):
            continue
        since = parse_time(p.created) or parse_time(job.created)
        if since is None or (now - since).total_seconds() <= deadline:
            continue
        why = p.waiting_reason or ("Unschedulable" if p.unschedulable else "Pending")
        detail = p.waiting_message or p.unschedulable
        return (
            f"pod {p.name} of Job {job.name} Pending for more than {deadline} s "
            f"(runPolicy.pendingDeadlineSeconds): {why}" + (f": {detail}" if detail else "")
        )
    return None


def _no_pods(job: JobView, now: datetime, deadline: int | None) -> str | None:
    """A Job that made no pod for too long: the API refused them (see its FailedCreate Events)."""
    since = parse_time(job.created)
    if deadline is None or job.suspended or since is None:
        return None
    if (now - since).total_seconds() <= deadline:
        return None
    return (
        f"Job {job.name} created no pod in {deadline} s (runPolicy.pendingDeadlineSeconds): "
        f"see `kubectl describe job {job.name}` (a missing service account or Secret, a full "
        "ResourceQuota, or a pod security policy refuses its pods)"
    )


def fail(acts: Actions, reason: str, message: str, ts: str, generation: int | None) -> None:
    s = acts.status
    s.update({"phase": cond.FAILED, "reason": reason, "message": message, "completionTime": ts})
    s["conditions"] = s.get("conditions") or []
    _clear_blocked(acts, "the run failed", ts, generation)
    s["conditions"] = cond.set_condition(
        s["conditions"], cond.COND_RUNNING, False, reason, message, ts, generation
    )
    s["conditions"] = cond.set_condition(
        s["conditions"], cond.COND_FAILED, True, reason, message, ts, generation
    )
    acts.events.append(Event("Warning", reason, message))


def _where(status: dict[str, Any]) -> str:
    if status.get("step"):
        return f"iteration {status.get('iteration', 0)} step {status['step']}"
    return "the start"


_BENCH_FIELDS = {f: (info.alias or f) for f, info in BenchScore.model_fields.items()}


def _bench_entry(counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``bench/<name>/<field>`` counts as the history's ``benchmarks`` map (known fields,
    JSON-safe numbers only)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in bench_results(counts).items():
        entry: dict[str, Any] = {}
        for name, alias in _BENCH_FIELDS.items():
            v = value.get(name)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                entry[alias] = round(v) if name in ("judged", "excluded", "errors") else float(v)
        out[key] = entry
    return out


def _seconds_since(start: str | None, now: datetime) -> float:
    t = parse_time(start)
    return max(0.0, (now - t).total_seconds()) if t else 0.0


def _brief(step: str, counts: dict[str, Any]) -> str:
    if step == "evaluate" and counts.get("reward_new") is not None:
        win = counts.get("win_rate")
        return f": held-out reward {counts['reward_new']:.4f}" + (
            f", win rate {win:.2f}" if isinstance(win, int | float) else ""
        )
    if step == "train" and counts.get("pairs") is not None:
        return f": {counts['pairs']} pairs"
    if step == "benchmark":
        scores = [
            f"{name} {v['score']:.2f}"
            for name, v in sorted(bench_results(counts).items())
            if isinstance(v.get("score"), int | float) and math.isfinite(v["score"])
        ]
        return (": " + ", ".join(scores)) if scores else ""
    if step == "create" and counts.get("evolved") is not None:
        return f": {counts['evolved']} evolved prompts"
    if step == "prepare" and counts.get("prompts") is not None:
        return f": {counts['prompts']} prompts, {counts.get('heldout', 0)} held out"
    if step.startswith("generate") and counts.get("responses") is not None:
        return f": {counts['responses']} responses"
    return ""


_INT_FIELDS = {
    f.alias or name for name, f in HistoryEntry.model_fields.items() if f.annotation == int | None
}


def _as_field(field: str, value: Any) -> Any:
    """A summary's count as the history field's type (the API server refuses 3.0 for an
    integer and prunes nothing it refuses: the whole status write would fail)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None  # NaN and inf are no JSON a server accepts
    if field in _INT_FIELDS:
        return round(value)
    return float(value)


def _record(
    status: dict[str, Any],
    run: EvaRun,
    t: int,
    step: str,
    job: str,
    attempt: int,
    summary: dict[str, Any],
    ts: str,
    seconds: float,
    stages: dict[str, float] | None = None,
) -> None:
    """Fill the iteration's history entry from the step's summary."""
    history: list[dict[str, Any]] = status["history"]
    entry = next((h for h in history if h.get("iteration") == t), None)
    if entry is None:
        entry = {"iteration": t, "steps": {}}
        history.append(entry)
        history.sort(key=lambda h: h.get("iteration", 0))
    entry["steps"][step] = {
        "job": job,
        "attempts": attempt + 1,
        "completionTime": ts,
        "seconds": round(seconds, 1),
        **{f"{stage}Seconds": s for stage, s in (stages or {}).items()},
        **step_parts(summary),
    }
    counts = summary.get("counts") or {}
    for src, dst in HISTORY_FIELDS.get(step, {}).items():
        value = _as_field(dst, counts.get(src))
        if value is not None:
            entry[dst] = value
    if step == "create":
        entry["promptSet"] = f"{run_dir(run)}/iter-{t}/create/mixed.parquet"
        digest = (summary.get("digests") or {}).get("mixed.parquet")
        if digest:
            entry["promptSetDigest"] = f"sha256:{digest}"
    if step == "train":
        entry["model"] = f"{run_dir(run)}/iter-{t}/train/model"
    if step == "benchmark":
        entry["benchmarks"] = _bench_entry(counts)
    if summary.get("mlflowRunId"):
        status["mlflowRunId"] = summary["mlflowRunId"]
    if step == "evaluate":
        if counts.get("reward_new") is not None:
            status["reward"] = counts["reward_new"]
        if counts.get("win_rate") is not None:
            status["winRate"] = counts["win_rate"]
