"""Fixtures of the real-API tier: one control plane per session with the chart installed from
its default values, and per test a fresh namespace, the stand-in node and the real
`eva-operator` process under the chart's ServiceAccount and the Deployment's environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from kube_cluster import ROOT, TOOLS_BIN, ControlPlane, KubeApi, StandInNode, running_control_plane
from operator_harness import wait_for
from prom_tools import free_port
from tiny_run import tiny_manifest

RELEASE, NAMESPACE = "eva-operator", "eva-system"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
CLAIM = "eva-artifacts"
STEP_ACCOUNT = "eva-step"
RUNS = "/apis/eva.dev/v1alpha1"


def helm_template(*args: str) -> str:
    out = subprocess.run(
        [
            str(TOOLS_BIN / "helm"),
            "template",
            RELEASE,
            str(ROOT / "charts" / "eva-operator"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@dataclass
class Installed:
    """The chart's default render, applied: what the Deployment would run with."""

    objects: list[dict[str, Any]]
    env: dict[str, str]
    namespace: str = NAMESPACE

    @property
    def user(self) -> str:
        """The operator's identity: its ServiceAccount."""
        return f"system:serviceaccount:{self.namespace}:{RELEASE}"


def deployment_env(objects: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    """The operator container's environment, field references resolved as in the pod."""
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif (e.get("valueFrom") or {}).get("fieldRef", {}).get(
            "fieldPath"
        ) == "metadata.namespace":
            env[e["name"]] = namespace
        else:
            raise AssertionError(f"unhandled env source in the Deployment: {e}")
    return env


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("kube")) as cp:
        yield cp


@pytest.fixture(scope="session")
def installed(control_plane: ControlPlane) -> Installed:
    """`kubectl apply -f manifests/install.yaml` (the default values, Namespace included)."""
    cp = control_plane
    text = (ROOT / "manifests" / "install.yaml").read_text()
    cp.kubectl("apply", "-f", "-", stdin=text)
    cp.kubectl("wait", "--for=condition=Established", "crd/evaruns.eva.dev", "--timeout=60s")
    objects = [o for o in yaml.safe_load_all(text) if o]
    return Installed(objects=objects, env=deployment_env(objects, NAMESPACE))


@pytest.fixture(scope="session")
def namespaced_install(control_plane: ControlPlane, installed: Installed) -> Installed:
    """The chart with its namespaced values (ci/namespaced-values.yaml) in `eva-team`, beside
    the cluster-wide install."""
    namespace = "eva-team"
    control_plane.kubectl("create", "namespace", namespace)
    values = ROOT / "charts" / "eva-operator" / "ci" / "namespaced-values.yaml"
    text = helm_template("--namespace", namespace, "-f", str(values))
    control_plane.kubectl("apply", "-f", "-", stdin=text)
    objects = [o for o in yaml.safe_load_all(text) if o]
    return Installed(objects, deployment_env(objects, namespace), namespace)


# --------------------------------------------------------------------------- the operator


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    log: Path
    health_port: int
    metrics_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class KEnv:
    cp: ControlPlane
    api: KubeApi
    node: StandInNode
    installed: Installed
    namespace: str
    tmp: Path
    model: Path
    operators: list[OperatorProcess] = field(default_factory=list)
    audit_from: int = 0

    # ---------------------------------------------------------------- operator

    async def start_operator(self, **env: str) -> OperatorProcess:
        """`eva-operator` as the Deployment runs it, with the chart ServiceAccount's token;
        listeners on 127.0.0.1 and the webhook advertised by URL (no Service routes here)."""
        token = await self.api.token_for(self.installed.namespace, RELEASE)
        n = len(self.operators)
        kubeconfig = self.cp.kubeconfig(
            self.tmp / f"operator-{n}.kubeconfig", token, self.installed.namespace
        )
        webhook, health, metrics = free_port(), free_port(), free_port()
        full = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
            **self.installed.env,
            "KUBECONFIG": str(kubeconfig),
            "EVA_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "EVA_OPERATOR_HEALTH_PORT": str(health),
            "EVA_OPERATOR_METRICS_PORT": str(metrics),
            "EVA_OPERATOR_RESYNC_SECONDS": "20",
            "EVA_WEBHOOK_PORT": str(webhook),
            "EVA_WEBHOOK_URL": f"https://127.0.0.1:{webhook}",
            **env,
        }
        exe = shutil.which("eva-operator") or str(Path(sys.executable).with_name("eva-operator"))
        log = self.tmp / f"operator-{n}.log"
        proc = subprocess.Popen(
            [exe, "--verbose"],
            env=full,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        op = OperatorProcess(proc, log, health, metrics)
        self.operators.append(op)
        await wait_for(lambda: op.healthy() or not op.alive(), 60, "the operator's /healthz", 0.2)
        assert op.alive(), op.text()[-4000:]
        if full.get("EVA_WEBHOOK_MODE") == "self-managed":
            await wait_for(
                lambda: "admission webhook registered" in op.text() or not op.alive(),
                60,
                "the webhook registration",
                0.2,
            )
            assert op.alive(), op.text()[-4000:]
        return op

    # ---------------------------------------------------------------- runs

    def manifest(
        self, name: str = "tiny", *, creator: bool = False, prompts: int = 9, **spec: Any
    ) -> dict[str, Any]:
        folder = self.tmp / "manifests" / name
        folder.mkdir(parents=True, exist_ok=True)
        spec.setdefault("storage", {"claimName": CLAIM})
        path = tiny_manifest(
            folder, self.model, creator=creator, name=name, prompts=prompts, spec=spec
        )
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["namespace"] = self.namespace
        return doc

    def path(self, name: str | None = None, sub: str | None = None) -> str:
        base = f"{RUNS}/namespaces/{self.namespace}/evaruns"
        if name:
            base += f"/{name}"
        return f"{base}/{sub}" if sub else base

    async def create(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return await self.api.call("POST", self.path(), doc)

    async def run(self, name: str = "tiny") -> dict[str, Any] | None:
        code, data = await self.api.call("GET", self.path(name))
        return data if code == 200 else None

    async def status(self, name: str = "tiny") -> dict[str, Any]:
        return ((await self.run(name)) or {}).get("status") or {}

    async def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(name)
            if status.get("phase") in phases:
                return status
            for op in self.operators[-1:]:
                assert op.alive(), f"the operator exited:\n{op.text()[-4000:]}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"EvaRun {name} not {'/'.join(phases)} in {timeout} s: {status}\n"
                    f"node errors: {self.node.errors}\n"
                    + (self.operators[-1].text()[-3000:] if self.operators else "")
                )
            await asyncio.sleep(0.2)

    async def jobs(self, run: str | None = None) -> list[dict[str, Any]]:
        sel = {"labelSelector": f"eva.dev/run={run}"} if run else {}
        return await self.api.items(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", **sel)

    async def pods(self, run: str | None = None) -> list[dict[str, Any]]:
        sel = {"labelSelector": f"eva.dev/run={run}"} if run else {}
        return await self.api.items(f"/api/v1/namespaces/{self.namespace}/pods", **sel)

    async def events(self, name: str = "tiny", kind: str = "EvaRun") -> list[dict[str, Any]]:
        return await self.api.items(
            f"/api/v1/namespaces/{self.namespace}/events",
            fieldSelector=f"involvedObject.kind={kind},involvedObject.name={name}",
        )

    def operator_requests(self) -> list[dict[str, Any]]:
        """Audit events of the operator's requests during this test."""
        return self.cp.audit(self.installed.user)[self.audit_from :]


async def _create_namespace(api: KubeApi, name: str, step_account: bool) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    if step_account:  # what `steps.serviceAccount.namespaces` creates
        await api.ok(
            "POST",
            f"/api/v1/namespaces/{name}/serviceaccounts",
            {"metadata": {"name": STEP_ACCOUNT}, "automountServiceAccountToken": False},
        )


@contextlib.asynccontextmanager
async def environment(
    cp: ControlPlane, installed: Installed, namespace: str, tmp: Path, model: Path
) -> AsyncIterator[KEnv]:
    """The stand-in node and room for operators, for runs in ``namespace``; on the way out
    the RBAC check, then the runs, the operators and the node are cleaned up."""
    api = KubeApi(cp)
    tmp = tmp / namespace
    artifacts = tmp / "pvc"
    artifacts.mkdir(parents=True)
    node = StandInNode(api, artifacts, tmp / "pods")
    node.start()
    env = KEnv(
        cp=cp,
        api=api,
        node=node,
        installed=installed,
        namespace=namespace,
        tmp=tmp,
        model=model,
        audit_from=len(cp.audit(installed.user)),
    )
    try:
        yield env
        # Sufficient RBAC: the authorizer refused the operator nothing (other 403s, such as
        # a namespace being terminated, come from admission and are the operator's to handle).
        refused = [
            f"{e['verb']} {e['requestURI']}"
            for e in env.operator_requests()
            if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        ]
        assert not refused, f"the chart's RBAC refused the operator: {refused}"
    finally:
        # Runs go first, while an operator can still remove their finalizers (without one,
        # as an administrator would).
        alive = any(op.alive() for op in env.operators)
        for run in await api.items(env.path()):
            name = run["metadata"]["name"]
            if not alive:
                await api.call("PATCH", env.path(name), {"metadata": {"finalizers": None}})
            await api.call("DELETE", env.path(name))
        deadline = time.monotonic() + 30
        while await api.items(env.path()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for op in env.operators:
            op.kill(signal.SIGTERM)
        await node.stop()
        await api.close()


@pytest_asyncio.fixture
async def kenv(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    installed: Installed,
    tmp_path: Path,
    tiny_model: Path,
) -> AsyncIterator[KEnv]:
    """A fresh namespace (with the eva-step ServiceAccount unless the test is marked
    ``no_step_account``) under the cluster-wide install."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    admin = KubeApi(control_plane)
    try:
        marker = request.node.get_closest_marker("no_step_account")
        await _create_namespace(admin, namespace, step_account=marker is None)
        async with environment(control_plane, installed, namespace, tmp_path, tiny_model) as env:
            yield env
        await admin.call("DELETE", f"/api/v1/namespaces/{namespace}")
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def team_env(
    control_plane: ControlPlane, namespaced_install: Installed, tmp_path: Path, tiny_model: Path
) -> AsyncIterator[KEnv]:
    """Runs in the namespaced install's own namespace, for its operator."""
    ns = namespaced_install.namespace
    async with environment(control_plane, namespaced_install, ns, tmp_path, tiny_model) as env:
        yield env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test shows where the control plane's and the operator's logs are, and their
    ends (the files stay in pytest's temporary folder)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    env = item.funcargs.get("kenv") or item.funcargs.get("team_env")
    cp = item.funcargs.get("control_plane") or (env.cp if env else None)
    if cp is not None:
        report.sections.append(("control plane logs", str(cp.logs)))
        for name in ("kube-controller-manager", "kube-apiserver"):
            report.sections.append((name, cp.tail(name, 2000)))
    if env is not None:
        for i, op in enumerate(env.operators):
            report.sections.append((f"eva-operator #{i} ({op.log})", op.text()[-3000:]))
