"""EvaRun operator: step-transition latency and the memory of 200 runs at once (not a test).

The operator runs as its own process (``eva-operator``, so its memory is measured alone)
against KMock's emulated Kubernetes API served from this process, where a fast stand-in for
the Job controller completes every step Job at once: it creates the Job's pods already
terminated (exit code 0, a small JSON summary as the termination message) and marks the
Job Complete. New Jobs are noticed by hooking the emulator's request handling, not by
polling, and the operator's resync timer is set to 300 s, so only watch events drive it.

Figures and targets:
  latency   from the emulator finishing the PATCH that marks a Job Complete to the arrival
            of the same run's next Job CREATE; runs one after another, creator enabled
            (5 transitions a run); p50 < 500 ms
  scale     --runs EvaRuns applied at once, one iteration each, all to Succeeded: wall time,
            Jobs created (exactly runs x steps, no duplicates), the operator's peak RSS
            (VmHWM, and the largest VmRSS sampled every 0.5 s) < 300 MiB
  also      reconcile duration p50/p95 from the operator's /metrics histogram (interpolated
            within buckets), reconcile errors, warnings and errors in the operator's log

    .venv/bin/python benchmarks/operator_bench.py [--runs 200] [--latency-samples 25]
        [--creator | --no-creator] [--timeout 300] [--json PATH] [--log PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock

# The tests' KMock harness (emulator, kubeconfig, API client) is reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eva_operator.metrics import RECONCILE_BUCKETS
from eva_runtime.spec import steps_for
from operator_harness import (
    Api,
    Cluster,
    declare_resources,
    now_rfc3339,
    write_kubeconfig,
)

NAMESPACE = "default"
CLAIM = "bench"
LATENCY_TARGET_MS = 500.0
RSS_TARGET_MIB = 300.0
RECONCILE_HISTOGRAM = "eva_operator_reconcile_duration_seconds"

# Each step's summary, as `eva phase STEP` writes it to its termination message.
COUNTS: dict[str, dict[str, Any]] = {
    "prepare": {"prompts": 120, "heldout": 12},
    "generate": {
        "prompts": 108,
        "responses": 648,
        "reward_mean": 0.412,
        "reward_gap_mean": 0.305,
        "tokens": 51840,
    },
    "create": {
        "selected": 54,
        "evolved": 162,
        "dropped": 0,
        "buffer": 54,
        "mixed": 216,
        "informativeness_mean": 0.287,
    },
    "generate-evolved": {
        "prompts": 162,
        "responses": 972,
        "reward_mean": 0.436,
        "reward_gap_mean": 0.331,
        "tokens": 77760,
    },
    "train": {"pairs": 270, "train_loss": 0.612, "reward_accuracy": 0.71},
    "evaluate": {"reward_new": 0.471, "reward_previous": 0.412, "win_rate": 0.58},
}


# --------------------------------------------------------------------------- the emulator


@dataclass
class Probe:
    """What the hooked emulator saw, timed with time.perf_counter()."""

    jobs: asyncio.Queue = field(default_factory=asyncio.Queue)
    watches: set[str] = field(default_factory=set)
    creates: Counter = field(default_factory=Counter)  # Job name -> successful CREATEs
    conflicts: Counter = field(default_factory=Counter)  # Job name -> CREATEs refused (409)
    job_run: dict[str, tuple[str, str]] = field(default_factory=dict)  # Job -> (run, step)
    completed: dict[str, tuple[float, str]] = field(default_factory=dict)  # run -> (t, step)
    # (milliseconds, run, from step, to step, arrival of the next Job)
    samples: list[tuple[float, str, str, str, float]] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, names: list[str]) -> None:
        self.expected = set(names)
        self.done = asyncio.Event()

    def job_created(self, job: dict[str, Any], arrived: float) -> None:
        meta = job["metadata"]
        labels = meta.get("labels") or {}
        run, step = labels.get("eva.dev/run", ""), labels.get("eva.dev/step", "")
        self.creates[meta["name"]] += 1
        self.job_run[meta["name"]] = (run, step)
        before = self.completed.pop(run, None)
        if before is not None:
            t, prev = before
            self.samples.append(((arrived - t) * 1000.0, run, prev, step, arrived))
        self.jobs.put_nowait(job)

    def job_completed(self, name: str, at: float) -> None:
        run, step = self.job_run.get(name, ("", ""))
        if run:
            self.completed[run] = (at, step)

    def run_status(self, name: str, phase: str | None, at: float) -> None:
        if not phase:
            return
        self.phases[name] = phase
        if phase in ("Succeeded", "Failed") and name not in self.finished:
            self.finished[name] = at
            if self.expected and self.expected <= self.finished.keys():
                self.done.set()


def _is(resource: Any, group: str, plural: str) -> bool:
    return getattr(resource, "group", None) == group and getattr(resource, "plural", None) == plural


def _selected(obj: dict[str, Any], terms: list[str]) -> bool:
    """Equality-based label selector terms: k=v, k==v, k!=v, k, !k."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in terms:
        if "!=" in term:
            key, value = (x.strip() for x in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (x.strip() for x in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


class BenchCluster(Cluster):
    """The harness's emulator, telling the probe about Jobs, completions and run phases.

    KMock keeps every request it served (for tests' assertions) and matches each new one
    against that whole history, so its cost per request grows with the requests served:
    thousands of runs' worth would make the emulator, not the operator, the bottleneck.
    Here each request is forgotten once answered, so only the ones in flight are kept.
    Likewise KMock finds the object of a GET, PATCH or POST by scanning every object; here
    by its key. (Both lean on KMock's internals; were they renamed, only speed would suffer.)
    And a LIST honours its labelSelector, as the API server does (KMock returns everything,
    which would make the operator parse every pod of the namespace).
    """

    probe: Probe | None = None

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
        if strict and request.name is not None and request.resource is not None:
            store = getattr(self.objects, "_objects", None)
            if isinstance(store, dict):
                obj = store.get((request.resource, request.namespace, request.name))
                return [] if obj is None else [obj]
        return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]

    async def _handle(self, request: Any) -> Any:
        try:
            return await self._observe(request)
        finally:
            reqs = self._requests
            for i in range(len(reqs) - 1, -1, -1):
                if reqs[i] is request:
                    del reqs[i]
                    break

    async def _serve_list(self, request: Any) -> Any:
        listing = await super()._serve_list(request)
        selector = (request.params or {}).get("labelSelector")
        if selector and isinstance(listing, dict):
            terms = [t.strip() for t in selector.split(",") if t.strip()]
            listing["items"] = [o for o in listing["items"] if _selected(o, terms)]
        return listing

    async def _observe(self, request: Any) -> Any:
        probe, res = self.probe, request.resource
        if probe is None or res is None:
            return await super()._handle(request)
        arrived = time.perf_counter()
        action = request.action
        if action == kmock.action.WATCH:  # streams until the watch ends: note it first
            probe.watches.add(res.plural)
            return await super()._handle(request)
        is_job = _is(res, "batch", "jobs")
        data = request.data if isinstance(request.data, dict) else {}
        try:
            response = await super()._handle(request)
        except Exception:
            if is_job and action == kmock.action.CREATE:
                probe.conflicts[(data.get("metadata") or {}).get("name", "?")] += 1
            raise
        if is_job and action == kmock.action.CREATE:
            probe.job_created(data, arrived)
        elif is_job and action == kmock.action.UPDATE and request.name:
            conds = (data.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conds):
                probe.job_completed(request.name, time.perf_counter())
        elif _is(res, "eva.dev", "evaruns") and action == kmock.action.UPDATE and request.name:
            key = (res, request.namespace, request.name)
            with contextlib.suppress(KeyError):
                obj = self.objects[key]
                if not obj.deleted:
                    phase = (obj.raw.get("status") or {}).get("phase")
                    probe.run_status(request.name, phase, time.perf_counter())
        return response


# --------------------------------------------------------------------------- the Job controller


class FastJobs:
    """Completes every Job the moment it appears: terminated pods, then Complete."""

    def __init__(self, api: Api, probe: Probe):
        self.api = api
        self.probe = probe
        self.tasks: set[asyncio.Task] = set()
        self.errors: list[str] = []

    async def serve(self) -> None:
        while True:
            job = await self.probe.jobs.get()
            task = asyncio.create_task(self._complete(job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _complete(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        name, ns = meta["name"], meta.get("namespace") or NAMESPACE
        spec = job.get("spec") or {}
        completions = spec.get("completions") or 1
        indexed = spec.get("completionMode") == "Indexed"
        step = (meta.get("labels") or {}).get("eva.dev/step", "")
        message = json.dumps({"scope": "step", "step": step, "counts": COUNTS.get(step, {})})
        try:
            for i in range(completions):
                pod = _terminated_pod(job, i if indexed else None, message)
                status, data = await self.api.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)
                if status >= 300:
                    raise RuntimeError(f"pod of {name}: {status} {data}")
            now = now_rfc3339()
            body = {
                "status": {
                    "startTime": now,
                    "completionTime": now,
                    "active": 0,
                    "succeeded": completions,
                    "ready": 0,
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True"},
                        {"type": "Complete", "status": "True"},
                    ],
                }
            }
            path = f"/apis/batch/v1/namespaces/{ns}/jobs/{name}"
            status, data = await self.api.call("PATCH", path, body)
            if status >= 300:
                raise RuntimeError(f"status of {name}: {status} {data}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


def _terminated_pod(job: dict[str, Any], index: int | None, message: str) -> dict[str, Any]:
    meta = job["metadata"]
    tmpl = job["spec"]["template"]
    labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
    labels["batch.kubernetes.io/job-name"] = meta["name"]
    labels["job-name"] = meta["name"]
    labels["batch.kubernetes.io/controller-uid"] = meta.get("uid", "")
    if index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
    container = tmpl["spec"]["containers"][0]
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{index or 0}-{uuid.uuid4().hex[:5]}",
            "namespace": meta.get("namespace") or NAMESPACE,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": tmpl["spec"],
        "status": {
            "phase": "Succeeded",
            "startTime": now,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "message": message,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        },
    }


# --------------------------------------------------------------------------- the operator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_operator(
    kubeconfig: Path, metrics_port: int, log_path: Path
) -> asyncio.subprocess.Process:
    exe = shutil.which("eva-operator") or str(Path(sys.executable).parent / "eva-operator")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "EVA_ARTIFACT_CLAIM": CLAIM,
        "EVA_OPERATOR_HEALTH_PORT": "0",
        "EVA_OPERATOR_METRICS_PORT": str(metrics_port),
        "EVA_OPERATOR_RESYNC_SECONDS": "300",
        "EVA_WATCH_NAMESPACES": "",
        "EVA_WEBHOOK_MODE": "off",
    }
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            exe,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


async def stop_operator(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_kib(pid: int, field_name: str) -> int | None:
    """A VmRSS / VmHWM line of /proc/<pid>/status, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def sample_rss(pid: int, samples: list[int]) -> None:
    while True:
        kib = proc_kib(pid, "VmRSS")
        if kib is not None:
            samples.append(kib)
        await asyncio.sleep(0.5)


async def scrape(port: int) -> str:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        return await r.text()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def histogram_quantile(q: float, before: dict, after: dict, name: str) -> float | None:
    """Prometheus's histogram_quantile over the observations between two scrapes.

    Past the largest finite bucket it answers that bucket's bound (a lower bound, then)."""
    buckets = []
    for (n, labels), v in after.items():
        if n == name + "_bucket":
            le = float(dict(labels)["le"])
            buckets.append((le, v - before.get((n, labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return lower
            if cum == below:
                return le
            return lower + (le - lower) * (rank - below) / (cum - below)
        lower, below = le, cum
    return lower


# --------------------------------------------------------------------------- the runs


def manifest(name: str, creator: bool) -> dict[str, Any]:
    return {
        "apiVersion": "eva.dev/v1alpha1",
        "kind": "EvaRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "iterations": 1,
            "policy": {"model": "/models/bench-policy"},
            "rewardModel": {"type": "python", "function": "eva_runtime.rewards:length_target"},
            "prompts": {"source": "/data/bench-prompts.jsonl"},
            "creator": {"enabled": creator},
            "storage": {"claimName": CLAIM},
        },
    }


async def run_batch(
    api: Api, probe: Probe, names: list[str], creator: bool, timeout: float
) -> tuple[float, int]:
    """Apply these runs at once; the seconds until every one finished (or the timeout)."""
    probe.expect(names)
    t0 = time.perf_counter()
    await asyncio.gather(*(api.apply_run(manifest(n, creator)) for n in names))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(probe.done.wait(), timeout)
    ends = [probe.finished[n] for n in names if n in probe.finished]
    return (max(ends) - t0 if ends else time.perf_counter() - t0), len(ends)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def log_findings(path: Path, limit: int = 8) -> tuple[int, int, list[str]]:
    """(warning lines, error lines incl. tracebacks, the first few distinct such lines)."""
    warnings = errors = 0
    seen: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0, []
    for line in lines:
        bad = " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        warn = " WARNING " in line
        errors += bad
        warnings += warn
        if (bad or warn) and len(seen) < limit:
            short = line.split(": ", 1)[-1][:200] if " " in line else line[:200]
            if short not in seen:
                seen.append(short)
    return warnings, errors, seen


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    log_path = Path(args.log) if args.log else workdir / "operator.log"
    scale_steps = 1 + len(steps_for(args.creator))
    latency_runs = max(1, math.ceil(args.latency_samples / 5))
    metrics_port = free_port()
    out: dict[str, Any] = {
        "runs": args.runs,
        "creator": args.creator,
        "steps_per_run": scale_steps,
        "latency_runs": latency_runs,
        "operator_log": str(log_path),
        "cpus": os.cpu_count(),
    }
    rss: list[int] = []
    async with BenchCluster() as cluster, kmock.Server(cluster):
        declare_resources(cluster)
        probe = Probe()
        cluster.probe = probe
        api = Api(str(cluster.url))
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", str(cluster.url))
        jobs = FastJobs(api, probe)
        background = [asyncio.create_task(jobs.serve())]
        proc: asyncio.subprocess.Process | None = None
        try:
            proc = await start_operator(kubeconfig, metrics_port, log_path)
            out["operator_pid"] = proc.pid
            background.append(asyncio.create_task(sample_rss(proc.pid, rss)))
            deadline = time.monotonic() + 60
            while not {"evaruns", "jobs", "pods"} <= probe.watches:
                if proc.returncode is not None:
                    code = proc.returncode
                    raise RuntimeError(f"eva-operator exited with {code}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"eva-operator did not start watching; see {log_path}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the watches' initial listings settle
            out["idle_rss_mib"] = (proc_kib(proc.pid, "VmRSS") or 0) / 1024

            # Latency: one run at a time, creator on (5 transitions a run).
            lat_names = [f"lat-{i:02d}" for i in range(latency_runs)]
            lat_done = 0
            for name in lat_names:
                _, n = await run_batch(api, probe, [name], True, 60)
                lat_done += n
            lat = [x[0] for x in probe.samples if x[1] in lat_names]
            out["latency_finished"] = lat_done
            out["latency_samples"] = len(lat)
            out["latency_p50_ms"] = percentile(lat, 50)
            out["latency_p95_ms"] = percentile(lat, 95)
            out["latency_max_ms"] = max(lat) if lat else None

            # Scale: every run at once.
            m0 = metric_samples(await scrape(metrics_port))
            names = [f"run-{i:04d}" for i in range(args.runs)]
            cpu_op, cpu_self = proc_cpu_s(proc.pid), self_cpu_s()
            t_scale = time.perf_counter()
            wall, finished = await run_batch(api, probe, names, args.creator, args.timeout)
            if cpu_op is not None:
                out["operator_cpu_s"] = (proc_cpu_s(proc.pid) or cpu_op) - cpu_op
            out["emulator_cpu_s"] = self_cpu_s() - cpu_self
            await asyncio.sleep(1.0)  # the last events and status writes land
            m1 = metric_samples(await scrape(metrics_port))
            mine = set(names)
            created = {n: c for n, c in probe.creates.items() if probe.job_run[n][0] in mine}
            load = [x[0] for x in probe.samples if x[1] in mine]
            by_step: dict[str, list[float]] = {}
            by_second: dict[int, list[float]] = {}
            for ms, run, prev, step, at in probe.samples:
                if run in mine:
                    by_step.setdefault(f"{prev}->{step}", []).append(ms)
                    by_second.setdefault(int(at - t_scale), []).append(ms)
            phases = Counter(probe.phases.get(n, "none") for n in names)
            out.update(
                {
                    "wall_s": wall,
                    "finished": finished,
                    "succeeded": phases.get("Succeeded", 0),
                    "phases": dict(phases),
                    "jobs_expected": args.runs * scale_steps,
                    "jobs_created": sum(created.values()),
                    "jobs_distinct": len(created),
                    "jobs_duplicated": sum(c - 1 for c in created.values() if c > 1),
                    "job_conflicts_409": sum(probe.conflicts.values()),
                    "operator_jobs_created_total": metric_total(
                        m1, "eva_operator_jobs_created_total"
                    )
                    - metric_total(m0, "eva_operator_jobs_created_total"),
                    "load_latency_p50_ms": percentile(load, 50),
                    "load_latency_p95_ms": percentile(load, 95),
                    "load_latency_by_transition_ms": {
                        k: {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95)}
                        for k, v in by_step.items()
                    },
                    "load_latency_by_second_ms": {
                        s: {"n": len(v), "p50": percentile(v, 50), "max": max(v)}
                        for s, v in sorted(by_second.items())
                    },
                    "reconciles": metric_total(m1, RECONCILE_HISTOGRAM + "_count")
                    - metric_total(m0, RECONCILE_HISTOGRAM + "_count"),
                    "reconcile_p50_ms": _ms(histogram_quantile(0.5, m0, m1, RECONCILE_HISTOGRAM)),
                    "reconcile_p95_ms": _ms(histogram_quantile(0.95, m0, m1, RECONCILE_HISTOGRAM)),
                    "reconcile_errors": metric_total(m1, "eva_operator_reconcile_errors_total"),
                    "controller_errors": len(jobs.errors),
                    "controller_error_examples": jobs.errors[:3],
                }
            )
            hwm = proc_kib(proc.pid, "VmHWM")
            out["peak_rss_hwm_mib"] = hwm / 1024 if hwm is not None else None
            out["peak_rss_sampled_mib"] = max(rss) / 1024 if rss else None
            out["end_rss_mib"] = (proc_kib(proc.pid, "VmRSS") or 0) / 1024
            out["operator_alive"] = proc.returncode is None
        finally:
            if proc is not None:
                await stop_operator(proc)
                out["operator_exit"] = proc.returncode
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await jobs.stop()
            await api.close()
    warnings, errors, examples = log_findings(log_path)
    out.update({"log_warnings": warnings, "log_errors": errors, "log_examples": examples})
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


# --------------------------------------------------------------------------- the report


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _bucket(ms: float | None) -> str:
    """A histogram quantile; at the top finite bucket (10 s) it is only a lower bound."""
    top = RECONCILE_BUCKETS[-1] * 1000.0
    return _fmt(ms, " ms") if ms is None or ms < top else f">= {ms:.0f} ms"


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    peak = max([x for x in (r.get("peak_rss_hwm_mib"), r.get("peak_rss_sampled_mib")) if x] or [0])
    jobs_ok = (
        r["jobs_created"] == r["jobs_expected"]
        and r["jobs_distinct"] == r["jobs_expected"]
        and r["jobs_duplicated"] == 0
    )
    p50 = r.get("latency_p50_ms")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    n = r["latency_samples"]
    return [
        (f"transition latency p50 ({n} samples)", _fmt(p50, " ms"), "< 500 ms",
         verdict(p50 is not None and p50 < LATENCY_TARGET_MS)),
        ("transition latency p95", _fmt(r.get("latency_p95_ms"), " ms"), "", ""),
        (f"{r['runs']} runs: all Succeeded", f"{r['succeeded']}/{r['runs']}", "all",
         verdict(r["succeeded"] == r["runs"])),
        (f"{r['runs']} runs: wall time", _fmt(r["wall_s"], " s"), "", ""),
        ("  CPU: operator / emulator + Job controller",
         f"{_fmt(r.get('operator_cpu_s'), ' s')} / {_fmt(r.get('emulator_cpu_s'), ' s')}", "", ""),
        (f"{r['runs']} runs: Jobs created (distinct)",
         f"{r['jobs_created']} ({r['jobs_distinct']})", f"= {r['jobs_expected']}",
         verdict(jobs_ok)),
        ("  Job CREATEs refused as existing (409)", str(r["job_conflicts_409"]), "", ""),
        ("  transition latency under load p50", _fmt(r.get("load_latency_p50_ms"), " ms"), "", ""),
        ("  transition latency under load p95", _fmt(r.get("load_latency_p95_ms"), " ms"), "", ""),
        ("  reconciles", _fmt(int(r["reconciles"])), "", ""),
        ("  reconcile duration p50 (histogram)", _bucket(r.get("reconcile_p50_ms")), "", ""),
        ("  reconcile duration p95 (histogram)", _bucket(r.get("reconcile_p95_ms")), "", ""),
        ("operator RSS idle", _fmt(r.get("idle_rss_mib"), " MiB"), "", ""),
        ("operator peak RSS (VmHWM)", _fmt(r.get("peak_rss_hwm_mib"), " MiB"), "< 300 MiB",
         verdict(0 < peak < RSS_TARGET_MIB)),
        ("operator peak RSS (sampled 0.5 s)", _fmt(r.get("peak_rss_sampled_mib"), " MiB"), "", ""),
        ("reconcile errors / log warnings / log errors",
         f"{int(r['reconcile_errors'])} / {r['log_warnings']} / {r['log_errors']}", "0 / 0 / 0",
         verdict(not r["reconcile_errors"] and not r["log_warnings"] and not r["log_errors"])),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="EvaRuns applied at once (200)")
    ap.add_argument(
        "--latency-samples",
        type=int,
        default=25,
        help="step transitions to time, 5 per run, runs one at a time (25)",
    )
    ap.add_argument(
        "--creator",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the creator in the scale runs: 6 Jobs a run, else 4 (on)",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for the scale phase")
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--log", metavar="PATH", help="the operator's log (default: a temp folder)")
    args = ap.parse_args()

    result = asyncio.run(bench(args))
    rows = report(result)
    creator = "on" if args.creator else "off"
    print(
        f"eva-operator (own process) against KMock, {result['cpus']} CPUs; "
        f"{args.runs} runs x 1 iteration, creator {creator} ({result['steps_per_run']} Jobs a "
        f"run); latency over {result['latency_runs']} runs one at a time, creator on"
    )
    print(f"{'figure':46s} {'value':>16s} {'target':>10s}  result")
    for name, value, target, verdict in rows:
        print(f"{name:46s} {value:>16s} {target:>10s}  {verdict}")
    if result["controller_errors"]:
        print(f"simulated Job controller errors: {result['controller_error_examples']}")
    if not result.get("operator_alive", False):
        print(f"eva-operator exited during the benchmark (code {result.get('operator_exit')})")
    if result["phases"].get("Succeeded", 0) != args.runs:
        print(f"run phases: {result['phases']}")
    for line in result["log_examples"]:
        print(f"operator log: {line}")
    print(f"operator log: {result['operator_log']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
