"""A small asynchronous Kubernetes API client for the few calls the operator makes.

kopf watches; this client acts (create and delete Jobs, patch EvaRun status, post Events).
It speaks plain JSON over aiohttp with the credentials kopf logged in with, so the operator
needs no generated client models.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import kopf

from eva_operator import GROUP, PLURAL, VERSION


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: throttling or server trouble."""
        return self.status == 429 or self.status >= 500


def parse_version(info: dict[str, Any]) -> tuple[int, int]:
    """(major, minor) of a ``/version`` answer; minor may carry a suffix (``"20+"``)."""

    def number(value: Any) -> int:
        digits = "".join(ch for ch in str(value or "") if ch.isdigit())
        return int(digits) if digits else 0

    major, minor = number(info.get("major")), number(info.get("minor"))
    if not major:  # a build without version stamps: read gitVersion (v1.20.2)
        parts = str(info.get("gitVersion", "")).lstrip("v").split(".")
        major = number(parts[0]) if parts else 0
        minor = number(parts[1]) if len(parts) > 1 else 0
    return major, minor


def jobs_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{base}/{name}" if name else base


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def run_path(namespace: str, name: str, subresource: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return f"{base}/{subresource}" if subresource else base


class Kube:
    """One aiohttp session per operator; created from kopf's ConnectionInfo at login."""

    def __init__(self, info: kopf.ConnectionInfo | None = None, timeout: float = 30.0):
        self._info = info
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._version: tuple[int, int] | None = None

    @property
    def server(self) -> str:
        if self._info is None:
            raise KubeError(503, "NotLoggedIn", "the operator has not logged in yet")
        return self._info.server.rstrip("/")

    def set_connection(self, info: kopf.ConnectionInfo) -> None:
        """New credentials (kopf logs in again when they expire): the next call uses them."""
        self._info = info
        if self._session is not None:
            self._retired.append(self._session)  # closed at the next request (needs the loop)
        self._session = None

    async def _open(self) -> aiohttp.ClientSession:
        while self._retired:
            await self._retired.pop().close()
        if self._session is None or self._session.closed:
            info = self._info
            if info is None:
                raise KubeError(503, "NotLoggedIn", "the operator has not logged in yet")
            ssl: Any = info.as_ssl_context() if self.server.startswith("https") else False
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ssl=ssl),
                headers={"User-Agent": "eva-operator", **info.as_http_headers()},
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        for session in [*self._retired, self._session]:
            if session is not None:
                await session.close()
        self._retired.clear()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = await self._open()
        async with session.request(
            method,
            self.server + path,
            json=body,
            params=params,
            headers={"Content-Type": content_type},
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except (aiohttp.ContentTypeError, ValueError):
                data = {"message": await resp.text()}
            if resp.status >= 400:
                data = data if isinstance(data, dict) else {}
                raise KubeError(
                    resp.status, data.get("reason", resp.reason or ""), data.get("message", "")
                )
            return data if isinstance(data, dict) else {}

    async def create(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", collection, body)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def delete(self, path: str) -> None:
        """Delete in the background: dependents (a Job's pods) are collected by the cluster."""
        try:
            await self.request(
                "DELETE",
                path,
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def server_version(self) -> tuple[int, int]:
        """The API server's (major, minor) version, read once (``/version``)."""
        if self._version is None:
            self._version = parse_version(await with_retries(lambda: self.get("/version")))
        return self._version

    async def list(
        self,
        collection: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        data = await self.request("GET", collection, params=params or None)
        return list(data.get("items") or [])

    async def post_event(
        self,
        involved: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str = "eva-operator",
    ) -> None:
        """A core/v1 Event about ``involved`` (an object's apiVersion, kind and metadata)."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        name = f"{meta.get('name', 'evarun')}.{uuid.uuid4().hex[:16]}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.create(f"/api/v1/namespaces/{namespace}/events", body)


async def with_retries(coro_fn: Any, *, attempts: int = 5, delay: float = 0.5) -> Any:
    """Call ``coro_fn()`` again after transient API errors (throttling, 5xx, network)."""
    for i in range(attempts):
        try:
            return await coro_fn()
        except KubeError as exc:
            if not exc.transient or i == attempts - 1:
                raise
        except (TimeoutError, aiohttp.ClientError):
            if i == attempts - 1:
                raise
        await asyncio.sleep(delay * (2**i))
    return None
