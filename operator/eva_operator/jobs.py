"""Pure builders of the step Jobs: an EvaRun and a step in, a Job manifest (a dict) out.

Every step pod runs ``eva phase STEP`` on the run directory kept on the artifact claim;
it receives the spec in ``EVA_SPEC_YAML`` and writes its summary (JSON) as the
container's termination message, which the operator copies into the run's status.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from eva_runtime.api import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_ATTEMPT,
    LABEL_ITERATION,
    LABEL_RUN,
    LABEL_STEP,
)
from eva_runtime.spec import GENERATION_STEPS, PREPARE, EvaRun, StepResources, dump_run

LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
CONTAINER = "step"
TERMINATION_LOG = "/dev/termination-log"
METRICS_PORT = 9090
# The resources section that sizes each step's pods.
RESOURCES_OF = {
    "prepare": "prepare",
    "generate": "generate",
    "generate-evolved": "generate",
    "create": "create",
    "train": "train",
    "evaluate": "evaluate",
    "benchmark": "benchmark",
}
UID = 1000


@dataclass(frozen=True)
class StepDefaults:
    """What the operator's install decides for step pods; an EvaRun's own values win.

    Every field has the default a plain ``helm install`` gives (see the chart's values).
    """

    image: str = "ghcr.io/eva-platform/eva-runtime:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    claim_name: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    mlflow_tracking_uri: str | None = None
    pushgateway_url: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    # The PersistentVolumeClaim that holds hub models for every run (None: each artifact
    # claim keeps its own cache folder).
    model_cache_claim: str | None = None


NO_CLAIM = (
    "spec.storage.claimName: required in this cluster (the operator has no default artifact "
    "claim); name a PersistentVolumeClaim in the run's namespace, or install the operator "
    "with one (chart value artifacts.claimName or artifacts.pvc.create)"
)


def artifact_claim(run: EvaRun, defaults: StepDefaults) -> str | None:
    """The claim step pods mount: the run's own, else the install's default."""
    return run.spec.storage.claim_name or defaults.claim_name


# Where step pods keep hub models (HF_HOME) and converted GGUF models (EVA_CACHE_DIR): on the
# model-cache claim, mounted here, or, without one, in this folder of the artifact claim.
MODEL_CACHE_MOUNT = "/models"
ARTIFACT_CACHE_FOLDER = ".cache"


def model_cache_claim(run: EvaRun, defaults: StepDefaults) -> str | None:
    """The claim that holds hub models: the run's own, else the install's, else None (the
    artifact claim's cache folder)."""
    return run.spec.storage.model_cache_claim or defaults.model_cache_claim


def model_cache_root(run: EvaRun, defaults: StepDefaults) -> str:
    """The model cache's folder inside step pods, shared by every step (and every run on the
    same claim), so that each model is downloaded once."""
    if model_cache_claim(run, defaults):
        return MODEL_CACHE_MOUNT
    return f"{run.spec.storage.mount_path.rstrip('/')}/{ARTIFACT_CACHE_FOLDER}"


def job_name(run_name: str, iteration: int, step: str, attempt: int = 0) -> str:
    """``<run>-i<t>-<step>`` (``-r<k>`` for the k-th retry), hash-shortened past 63 characters."""
    suffix = f"-i{iteration}-{step}" + (f"-r{attempt}" if attempt else "")
    name = run_name + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
    keep = 63 - len(suffix) - len(digest) - 1
    return f"{run_name[:keep].rstrip('-')}-{digest}{suffix}"


def run_dir(run: EvaRun) -> str:
    """The run's folder inside step pods: ``<mountPath>/<namespace>/<name>``."""
    root = run.spec.storage.mount_path.rstrip("/") or ""
    return f"{root}/{run.namespace}/{run.name}"


def owner_reference(run_meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": run_meta["name"],
        "uid": run_meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_spec_manifest(run: EvaRun) -> str:
    """The manifest step pods receive: the spec only, with a bare metadata block."""
    bare = EvaRun.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": run.name, "namespace": run.namespace},
            "spec": run.spec.model_dump(by_alias=True, mode="json"),
        }
    )
    return dump_run(bare)


def _quantities(res: StepResources, gpu_resource: str) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if res.cpu:
        amounts["cpu"] = res.cpu
    if res.memory:
        amounts["memory"] = res.memory
    limits = dict(amounts)
    if res.gpus:
        limits[gpu_resource] = str(res.gpus)
    out: dict[str, Any] = {}
    if amounts:
        out["requests"] = amounts
    if limits:
        out["limits"] = limits
    return out


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def step_env(run: EvaRun, defaults: StepDefaults, step: str = "prepare") -> list[dict[str, Any]]:
    """Plain settings, then credentials, each credential only as a Secret reference.

    Hub models live on the shared model cache; only the prepare step, which downloads them
    (eva_runtime.hub), may reach the hub: every later step loads them with the hub offline.
    """
    s = run.spec
    models = model_cache_root(run, defaults)
    env: list[dict[str, Any]] = [
        {"name": "EVA_SPEC_YAML", "value": pod_spec_manifest(run)},
        {"name": "EVA_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": "HF_HOME", "value": f"{models}/huggingface"},
        {"name": "EVA_CACHE_DIR", "value": f"{models}/eva"},
        {"name": "TRITON_CACHE_DIR", "value": "/cache/triton"},
    ]
    if step != PREPARE:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    uri = s.tracking.mlflow.tracking_uri or defaults.mlflow_tracking_uri
    if uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": uri})
    if defaults.pushgateway_url:
        env.append({"name": "EVA_PUSHGATEWAY_URL", "value": defaults.pushgateway_url})
    creds = s.credentials
    for var, ref in (
        ("HF_TOKEN", creds.hub_token),
        ("MLFLOW_TRACKING_TOKEN", creds.mlflow_token),
        ("MLFLOW_TRACKING_USERNAME", creds.mlflow_username),
        ("MLFLOW_TRACKING_PASSWORD", creds.mlflow_password),
    ):
        if ref is not None:
            env.append(_secret_env(var, ref))
    seen: set[str] = set()
    for _, ep in s.endpoints():
        if ep.api_key_secret is None or ep.api_key_env in seen:
            continue
        seen.add(ep.api_key_env)  # type: ignore[arg-type]
        env.append(_secret_env(ep.api_key_env, ep.api_key_secret))  # type: ignore[arg-type]
    return env


def build_job(
    run: EvaRun,
    run_meta: dict[str, Any],
    iteration: int,
    step: str,
    attempt: int = 0,
    *,
    defaults: StepDefaults | None = None,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The Job for one step of one iteration (an Indexed Job for the generation steps)."""
    defaults = defaults or StepDefaults()
    spec = run.spec
    res = spec.resources
    name = job_name(run.name, iteration, step, attempt)
    labels = {
        "app.kubernetes.io/name": "eva",
        "app.kubernetes.io/component": "step",
        "app.kubernetes.io/managed-by": "eva-operator",
        LABEL_RUN: run.name,
        LABEL_ITERATION: str(iteration),
        LABEL_STEP: step,
        LABEL_ATTEMPT: str(attempt),
    }
    if res.queue_name:
        labels[LABEL_QUEUE] = res.queue_name
    claim = artifact_claim(run, defaults)
    if not claim:
        raise ValueError(NO_CLAIM)
    args = [
        "phase",
        step,
        "--run-dir",
        run_dir(run),
        "--iteration",
        str(iteration),
        "--termination-log",
        TERMINATION_LOG,
    ]
    shards = spec.generation.shards if step in GENERATION_STEPS else 1
    if step in GENERATION_STEPS:
        args += ["--num-shards", str(shards)]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": res.image or defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["eva"],
        "args": args,
        "env": step_env(run, defaults, step),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": _quantities(getattr(res, RESOURCES_OF[step]), defaults.gpu_resource),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "artifacts", "mountPath": spec.storage.mount_path},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    cache_claim = model_cache_claim(run, defaults)
    if cache_claim:
        container["volumeMounts"].append({"name": "models", "mountPath": MODEL_CACHE_MOUNT})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if cache_claim:
        pod_spec["volumes"].append(
            {"name": "models", "persistentVolumeClaim": {"claimName": cache_claim}}
        )
    account = res.service_account_name or defaults.service_account_name
    if account:
        pod_spec["serviceAccountName"] = account
    secrets = list(res.image_pull_secrets) or list(defaults.image_pull_secrets)
    if secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in secrets]
    node_selector = {**defaults.node_selector, **res.node_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    if tolerations or defaults.tolerations:
        pod_spec["tolerations"] = tolerations or [dict(t) for t in defaults.tolerations]
    affinity = res.affinity or defaults.affinity
    if affinity:
        pod_spec["affinity"] = affinity
    priority = res.priority_class_name or defaults.priority_class_name
    if priority:
        pod_spec["priorityClassName"] = priority
    job_spec: dict[str, Any] = {
        # The operator retries a failed step itself (runPolicy.backoffLimit), as a new Job.
        "backoffLimit": 0,
        "completions": shards,
        "parallelism": shards,
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {f"{GROUP}/metrics-port": str(METRICS_PORT)},
            },
            "spec": pod_spec,
        },
    }
    if step in GENERATION_STEPS:
        job_spec["completionMode"] = "Indexed"
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    if spec.run_policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": run.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(run_meta)],
        },
        "spec": job_spec,
    }
