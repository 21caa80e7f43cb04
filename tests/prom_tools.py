"""Real Prometheus and Pushgateway processes for tests, and small clients for their HTTP APIs.

The binaries come from the Debian packages ``prometheus`` and ``prometheus-pushgateway``; the
tests run them as their own subprocesses (temporary config, storage and ports on 127.0.0.1)
and never touch the system services.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

PACKAGES = {"prometheus": "prometheus", "prometheus-pushgateway": "prometheus-pushgateway"}
READY_TIMEOUT_S = 30.0
T = TypeVar("T")


def find_binary(name: str) -> str:
    """The binary's path, or a failed test: a silent skip would hide that nothing was checked."""
    path = shutil.which(name) or f"/usr/bin/{name}"
    if os.access(path, os.X_OK):
        return path
    install = f"apt-get install -y {' '.join(PACKAGES.values())}"
    if os.environ.get("CI"):
        pytest.fail(
            f"{name} is not installed: on CI, .ci/run / `make test` must install the Debian "
            f"packages first ({install})",
            pytrace=False,
        )
    pytest.fail(
        f"{name} is not installed; the metrics tests need a real one. `make test` installs "
        f"it, or run: {install}",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def get_json(url: str, **params: str) -> Any:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    return json.loads(http_get(url))


def wait_until(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll until ``fn`` returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Server:
    """A launched binary: its base URL and its process (with the log, for failures)."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}",
                pytrace=False,
            )
        try:
            if urllib.request.urlopen(server.url + path, timeout=2).status == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{server.name} not ready after {READY_TIMEOUT_S:.0f}s:\n{server.log_tail()}")


@contextlib.contextmanager
def _launch(name: str, args: list[str], url: str, log: Path, ready: str) -> Iterator[Server]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name=name, url=url, proc=proc, log=log)
    try:
        _wait_ready(server, ready)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def launch_pushgateway(workdir: Path) -> Iterator[Server]:
    exe = find_binary("prometheus-pushgateway")
    port = free_port()
    args = [
        exe,
        f"--web.listen-address=127.0.0.1:{port}",
        # Debian's default persists to /var/lib; a test's gateway keeps its state to itself.
        f"--persistence.file={workdir / 'pushgateway.data'}",
        "--log.level=warn",
    ]
    with _launch(
        "pushgateway", args, f"http://127.0.0.1:{port}", workdir / "pushgateway.log", "/-/ready"
    ) as server:
        yield server


@contextlib.contextmanager
def launch_prometheus(workdir: Path, scrape: dict[str, tuple[str, bool]]) -> Iterator[Server]:
    """Prometheus scraping each ``job: (host:port, honor_labels)`` every second."""
    exe = find_binary("prometheus")
    port = free_port()
    jobs = [
        {
            "job_name": job,
            "honor_labels": honor,
            "static_configs": [{"targets": [target]}],
        }
        for job, (target, honor) in scrape.items()
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    args = [
        exe,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with _launch(
        "prometheus", args, f"http://127.0.0.1:{port}", workdir / "prometheus.log", "/-/ready"
    ) as server:
        yield server


def wait_scraping(prometheus: Server, jobs: set[str], timeout: float = 15.0) -> None:
    """Wait until every job's target has been scraped once (up or not).

    Prometheus applies discovered targets on a reload tick of several seconds, so right after
    /-/ready nothing is scraped yet; a test that starts then would race that tick.
    """

    def scraped() -> bool:
        body = get_json(f"{prometheus.url}/api/v1/targets", state="active")
        seen = {
            t["labels"].get("job")
            for t in body["data"]["activeTargets"]
            if t.get("health") in ("up", "down")
        }
        return jobs <= seen

    wait_until(scraped, timeout, f"Prometheus to scrape {sorted(jobs)}")


def query(prometheus: Server, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector (``metric`` labels, ``value`` [time, "string"])."""
    body = get_json(f"{prometheus.url}/api/v1/query", query=promql)
    assert body["status"] == "success", body
    return body["data"]["result"]


def series(prometheus: Server, match: str) -> list[dict[str, str]]:
    """The label sets of every series matching ``match``."""
    body = get_json(f"{prometheus.url}/api/v1/series", **{"match[]": match})
    assert body["status"] == "success", body
    return body["data"]


def pushgateway_groups(gateway: Server) -> list[dict[str, Any]]:
    """The Pushgateway's groups: each has ``labels`` (the grouping key) and its metric families."""
    body = get_json(f"{gateway.url}/api/v1/metrics")
    assert body["status"] == "success", body
    return body["data"] or []
