"""`eva-operator` as its own process: flags, /metrics, /healthz, and a first Job."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from operator_harness import JOBS, Outcome, created_names, wait_for
from prom_tools import free_port

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.asyncio
async def test_the_operator_process_serves_metrics_and_health_and_starts_runs(env) -> None:
    metrics, health = free_port(), free_port()
    exe = shutil.which("eva-operator") or str(Path(sys.executable).with_name("eva-operator"))
    log = (env.tmp / "operator.log").open("w")
    proc = subprocess.Popen(
        [
            exe,
            "--namespace",
            "default",  # a namespaced install: no access to namespaces or CRDs needed
            "--metrics-port",
            str(metrics),
            "--health-port",
            str(health),
        ],
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig), "EVA_ARTIFACT_CLAIM": "pvc"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await wait_for(
            lambda: _get(f"http://127.0.0.1:{health}/healthz")[0] == 200, 30, "/healthz", 0.2
        )
        env.controller.decide = lambda job: Outcome("hold")
        await env.api.apply_run(env.manifest(creator=False))
        await wait_for(lambda: "tiny-i0-prepare" in created_names(env.cluster, JOBS), 30, "Job")

        def scraped() -> str:
            _code, text = _get(f"http://127.0.0.1:{metrics}/metrics")
            return text if 'eva_operator_runs{phase="Running"} 1.0' in text else ""

        text = await wait_for(scraped, 30, "the Running run in /metrics", 0.2)
        assert 'eva_operator_jobs_created_total{step="prepare"} 1.0' in text
        assert "eva_operator_reconcile_duration_seconds_count" in text
        assert 'eva_operator_run_iteration{namespace="default",run="tiny"} 0.0' in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
        log.close()
    assert proc.returncode == 0, (env.tmp / "operator.log").read_text()[-3000:]


def test_a_bad_setting_is_named_and_exits_2() -> None:
    exe = shutil.which("eva-operator") or str(Path(sys.executable).with_name("eva-operator"))
    out = subprocess.run(
        [exe], env={**os.environ, "EVA_WEBHOOK_MODE": "maybe"}, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "EVA_WEBHOOK_MODE='maybe'" in out.stderr
