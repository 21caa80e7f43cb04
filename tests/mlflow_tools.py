"""A real `mlflow server` (sqlite store) on 127.0.0.1 for the tests that talk to one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    artifacts: Path

    def wait_ready(self, timeout: float = 90.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self.url
            time.sleep(0.5)
        pytest.fail(f"mlflow server not ready in {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def posts(self) -> int:
        """Write requests the server has answered (its access log), to prove a no-op."""
        return sum('"POST /api/' in line for line in self.log.read_text().splitlines())


@contextlib.contextmanager
def launch_mlflow(root: Path) -> Iterator[Server]:
    """Start the server (call ``wait_ready`` before use); stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    log = root / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [
                *cmd,
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--default-artifact-root",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log, root / "artifacts")
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
