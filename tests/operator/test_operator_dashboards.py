"""The chart's Grafana dashboards and alerts against a real Prometheus, fed by a real run.

KMock's API, the harness's Job controller and the `eva-operator` process run one EvaRun (the
creator on, one simulated train failure, an arena-hard benchmark judged by a local stub
server) to Succeeded; every step pushes its metrics to a real
Pushgateway (`EVA_PUSHGATEWAY_URL`, a step default of the operator), and a real Prometheus
scrapes the operator's /metrics and the gateway every second. Then every query of every panel
of both dashboards must be valid PromQL that returns data, and the alert expressions must be
valid and say what happened (a Job failed; nothing else is wrong).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eva_runtime.api import LABEL_SWEEP, LABEL_SWEEP_CELL
from judge_stub import always, judge_stub
from operator_harness import Outcome, wait_for
from prom_tools import Server, free_port, launch_prometheus, launch_pushgateway, wait_scraping

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "manifests" / "examples" / "data" / "bench"
FILES = ROOT / "charts" / "eva-operator" / "files"
RUN = "dash"
SWEEP = "dash-sweep"  # the run carries eva sweep's labels: the sweep variable offers it
VARIABLES = {
    "namespace": "default",
    "run": RUN,
    "sweep": SWEEP,
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every target of every panel."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])  # rows hold their collapsed panels

    for path in sorted((FILES / "dashboards").glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in walk(doc.get("panels") or []):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield path.name, panel.get("title", "?"), target["expr"]


def substitute(expr: str) -> str:
    """Grafana's variables as a dashboard opened on this run would fill them."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def instant(prometheus: Server, promql: str) -> dict[str, Any]:
    """/api/v1/query's whole answer; an invalid query's 400 answer is returned too."""
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}") | {"http_status": exc.code}


def variable_queries() -> Iterator[tuple[str, str, str, str]]:
    """(dashboard, variable, selector, label) of every `label_values(selector, label)`."""
    for path in sorted((FILES / "dashboards").glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
                assert m, f"{path.name}: variable {var['name']}: {query!r}"
                yield path.name, var["name"], m.group(1), m.group(2)


def label_values(prometheus: Server, selector: str, label: str) -> list[str]:
    """What Grafana's label_values(selector, label) asks Prometheus for."""
    query = urllib.parse.urlencode({"match[]": selector})
    with urllib.request.urlopen(
        f"{prometheus.url}/api/v1/label/{label}/values?{query}", timeout=10
    ) as resp:
        return json.loads(resp.read())["data"]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


async def test_every_dashboard_query_and_alert_works_on_a_real_run(env, rules) -> None:
    queries = list(dashboard_queries())
    assert {d for d, _t, _e in queries} == {"eva-overview.json", "eva-run.json"}
    alerts = {
        r["alert"]: r["expr"]
        for g in yaml.safe_load((FILES / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    exe = shutil.which("eva-operator") or str(Path(sys.executable).with_name("eva-operator"))
    metrics_port, health_port = free_port(), free_port()

    with launch_pushgateway(env.tmp) as gateway, judge_stub(always("[[B>A]]")) as judge:
        targets = {
            # The ServiceMonitor's job is named after the operator's Service; honorLabels keeps
            # the runs' own `namespace` label.
            "eva-operator": (f"127.0.0.1:{metrics_port}", True),
            "pushgateway": (gateway.url.removeprefix("http://"), True),
        }
        with launch_prometheus(env.tmp, targets) as prometheus:
            log = (env.tmp / "operator.log").open("w")
            args = ["--namespace", "default", "--metrics-port", str(metrics_port)]
            args += ["--health-port", str(health_port)]
            proc = subprocess.Popen(
                [exe, *args],
                env={
                    **os.environ,
                    "KUBECONFIG": str(env.kubeconfig),
                    "EVA_ARTIFACT_CLAIM": "pvc",
                    "EVA_PUSHGATEWAY_URL": gateway.url,  # every step Job gets it
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                await wait_for(lambda: _healthy(health_port), 30, "the operator's /healthz", 0.2)
                await asyncio.to_thread(wait_scraping, prometheus, set(targets))
                env.controller.in_process = True
                env.controller.decide = rules(
                    {("train", 0): Outcome("fail", "CUDA error: out of memory")}
                )
                benchmark = {
                    "suite": "arena-hard",
                    "questions": str(BENCH / "arena-hard-questions.jsonl"),
                    "answers": str(BENCH / "arena-hard-baseline.jsonl"),
                    "judge": {"endpoint": {"baseUrl": judge.url, "model": "stub"}},
                    "limit": 2,
                    "maxNewTokens": 8,
                }
                manifest = env.manifest(RUN, evaluation={"benchmarks": [benchmark]})
                manifest["metadata"]["labels"] = {LABEL_SWEEP: SWEEP, LABEL_SWEEP_CELL: "c0ffee00"}
                await env.api.apply_run(manifest)
                status = await env.wait_phase(RUN, ("Succeeded", "Failed"), 150)
                assert status["phase"] == "Succeeded", status.get("message")

                # Prometheus has seen the end: the phase, and the last step's push.
                def seen_end() -> bool:
                    done = instant(
                        prometheus,
                        f'eva_operator_run_phase{{run="{RUN}",phase="Succeeded"}} == 1',
                    )
                    pushed = instant(prometheus, f'eva_step_status{{run="{RUN}",step="benchmark"}}')
                    return bool(done["data"]["result"] and pushed["data"]["result"])

                for _ in range(100):
                    if await asyncio.to_thread(seen_end):
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("Prometheus never saw the run succeed and benchmark push")

                problems = []
                for dashboard, title, expr in queries:
                    promql = substitute(expr)
                    body = await asyncio.to_thread(instant, prometheus, promql)
                    if body.get("status") != "success":
                        problems.append(
                            f"{dashboard} / {title!r}: invalid PromQL {promql!r}: "
                            f"{body.get('error', body)}"
                        )
                    elif not body["data"]["result"]:
                        problems.append(f"{dashboard} / {title!r}: no data for {promql!r}")
                assert not problems, "dashboard queries that fail:\n" + "\n".join(problems)

                # The run dashboard's variables offer this run.
                for dashboard, name, selector, label in variable_queries():
                    values = await asyncio.to_thread(
                        label_values, prometheus, substitute(selector), label
                    )
                    assert VARIABLES[name] in values, (dashboard, name, selector, values)

                answers = {}
                for name, expr in alerts.items():
                    body = await asyncio.to_thread(instant, prometheus, expr)
                    assert body.get("status") == "success", (name, expr, body)
                    answers[name] = body["data"]["result"]
                # The simulated out-of-memory train Job, a counter born at 1.
                assert [
                    (a["metric"]["step"], a["metric"]["reason"]) for a in answers["EvaJobRetries"]
                ] == [("train", "BackoffLimitExceeded")], answers["EvaJobRetries"]
                for quiet in ("EvaRunFailed", "EvaOperatorDown", "EvaStepRunningLong"):
                    assert answers[quiet] == [], (quiet, answers[quiet])
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 20)
                log.close()
