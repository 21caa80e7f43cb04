"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
as subprocesses on 127.0.0.1, plus a stand-in node that plays the kubelet.

The binaries come from ``make tools`` (``.tools/bin``: v1.20.2 built from Debian's source
package by ``tests/kube/build-control-plane.sh``, etcd from Debian) or from
``KUBEBUILDER_ASSETS`` (the envtest convention: a folder with ``kube-apiserver``, ``etcd`` and
optionally ``kube-controller-manager``). There is no scheduler and no kubelet: pods stay
unbound, and ``StandInNode`` runs each step pod's real container command on this machine and
writes the pod's status through the API, so the real Job controller completes or fails the
Job and the real garbage collector removes what an owner leaves behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from operator_harness import Api, Outcome, container_status, invoke, prepare_container
from prom_tools import free_port

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
READY_TIMEOUT_S = 60.0


def binaries() -> Path:
    """The folder with the control plane's binaries, or a failed test (CI) / a skip."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    for folder in [Path(assets)] if assets else [TOOLS_BIN]:
        if (folder / "kube-apiserver").exists() and (folder / "etcd").exists():
            return folder
    why = (
        f"no kube-apiserver and etcd in {assets or TOOLS_BIN}: run `make tools` (builds them "
        "from Debian's kubernetes source package) or set KUBEBUILDER_ASSETS"
    )
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
    raise AssertionError  # unreachable


# --------------------------------------------------------------------------- certificates


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, the API server's serving certificate (127.0.0.1, localhost) and the key pair
    that signs service-account tokens."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eva-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = key()
    sans = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = key()
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "apiserver.crt": srv.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": pem_key(srv_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


# --------------------------------------------------------------------------- the control plane


def _version(binary: Path) -> tuple[int, int]:
    text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    parts = text.split()[-1].lstrip("v").split(".")
    return int(parts[0]), int(parts[1])


@dataclass
class ControlPlane:
    workdir: Path
    bin_dir: Path
    url: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    version: tuple[int, int] = (0, 0)
    has_controller_manager: bool = False
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    certs: dict[str, Path] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.certs["ca.crt"]

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    def audit(self, user: str) -> list[dict[str, Any]]:
        """The audit events of ``user``'s requests so far (ResponseComplete stage)."""
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written
            if ev.get("stage") == "ResponseComplete" and ev.get("user", {}).get("username") == user:
                out.append(ev)
        return out

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.certs = _certificates(self.workdir)
        api = self.bin_dir / "kube-apiserver"
        self.version = _version(api)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        # Every request of a service account (the operator's) is audited: what it was
        # refused (RBAC), and each status write with the object the server stored.
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        {
                            "level": "RequestResponse",
                            "userGroups": ["system:serviceaccounts"],
                            "resources": [{"group": "eva.dev", "resources": ["evaruns/status"]}],
                        },
                        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                        {"level": "None"},
                    ],
                }
            )
        )
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self._spawn(
            "etcd",
            [
                self.bin_dir / "etcd",
                "--data-dir",
                self.workdir / "etcd",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--log-level",
                "warn",
            ],
        )
        args: list[Any] = [
            api,
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={self.certs['apiserver.crt']}",
            f"--tls-private-key-file={self.certs['apiserver.key']}",
            f"--client-ca-file={self.certs['ca.crt']}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.certs['sa.pub']}",
            f"--service-account-signing-key-file={self.certs['sa.key']}",
            "--service-cluster-ip-range=10.0.0.0/24",
            # Clusters that enforce owner-reference permissions (OpenShift) refuse a Job with
            # blockOwnerDeletion unless its creator may update the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--v=1",
        ]
        if self.version < (1, 24):
            args.append("--insecure-port=0")
        self._spawn("kube-apiserver", args)
        self.url = f"https://127.0.0.1:{api_port}"
        self._wait_ready()
        admin = self.kubeconfig(self.workdir / "admin.kubeconfig", self.admin_token)
        kcm = self.bin_dir / "kube-controller-manager"
        if kcm.exists():
            kcm_args: list[Any] = [
                kcm,
                f"--kubeconfig={admin}",
                f"--authentication-kubeconfig={admin}",
                f"--authorization-kubeconfig={admin}",
                "--controllers=job,garbagecollector,namespace,serviceaccount,serviceaccount-token",
                f"--service-account-private-key-file={self.certs['sa.key']}",
                f"--root-ca-file={self.certs['ca.crt']}",
                "--leader-elect=false",
                f"--secure-port={free_port()}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--v=1",
            ]
            if self.version < (1, 24):
                kcm_args.append("--port=0")
            self._spawn("kube-controller-manager", kcm_args)
            self.has_controller_manager = True

    def _spawn(self, name: str, args: list[Any]) -> None:
        log = (self.logs / f"{name}.log").open("w")
        self.procs[name] = subprocess.Popen(
            [str(a) for a in args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_ready(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited {p.returncode}:\n{self.tail(name)}")
            req = urllib.request.Request(
                f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready in {READY_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self, name: str = "kube-apiserver", n: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()

    def kubeconfig(self, path: Path, token: str, namespace: str = "default") -> Path:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {"server": self.url, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": "user", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {"cluster": "test", "user": "user", "namespace": namespace},
                        }
                    ],
                    "current-context": "test",
                }
            )
        )
        return path

    def kubectl(
        self, *args: str, token: str | None = None, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        kubeconfig = self.workdir / "admin.kubeconfig"
        if token is not None:
            kubeconfig = self.kubeconfig(self.workdir / f"kc-{token[:8]}", token)
        out = subprocess.run(
            [str(TOOLS_BIN / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}{out.stdout}")
        return out


@contextlib.contextmanager
def running_control_plane(workdir: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(workdir=workdir, bin_dir=binaries())
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


# --------------------------------------------------------------------------- an API client


class KubeApi(Api):
    """HTTPS to the real API server under one identity (a bearer token), as kubectl talks."""

    def __init__(self, cp: ControlPlane, token: str | None = None):
        self.cp = cp
        self.token = token or cp.admin_token
        super().__init__(
            cp.url,
            ssl=ssl.create_default_context(cafile=str(cp.ca_file)),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = await self.call(method, path, body, **kw)
        assert status < 300, f"{method} {path}: {status} {data}"
        return data

    async def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        data = await self.ok("GET", path, params=params or None)
        return list(data.get("items") or [])

    async def token_for(self, namespace: str, account: str, seconds: int = 7200) -> str:
        """A token of a ServiceAccount (TokenRequest): exactly that account's permissions."""
        data = await self.ok(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return data["status"]["token"]


# --------------------------------------------------------------------------- the stand-in node


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StandInNode:
    """Plays the kubelet for step pods (label ``app.kubernetes.io/component=step``).

    Each new pod's container runs as its spec says: the real command and args, env values,
    Secrets and field references resolved through the API, the artifact claim mapped to
    ``artifacts`` and emptyDirs to folders; the pod's status (Running, then Succeeded or Failed
    with the termination message) is written through the API. A pod deleted while it runs is
    stopped. ``decide(pod)`` may make a pod fail, hang pending or wait (see ``Outcome``).
    """

    api: KubeApi
    artifacts: Path
    scratch: Path
    decide: Callable[[dict[str, Any]], Outcome] = lambda pod: Outcome()
    in_process: bool = True
    started: list[str] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    _scheduled: dict[str, str] = field(default_factory=dict)  # pod name -> bound at
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _loop: asyncio.Task | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        tasks = [t for t in [self._loop, *self._tasks.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                pods = await self.api.items(
                    "/api/v1/pods", labelSelector="app.kubernetes.io/component=step"
                )
            except (aiohttp.ClientError, AssertionError) as exc:
                self.errors.append(f"list pods: {exc}")
                await asyncio.sleep(0.5)
                continue
            alive = set()
            for pod in pods:
                meta = pod["metadata"]
                uid = meta["uid"]
                alive.add(uid)
                phase = (pod.get("status") or {}).get("phase")
                if meta.get("deletionTimestamp"):
                    continue
                if uid not in self._tasks and phase not in ("Succeeded", "Failed"):
                    self._tasks[uid] = asyncio.create_task(self._run(pod))
            for uid, task in list(self._tasks.items()):
                if uid not in alive and not task.done():
                    task.cancel()  # the pod is gone (its Job was deleted): stop its container
            await asyncio.sleep(0.1)

    def _path(self, pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"

    async def _status(self, pod: dict[str, Any], phase: str, state: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        # As a scheduler would: the pod is bound once this kubelet first reports it.
        scheduled = self._scheduled.setdefault(pod["metadata"]["name"], _now())
        status = {
            "phase": phase,
            "startTime": (pod.get("status") or {}).get("startTime") or scheduled,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}
            ],
            "containerStatuses": [container_status(container, phase, state)],
        }
        code, data = await self.api.call("PATCH", self._path(pod), {"status": status})
        if code >= 300 and code != 404:
            self.errors.append(f"status of pod {pod['metadata']['name']}: {code} {data}")

    async def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """Env as the kubelet resolves it (raises KeyError naming what is missing)."""
        meta = pod["metadata"]
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            source = e.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                code, secret = await self.api.call(
                    "GET", f"/api/v1/namespaces/{meta['namespace']}/secrets/{ref['name']}"
                )
                data = (secret.get("data") or {}) if code == 200 else {}
                if ref["key"] not in data:
                    raise KeyError(f'secret "{ref["name"]}" key "{ref["key"]}" not found')
                env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                if path.startswith("metadata.annotations["):
                    key = path[len("metadata.annotations[") : -1].strip("'\"")
                    env[e["name"]] = (meta.get("annotations") or {}).get(key, "")
                else:
                    env[e["name"]] = str(meta.get(path.split(".", 1)[1], ""))
        return env

    async def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        outcome = self.decide(pod)
        container = pod["spec"]["containers"][0]
        if outcome.kind == "pending":
            state = {"waiting": {"reason": outcome.waiting_reason, "message": outcome.message}}
            await self._status(pod, "Pending", state)
            return
        try:
            env = await self._env(pod, container)
        except KeyError as exc:
            state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            await self._status(pod, "Pending", state)
            return
        started_at = _now()
        await self._status(pod, "Running", {"running": {"startedAt": started_at}})
        self.started.append(name)
        if outcome.kind == "hold":
            await outcome.release.wait()
        if outcome.kind == "fail":
            code, message = 1, json.dumps({"error": outcome.message or "simulated failure"})
        else:
            index = (pod["metadata"].get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index"
            )
            prepared = prepare_container(pod["spec"], name, self.artifacts, self.scratch)
            prepared.env.update({k: prepared.map(v) for k, v in env.items()})
            if index is not None:
                prepared.env.setdefault("JOB_COMPLETION_INDEX", index)
            async with self._lock:  # one step at a time: this machine has two cores
                code, log = await invoke(
                    container["command"], prepared.args, prepared.env, self.in_process
                )
            message = prepared.termination.read_text() if prepared.termination.exists() else ""
            if not message and code != 0:
                message = log[-2000:]  # terminationMessagePolicy: FallbackToLogsOnError
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "startedAt": started_at,
            "finishedAt": _now(),
        }
        await self._status(pod, "Succeeded" if code == 0 else "Failed", {"terminated": terminated})
        self.finished.append((name, code))
