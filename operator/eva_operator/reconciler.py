"""The imperative shell around ``plan``: read the run, apply the plan, record what happened.

Reconciliations of one run never overlap and never queue up: a poke while one is running
marks the run dirty and the running loop goes round once more. Watch events poke (a Job
finished, a pod changed, the spec changed); the plan's own deadlines poke on time; a slow
resync timer is only a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from eva_operator import conditions as cond
from eva_operator.jobs import StepDefaults
from eva_operator.kube import (
    Kube,
    KubeError,
    events_path,
    jobs_path,
    pods_path,
    run_path,
    with_retries,
)
from eva_operator.metrics import OperatorMetrics
from eva_operator.plan import (
    Actions,
    ServerFeatures,
    current_job,
    fail,
    job_refusal,
    next_wake,
    observe_job,
    observe_pod,
    plan,
    rfc3339,
)
from eva_runtime.api import LABEL_RUN, LABEL_STEP

log = logging.getLogger("eva_operator")

# (namespace, run) -> the Jobs / Pods of that run, as kopf's indexes keep them.
Lookup = Callable[[str, str], Iterable[dict[str, Any]]]


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``."""
    patch: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_patch(old[k], v)
            if sub:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    return patch


@dataclass
class _RunState:
    dirty: bool = False
    task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class Reconciler:
    kube: Kube
    defaults: StepDefaults
    metrics: OperatorMetrics
    jobs_of: Lookup = lambda ns, name: ()
    pods_of: Lookup = lambda ns, name: ()
    mlflow_uri: str | None = None
    _runs: dict[tuple[str, str], _RunState] = field(default_factory=dict)
    # Jobs this operator created that its watch has not shown yet (name -> manifest): the
    # next reconciliation counts them as existing instead of creating them again.
    _unseen: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    _closing: bool = False

    # ------------------------------------------------------------------ scheduling

    def poke(self, namespace: str, name: str) -> None:
        """Reconcile this run soon (coalesced with any reconciliation under way)."""
        if self._closing:
            return
        st = self._runs.setdefault((namespace, name), _RunState())
        st.dirty = True
        if st.task is None or st.task.done():
            st.task = asyncio.get_running_loop().create_task(
                self._loop(namespace, name, st), name=f"reconcile {namespace}/{name}"
            )

    def poke_later(self, namespace: str, name: str, delay: float) -> None:
        st = self._runs.setdefault((namespace, name), _RunState())
        if st.timer is not None:
            st.timer.cancel()
        st.timer = asyncio.get_running_loop().call_later(
            max(0.05, delay), self.poke, namespace, name
        )

    def forget(self, namespace: str, name: str) -> None:
        self._unseen.pop((namespace, name), None)
        st = self._runs.pop((namespace, name), None)
        if st is not None:
            if st.timer is not None:
                st.timer.cancel()
            if st.task is not None and st.task is not asyncio.current_task():
                st.task.cancel()
        self.metrics.forget_run(namespace, name)

    async def close(self) -> None:
        self._closing = True
        tasks = []
        for st in self._runs.values():
            if st.timer is not None:
                st.timer.cancel()
            if st.task is not None and not st.task.done():
                st.task.cancel()
                tasks.append(st.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, namespace: str, name: str, st: _RunState) -> None:
        backoff = 0.5
        while st.dirty and not self._closing:
            st.dirty = False
            started = time.perf_counter()
            try:
                await self.reconcile(namespace, name)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                if exc.status != 409:
                    self._retry_later(namespace, name, backoff, exc)
                    backoff = min(backoff * 2, 30.0)
                    continue
                # The run changed between our read and our status write: plan again from
                # what is stored now (the write carried the resourceVersion it was based on).
                log.info("status of %s/%s changed meanwhile; planning again", namespace, name)
                self.metrics.status_conflicts.inc()
                st.dirty = True
            except Exception as exc:  # the API or the network: try again shortly
                self._retry_later(namespace, name, backoff, exc)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.metrics.reconcile.observe(time.perf_counter() - started)

    def _retry_later(self, namespace: str, name: str, delay: float, exc: Exception) -> None:
        self.metrics.reconcile_errors.inc()
        log.warning("reconcile %s/%s failed, retrying in %.1fs: %s", namespace, name, delay, exc)
        self.poke_later(namespace, name, delay)

    # ------------------------------------------------------------------ one reconciliation

    async def reconcile(self, namespace: str, name: str) -> Actions | None:
        try:
            run = await with_retries(lambda: self.kube.get(run_path(namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                self.forget(namespace, name)
                return None
            raise
        if (run.get("metadata") or {}).get("deletionTimestamp"):
            # Going away: the deletion handler removes its Jobs; its series go now, and a
            # poke from a Job it removes must not bring them back.
            self.metrics.forget_run(namespace, name)
            return None
        jobs = [dict(j) for j in self.jobs_of(namespace, name)]
        unseen = self._unseen.get((namespace, name), {})
        for seen in [str((j.get("metadata") or {}).get("name")) for j in jobs]:
            unseen.pop(seen, None)
        jobs += list(unseen.values())
        pods = [dict(p) for p in self.pods_of(namespace, name)]
        pods = await self._with_finished_pods(namespace, run, jobs, pods)
        events = await self._events_of_podless_job(namespace, run, jobs, pods)
        now = datetime.now(UTC)
        old_status = run.get("status") or {}
        server = ServerFeatures(await self.kube.server_version())
        acts = plan(run, jobs, pods, now, self.defaults, events=events, server=server)

        for job in acts.delete:
            unseen.pop(job, None)
            await with_retries(lambda job=job: self.kube.delete(jobs_path(namespace, job)))
        for manifest in acts.create:
            await self._create_job(namespace, manifest, acts)
        if acts.changed(old_status):
            patch = {"status": merge_patch(old_status, acts.status)}
            version = (run.get("metadata") or {}).get("resourceVersion")
            if version:  # a precondition: 409 if anyone wrote the run since we read it
                patch["metadata"] = {"resourceVersion": version}
            await with_retries(
                lambda: self.kube.merge_patch(run_path(namespace, name, "status"), patch)
            )
        for ev in acts.events:
            try:
                await self.kube.post_event(run, ev.type, ev.reason, ev.message)
            except (TimeoutError, KubeError, aiohttp.ClientError) as exc:
                log.info("event %s for %s/%s not posted: %s", ev.reason, namespace, name, exc)
        for step, seconds in acts.finished_steps:
            self.metrics.step_duration.labels(step).observe(seconds)
        for step, stage, seconds in acts.step_stages:
            self.metrics.step_stage.labels(step, stage).observe(seconds)
        for step, reason in acts.failed_jobs:
            self.metrics.jobs_failed.labels(step, reason).inc()
        self.metrics.observe_run(namespace, name, acts.status)
        labels = (run.get("metadata") or {}).get("labels")
        self.metrics.observe_labels(namespace, name, labels if isinstance(labels, dict) else {})
        phase = acts.status.get("phase")
        if phase in cond.TERMINAL and old_status.get("phase") != phase:
            await self.end_tracking(
                run, acts.status, "FINISHED" if phase == cond.SUCCEEDED else "FAILED"
            )
        wake = next_wake(run, acts.status, jobs, pods, now)
        if wake is not None:
            self.poke_later(namespace, name, wake)
        return acts

    async def _create_job(self, namespace: str, manifest: dict[str, Any], acts: Actions) -> None:
        step = manifest["metadata"]["labels"][LABEL_STEP]
        try:
            await with_retries(lambda: self.kube.create(jobs_path(namespace), manifest))
        except KubeError as exc:
            verdict = job_refusal(exc.status, exc.message)
            if verdict == "exists":  # created by an earlier reconciliation or operator instance
                return
            if verdict == "rejected":
                fail(
                    acts,
                    cond.JOB_REJECTED,
                    f"the API server refused Job {manifest['metadata']['name']}: {exc}",
                    rfc3339(datetime.now(UTC)),
                    None,
                )
                return
            raise  # "retry": a full ResourceQuota or trouble on the server; with backoff
        self.metrics.jobs_created.labels(step).inc()
        run = manifest["metadata"]["labels"][LABEL_RUN]
        self._unseen.setdefault((namespace, run), {})[manifest["metadata"]["name"]] = manifest

    async def _with_finished_pods(
        self,
        namespace: str,
        obj: dict[str, Any],
        jobs: list[dict[str, Any]],
        pods: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Make sure the current Job's termination messages are in hand once it has finished.

        The pod watch may lag the Job watch by a moment; the API has the pods already.
        """
        job = current_job(obj.get("status") or {}, jobs)
        if job is None or observe_job(job).state not in ("succeeded", "failed"):
            return pods
        current = observe_job(job).name
        mine = [p for p in pods if observe_pod(p).job == current]
        if any(observe_pod(p).termination_message for p in mine):
            return pods
        # `job-name` is set by every Kubernetes version (batch.kubernetes.io/job-name: 1.27+).
        listed = await with_retries(
            lambda: self.kube.list(pods_path(namespace), f"job-name={current}")
        )
        fresh = [p for p in listed if observe_pod(p).job == current]
        return [p for p in pods if observe_pod(p).job != current] + fresh

    async def _events_of_podless_job(
        self,
        namespace: str,
        obj: dict[str, Any],
        jobs: list[dict[str, Any]],
        pods: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The Events of the current Job while it has no pod: why the API refuses its pods."""
        job = current_job(obj.get("status") or {}, jobs)
        if job is None or observe_job(job).state != "active":
            return []
        current = observe_job(job).name
        if any(observe_pod(p).job == current for p in pods):
            return []
        selector = f"involvedObject.kind=Job,involvedObject.name={current}"
        try:
            events: list[dict[str, Any]] = await with_retries(
                lambda: self.kube.list(events_path(namespace), field_selector=selector)
            )
            return events
        except KubeError as exc:  # e.g. an install without `list` on events: no detail
            log.info("events of Job %s/%s not read: %s", namespace, current, exc)
            return []

    # ------------------------------------------------------------------ MLflow

    async def end_tracking(self, obj: dict[str, Any], status: dict[str, Any], state: str) -> None:
        """End the run's MLflow parent run (FINISHED, FAILED or KILLED); never blocks for long."""
        run_id = status.get("mlflowRunId")
        spec = obj.get("spec") or {}
        uri = ((spec.get("tracking") or {}).get("mlflow") or {}).get(
            "trackingUri"
        ) or self.mlflow_uri
        if not run_id or not uri or not uri.startswith(("http://", "https://")):
            return
        body = {"run_id": run_id, "status": state, "end_time": int(time.time() * 1000)}
        try:
            url = f"{uri.rstrip('/')}/api/2.0/mlflow/runs/update"
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as s, s.post(url, json=body) as r:
                if r.status >= 400:
                    raise aiohttp.ClientResponseError(
                        r.request_info, (), status=r.status, message=await r.text()
                    )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            meta = obj.get("metadata") or {}
            log.warning(
                "MLflow run %s of %s/%s not ended: %s",
                run_id,
                meta.get("namespace"),
                meta.get("name"),
                exc,
            )
