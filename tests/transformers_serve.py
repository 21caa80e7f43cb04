"""A real OpenAI-compatible server for the tests: ``transformers serve`` on a tiny model.

The server is a subprocess on 127.0.0.1 and a free port, pinned to one model folder
(``transformers serve <folder>``, so a request names the model by that same path). It ignores
``n`` (one choice per response), which exercises the openai backend's one-request-per-sample
fallback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _transformers_cli() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if script.exists():
        return [str(script)]
    found = shutil.which("transformers")
    if found:
        return [found]
    return [sys.executable, "-m", "transformers.cli.transformers"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and json.load(response).get("status") == "ok"
    except (OSError, urllib.error.URLError, ValueError):
        return False


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/v1``) of a server of ``folder``; killed after.

    The server samples only when the model's generation config says so (as most chat
    checkpoints' configs do), so ``do_sample`` is set there; otherwise every request would
    be greedy.
    """
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["do_sample"] = True
    config_file.write_text(json.dumps(config))

    port = free_port()
    command = [
        *_transformers_cli(),
        "serve",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    log_path = folder.parent / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None:
                pytest.fail(
                    f"`{' '.join(command)}` exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`{' '.join(command)}` not healthy after {STARTUP_TIMEOUT_S}s:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
