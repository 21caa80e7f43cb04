"""The chart's monitoring files: Prometheus alerts (checked and unit-tested by promtool) and
Grafana dashboards (well-formed, portable, valid PromQL over metrics that exist).

The dashboards' and alerts' queries run against a real Prometheus fed by a real EvaRun in
tests/operator/test_operator_dashboards.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from prom_tools import find_binary

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "eva-operator" / "files"
ALERTS = FILES / "alerts.yaml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
DASHBOARDS = FILES / "dashboards"
SEVERITIES = {"critical", "warning", "info"}
# What Grafana puts in a query, filled as a dashboard opened on a run would fill it.
VARIABLES = {
    "namespace": "default",
    "run": "tiny",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("promtool"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels") or [])  # a collapsed row holds its panels

    yield from walk(doc.get("panels") or [])


def queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every query of every panel."""
    for name, doc in dashboards().items():
        for panel in panels(doc):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield name, panel.get("title", "?"), target["expr"]


def substitute(expr: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in VARIABLES, f"unknown dashboard variable ${name} in {expr!r}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def exported_metrics() -> set[str]:
    """Every series name the steps and the operator can expose, from their own registries."""
    from eva_operator.metrics import OperatorMetrics
    from eva_runtime.metrics import StepMetrics

    names = {"up"}
    step = StepMetrics(run="r", namespace="n", iteration=0, step="generate")
    for registry in (step.registry, OperatorMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names |= {f"{family.name}{s}" for s in ("_bucket", "_count", "_sum")}
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The eva_* / up series an expression reads (PromQL functions are not such names)."""
    return set(re.findall(r"\b(eva_[a-z0-9_]+|up)\b(?=\s*[{\[)\s]|$)", expr))


# --------------------------------------------------------------------------- alerts


def test_promtool_checks_the_alert_rules() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = promtool("test", "rules", str(ALERTS_TEST))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    rule_files = {(ALERTS_TEST.parent / f).resolve() for f in doc["rule_files"]}
    assert rule_files == {ALERTS.resolve()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test") or []:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names >= {
        "EvaRunFailed",
        "EvaStepRunningLong",
        "EvaJobRetries",
        "EvaHeldOutRewardDropped",
        "EvaOperatorDown",
        "EvaReconcileErrors",
    }
    assert not names - firing, f"alerts without a firing test case: {sorted(names - firing)}"
    assert not names - quiet, f"alerts without a not-firing test case: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests of unknown alerts: {(firing | quiet) - names}"


def test_alerts_are_labelled_annotated_and_read_real_metrics() -> None:
    known = exported_metrics()
    doc = yaml.safe_load(ALERTS.read_text())
    assert [g["name"] for g in doc["groups"]] == ["eva"]
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations") or {}
        assert annotations.get("summary") and annotations.get("description"), name
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{name} reads metrics nobody exports: {sorted(unknown)}"
        # Alerts about one run name it the same way everywhere.
        if "by (namespace, run" in rule["expr"]:
            for text in annotations.values():
                assert "{{ $labels.namespace }}/{{ $labels.run }}" in text, (name, text)


# --------------------------------------------------------------------------- dashboards


def test_the_dashboards_are_portable_grafana_json() -> None:
    docs = dashboards()
    assert set(docs) == {"eva-overview.json", "eva-run.json"}
    uids = [d["uid"] for d in docs.values()]
    assert uids == ["eva-overview", "eva-run"] and all(len(u) <= 40 for u in uids)
    for name, doc in docs.items():
        assert 36 <= doc["schemaVersion"] <= 41, name
        assert doc["title"] and doc.get("id") is None, name
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        ds = variables["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus"), name
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ids = [p["id"] for p in panels(doc)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(doc):
            if panel["type"] == "row":
                continue
            where = f"{name} / {panel.get('title')!r}"
            assert panel.get("targets"), f"{where}: no query"
            # Only the variable: no data source uid of some Grafana baked in.
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
    run_vars = {v["name"] for v in docs["eva-run.json"]["templating"]["list"]}
    assert {"namespace", "run"} <= run_vars
    # Every per-run query of the run dashboard is filtered to the chosen run.
    for panel in panels(docs["eva-run.json"]):
        for target in panel.get("targets") or []:
            expr = target["expr"]
            if re.search(r"eva_(operator_run_|step_|prompts|train_|generated|evolve)", expr):
                for selector in re.findall(r"\beva_\w+\{([^}]*)\}", expr):
                    if "operator_jobs" not in selector:
                        assert 'namespace="$namespace"' in selector and 'run="$run"' in selector
                for bare in re.findall(
                    r"\b(eva_(?:operator_run_\w+|step_\w+|prompts\w*|train_\w+|generated\w+|"
                    r"evolve\w+))\b(?!\{)",
                    expr,
                ):
                    pytest.fail(f"eva-run.json / {panel['title']!r}: {bare} not filtered by run")


def test_every_dashboard_query_reads_exported_metrics() -> None:
    known = exported_metrics()
    problems = []
    for dashboard, title, expr in queries():
        names = metric_names(expr)
        if not names:
            problems.append(f"{dashboard} / {title!r}: reads no metric: {expr!r}")
        if names - known:
            problems.append(f"{dashboard} / {title!r}: unknown {sorted(names - known)}")
    assert not problems, "\n".join(problems)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables filled in) as a recording rule; the same queries
    run on a real Prometheus in tests/operator/test_operator_dashboards.py."""
    found = list(queries())
    assert len(found) >= 20

    def check(items: list[tuple[str, str, str]], path: Path) -> subprocess.CompletedProcess[str]:
        rules = [
            {"record": f"eva:dashboard_query:{i}", "expr": substitute(expr)}
            for i, (_d, _t, expr) in enumerate(items)
        ]
        path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
        return promtool("check", "rules", str(path))

    if check(found, tmp_path / "all.yaml").returncode == 0:
        return
    bad = []  # one at a time, to name the culprits
    for i, item in enumerate(found):
        out = check([item], tmp_path / f"q{i}.yaml")
        if out.returncode != 0:
            bad.append(f"{item[0]} / {item[1]!r}: {item[2]!r}\n{out.stdout}{out.stderr}")
    pytest.fail("invalid PromQL in the dashboards:\n" + "\n".join(bad))
