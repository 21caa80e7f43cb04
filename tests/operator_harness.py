"""A Kubernetes API (KMock's emulator), the operator running in-process against it, and a
stand-in for the Job controller that runs each Job's real container command on this machine.

What KMock leaves out and this harness adds: ``metadata.uid``, ``creationTimestamp`` and
``generation`` (stamped on create, generation bumped on spec changes); the Job controller
(``JobController``); garbage collection of a deleted Job's pods. What it takes away: KMock's
log of served requests (see ``Cluster._served``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

EVARUNS = "eva.dev/v1alpha1/evaruns"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
EVENTS = "v1/events"


def now_rfc3339(shift: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=shift)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster(kmock.KubernetesEmulator):
    """The emulator plus what the API server stamps on objects."""

    _rv: int = 0

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            self._rv += 1
            if request.action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now_rfc3339())
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(self._rv)
            elif request.action == kmock.action.UPDATE and request.name:
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = str(self._rv)
                if "spec" in data and request.subresource is None:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects and not self.objects[key].deleted:
                        old = self.objects[key].get("metadata", {}).get("generation", 1)
                        meta["generation"] = old + 1
        try:
            return await super()._handle(request)
        finally:
            self._served(request)

    def _served(self, request: Any) -> None:
        """Drop a served request from KMock's log.

        KMock keeps every request, and it matches each new request against its reactions by
        scanning that log, so a run of thousands of requests grows quadratically slow (20
        runs: minutes in the scan alone). These tests assert on the stored objects, never on
        the log, so it keeps only the requests still being served (watches among them).
        """
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is request:
                del self._requests[i]
                return


def declare_resources(cluster: kmock.KubernetesEmulator) -> None:
    cluster.resources.load_bundled()
    cluster.resources[EVARUNS] = kmock.ResourceInfo(
        kind="EvaRun",
        singular="evarun",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        shortnames={"evarun"},
        subresources={"status"},
    )


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [
                    {
                        "name": "kmock",
                        "context": {"cluster": "kmock", "user": "tester", "namespace": "default"},
                    }
                ],
                "current-context": "kmock",
            }
        )
    )
    return path


@contextlib.asynccontextmanager
async def running_cluster() -> AsyncIterator[Cluster]:
    async with Cluster() as cluster, kmock.Server(cluster):
        declare_resources(cluster)
        yield cluster


class Api:
    """Plain HTTP(S) to an API server (KMock's, or a real one with TLS and a token), as
    kubectl would talk to it."""

    def __init__(self, server: str, *, ssl: Any = None, headers: dict[str, str] | None = None):
        self.server = server.rstrip("/")
        connector = aiohttp.TCPConnector(ssl=ssl) if ssl is not None else None
        self.session = aiohttp.ClientSession(connector=connector, headers=headers)

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {}
        if method == "PATCH":
            headers["Content-Type"] = content_type or "application/merge-patch+json"
        async with self.session.request(
            method, self.server + path, json=body, headers=headers, params=params
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            return resp.status, data

    async def apply_run(self, doc: dict[str, Any]) -> dict[str, Any]:
        ns = doc["metadata"].setdefault("namespace", "default")
        status, data = await self.call(
            "POST", f"/apis/eva.dev/v1alpha1/namespaces/{ns}/evaruns", doc
        )
        assert status < 300, data
        return data

    async def patch_run(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, data = await self.call(
            "PATCH", f"/apis/eva.dev/v1alpha1/namespaces/{ns}/evaruns/{name}", patch
        )
        assert status < 300, data
        return data

    async def delete_run(self, ns: str, name: str) -> None:
        status, data = await self.call(
            "DELETE", f"/apis/eva.dev/v1alpha1/namespaces/{ns}/evaruns/{name}"
        )
        assert status < 300, data


def run_object(cluster: Cluster, name: str, ns: str = "default") -> dict[str, Any] | None:
    key = (kmock.resource(EVARUNS), ns, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    return cluster.objects[key].raw


def live(cluster: Cluster, resource: str, ns: str = "default") -> list[dict[str, Any]]:
    out = []
    for (res, namespace, _), obj in list(cluster.objects.items()):
        if str(res) == str(kmock.resource(resource)) and namespace == ns and not obj.deleted:
            out.append(obj.raw)
    return out


def created_names(cluster: Cluster, resource: str) -> list[str]:
    """Names of every object of this resource ever created (POSTs that succeeded, deleted too)."""
    out = []
    for (res, _, name), _obj in list(cluster.objects.items()):
        if str(res) == str(kmock.resource(resource)):
            out.append(name)
    return out


async def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- the operator


class Operator:
    """The real operator (eva_operator.handlers) in its own thread and event loop, as it
    would run in its own pod: stopping it touches nothing of the test's loop."""

    def __init__(self, kubeconfig: Path, **env: str):
        self.kubeconfig = kubeconfig
        self.env = env
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.metrics: Any = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        import kopf

        from eva_operator.config import OperatorConfig
        from eva_operator.handlers import registry
        from eva_operator.metrics import OperatorMetrics

        os.environ["KUBECONFIG"] = str(self.kubeconfig)
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            config = OperatorConfig.from_env()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.metrics = OperatorMetrics()
        ready = threading.Event()

        def main() -> None:
            try:
                asyncio.run(
                    kopf.operator(
                        clusterwide=True,
                        standalone=True,
                        registry=registry(config),
                        stop_flag=self.stop_flag,
                        ready_flag=ready,
                        memo=kopf.Memo(config=config, metrics=self.metrics),
                    )
                )
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self.thread = threading.Thread(target=main, name="eva-operator", daemon=True)
        self.thread.start()
        await asyncio.to_thread(ready.wait, 30)

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 30)
        self.thread = None
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------- the Job controller


@dataclass
class Outcome:
    """How the stand-in Job controller treats a Job (decided per Job by the test)."""

    kind: str = "run"  # run | fail | pending | hold
    message: str = ""
    waiting_reason: str = "ImagePullBackOff"
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class JobController:
    """Plays the Job controller and the kubelet for the Jobs the operator creates.

    For ``run``, each pod's real container command (``eva phase ...``) runs on this machine,
    with the artifact claim mapped to ``artifacts`` and emptyDirs to temp folders; its
    termination message file becomes the pod's ``terminated.message``.
    """

    cluster: Cluster
    api: Api
    artifacts: Path
    scratch: Path
    decide: Callable[[dict[str, Any]], Outcome] = lambda job: Outcome()
    in_process: bool = True
    seen: dict[str, asyncio.Task] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for t in self.seen.values():
            t.cancel()
        await asyncio.gather(*self.seen.values(), return_exceptions=True)
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            current = {}
            for job in self._all_jobs():
                uid = job["metadata"]["uid"]
                current[uid] = job
                if uid not in self.seen:
                    self.seen[uid] = asyncio.create_task(self._run_job(job))
            # A deleted Job: stop its pods (the garbage collector's part).
            for uid, task in list(self.seen.items()):
                if uid not in current and not task.done():
                    task.cancel()
            await asyncio.sleep(0.02)

    def _all_jobs(self) -> list[dict[str, Any]]:
        out = []
        for (res, _ns, _name), obj in list(self.cluster.objects.items()):
            if str(res) == str(kmock.resource(JOBS)) and not obj.deleted:
                out.append(obj.raw)
        return out

    async def _run_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        name, ns = meta["name"], meta["namespace"]
        spec = job["spec"]
        completions = spec.get("completions") or 1
        indexed = spec.get("completionMode") == "Indexed"
        outcome = self.decide(job)
        pods = []
        try:
            for i in range(completions):
                pods.append(await self._create_pod(job, i if indexed else None, outcome))
            await self._patch(
                JOBS, ns, name, {"status": {"startTime": now_rfc3339(), "active": completions}}
            )
            self.started.append(name)
            if outcome.kind == "pending":
                await asyncio.Event().wait()  # until the Job is deleted
            if outcome.kind == "hold":
                await outcome.release.wait()
                outcome.kind = "run"
            codes = []
            for i, pod in enumerate(pods):
                code, message = await self._execute(job, pod, i if indexed else None, outcome)
                codes.append(code)
                await self._finish_pod(pod, code, message)
            failed = any(codes)
            status: dict[str, Any] = {
                "active": 0,
                "succeeded": sum(1 for c in codes if c == 0),
                "failed": sum(1 for c in codes if c != 0),
                "completionTime": now_rfc3339(),
            }
            cond = (
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
                if failed
                else {"type": "Complete", "status": "True"}
            )
            status["conditions"] = [cond]
            self.finished.append((name, 1 if failed else 0))
            await self._patch(JOBS, ns, name, {"status": status})
        except asyncio.CancelledError:
            for pod in pods:  # the Job went away: so do its pods
                pname = pod["metadata"]["name"]
                await self.api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{pname}")
            raise

    async def _create_pod(self, job: dict[str, Any], index: int | None, outcome: Outcome) -> dict:
        meta = job["metadata"]
        tmpl = job["spec"]["template"]
        labels = dict(tmpl["metadata"].get("labels") or {})
        labels["batch.kubernetes.io/job-name"] = meta["name"]
        labels["job-name"] = meta["name"]
        if index is not None:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
        pname = f"{meta['name']}-{index if index is not None else 0}-{uuid.uuid4().hex[:5]}"
        container = tmpl["spec"]["containers"][0]
        if outcome.kind == "pending":
            state = {
                "waiting": {
                    "reason": outcome.waiting_reason,
                    "message": f"Back-off pulling image {container['image']!r}",
                }
            }
            phase = "Pending"
        else:
            state = {"running": {"startedAt": now_rfc3339()}}
            phase = "Running"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pname,
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": tmpl["spec"],
            "status": {
                "phase": phase,
                # Bound at once, as a scheduler with room would.
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}
                ],
                "containerStatuses": [container_status(container, phase, state)],
            },
        }
        status, data = await self.api.call(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/pods", pod
        )
        assert status < 300, data
        return data

    async def _finish_pod(self, pod: dict[str, Any], code: int, message: str) -> None:
        meta = pod["metadata"]
        c = pod["status"]["containerStatuses"][0]
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "startedAt": (c.get("state") or {}).get("running", {}).get("startedAt"),
            "finishedAt": now_rfc3339(),
        }
        await self._patch(
            PODS,
            meta["namespace"],
            meta["name"],
            {
                "status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [
                        {**c, "ready": False, "state": {"terminated": terminated}}
                    ],
                }
            },
        )

    async def _patch(self, resource: str, ns: str, name: str, body: dict[str, Any]) -> None:
        base = "/api/v1" if resource == PODS else "/apis/batch/v1"
        plural = "pods" if resource == PODS else "jobs"
        status, data = await self.api.call("PATCH", f"{base}/namespaces/{ns}/{plural}/{name}", body)
        assert status < 300, data

    async def _execute(
        self, job: dict[str, Any], pod: dict[str, Any], index: int | None, outcome: Outcome
    ) -> tuple[int, str]:
        if outcome.kind == "fail":
            return 1, json.dumps({"error": outcome.message or "simulated failure"})
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        prepared = prepare_container(
            pod_spec, pod["metadata"]["name"], self.artifacts, self.scratch
        )
        for e in container.get("env", []):
            if "value" in e:
                prepared.env[e["name"]] = prepared.map(e["value"])
        if index is not None:
            prepared.env["JOB_COMPLETION_INDEX"] = str(index)
        async with self._lock:  # one step at a time: this machine has two cores
            code, log = await invoke(
                container["command"], prepared.args, prepared.env, self.in_process
            )
        term = prepared.termination
        message = term.read_text() if term.exists() else ""
        if not message and code != 0:
            message = log[-2000:]  # terminationMessagePolicy: FallbackToLogsOnError
        return code, message


# --------------------------------------------------------------------------- a container


def container_status(container: dict[str, Any], phase: str, state: dict[str, Any]) -> dict:
    """A pod's status entry for its one container, complete as a kubelet writes it."""
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": phase == "Running",
        "restartCount": 0,
        "state": state,
    }


@dataclass
class Prepared:
    """A step container laid out on this machine: its volumes as folders, its args mapped."""

    mounts: dict[str, Path]
    args: list[str]
    termination: Path
    env: dict[str, str] = field(default_factory=dict)

    def map(self, value: str) -> str:
        """A path inside the container -> the folder on this machine that stands for it."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(self.mounts[mount]) + value[len(mount.rstrip("/")) :]
        return value


def prepare_container(
    pod_spec: dict[str, Any], pod_name: str, artifacts: Path, scratch: Path
) -> Prepared:
    """The claim volume becomes ``artifacts``; every other volume a fresh folder of the pod."""
    container = pod_spec["containers"][0]
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    home = scratch / pod_name
    home.mkdir(parents=True, exist_ok=True)
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts") or []:
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:
            mounts[m["mountPath"]] = artifacts
        else:
            d = home / m["name"]
            d.mkdir(exist_ok=True)
            mounts[m["mountPath"]] = d
    term = home / "termination-log"
    mounts[container.get("terminationMessagePath", "/dev/termination-log")] = term
    prepared = Prepared(mounts=mounts, args=[], termination=term)
    prepared.args = [prepared.map(a) for a in container.get("args", [])]
    return prepared


async def invoke(
    command: list[str], args: list[str], env: dict[str, str], in_process: bool
) -> tuple[int, str]:
    """Run ``eva ARGS`` as a step container would: in this process, or as a subprocess."""
    assert command == ["eva"], command
    if in_process:
        return await asyncio.to_thread(_invoke_in_process, args, env)
    exe = shutil.which("eva") or str(Path(sys.executable).parent / "eva")
    full_env = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", **env}
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _invoke_in_process(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from eva_runtime.cli import main

    result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    log = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        log += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, log
