"""Operator settings: every knob, its environment variable and its default, in one place.

The chart sets these through the Deployment's environment; ``eva-operator --help`` lists the
flags that override them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from eva_operator.jobs import StepDefaults


def _json(name: str, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}: not valid JSON ({exc})") from None


def _list(name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


def _opt(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _int(name: str, default: int, low: int = 0, high: int = 65535) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"environment variable {name}={value}: must be in {low}..{high}")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces to watch; empty = the whole cluster.        EVA_WATCH_NAMESPACES (a,b)
    namespaces: tuple[str, ...] = ()
    # Address the metrics, health and webhook servers listen on.
    #                                                         EVA_OPERATOR_BIND_ADDRESS
    bind_address: str = "0.0.0.0"
    # Port of /metrics.                                       EVA_OPERATOR_METRICS_PORT
    metrics_port: int = 8080
    # Port of the liveness endpoint /healthz (0: off).       EVA_OPERATOR_HEALTH_PORT
    health_port: int = 8081
    # Safety-net resync of every unfinished run, seconds.     EVA_OPERATOR_RESYNC_SECONDS
    resync_seconds: float = 60.0
    # Admission webhook: off | cert-manager | self-managed | insecure (plain HTTP, tests).
    #                                                         EVA_WEBHOOK_MODE
    webhook_mode: str = "off"
    # Port the webhook server listens on.                     EVA_WEBHOOK_PORT
    webhook_port: int = 9443
    # cert-manager mode: folder with tls.crt and tls.key.     EVA_WEBHOOK_CERT_DIR
    webhook_cert_dir: str = "/certs"
    # self-managed mode: the Service (name, namespace; port 443) that the API server calls,
    # and the ValidatingWebhookConfiguration the operator keeps up to date (with its own CA).
    #            EVA_WEBHOOK_SERVICE, EVA_WEBHOOK_NAMESPACE (default: POD_NAMESPACE),
    #            EVA_WEBHOOK_CONFIGURATION
    webhook_service: str = "eva-operator-webhook"
    webhook_namespace: str = "default"
    webhook_configuration: str = "eva-operator.eva.dev"
    # self-managed mode: advertise this https URL instead of the Service (an operator that
    # runs outside the cluster; its certificate names the URL's host).  EVA_WEBHOOK_URL
    webhook_url: str | None = None
    # What the API server does when the webhook cannot be reached: Ignore (admit; the
    # operator still fails an invalid run with InvalidSpec) or Fail (refuse every EvaRun
    # write while the operator is down).                    EVA_WEBHOOK_FAILURE_POLICY
    webhook_failure_policy: str = "Ignore"
    # Seconds the API server waits for the webhook (1-30).  EVA_WEBHOOK_TIMEOUT_SECONDS
    webhook_timeout_seconds: int = 10
    # Defaults for step pods (an EvaRun's own values win):
    #   EVA_STEP_IMAGE, EVA_STEP_IMAGE_PULL_POLICY, EVA_STEP_IMAGE_PULL_SECRETS (a,b),
    #   EVA_STEP_SERVICE_ACCOUNT, EVA_ARTIFACT_CLAIM, EVA_STEP_NODE_SELECTOR (JSON),
    #   EVA_STEP_TOLERATIONS (JSON list), EVA_STEP_AFFINITY (JSON), EVA_STEP_PRIORITY_CLASS,
    #   EVA_MLFLOW_TRACKING_URI,
    #   EVA_PUSHGATEWAY_URL, EVA_GPU_RESOURCE (nvidia.com/gpu)
    steps: StepDefaults = field(default_factory=StepDefaults)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        d = StepDefaults()
        steps = StepDefaults(
            image=_opt("EVA_STEP_IMAGE") or d.image,
            image_pull_policy=_opt("EVA_STEP_IMAGE_PULL_POLICY") or d.image_pull_policy,
            image_pull_secrets=_list("EVA_STEP_IMAGE_PULL_SECRETS"),
            service_account_name=_opt("EVA_STEP_SERVICE_ACCOUNT"),
            claim_name=_opt("EVA_ARTIFACT_CLAIM"),
            node_selector=_json("EVA_STEP_NODE_SELECTOR", {}),
            tolerations=tuple(_json("EVA_STEP_TOLERATIONS", [])),
            affinity=_json("EVA_STEP_AFFINITY", None),
            priority_class_name=_opt("EVA_STEP_PRIORITY_CLASS"),
            mlflow_tracking_uri=_opt("EVA_MLFLOW_TRACKING_URI"),
            pushgateway_url=_opt("EVA_PUSHGATEWAY_URL"),
            gpu_resource=_opt("EVA_GPU_RESOURCE") or d.gpu_resource,
        )
        mode = (_opt("EVA_WEBHOOK_MODE") or "off").lower()
        if mode not in ("off", "cert-manager", "self-managed", "insecure"):
            raise ValueError(
                f"EVA_WEBHOOK_MODE={mode!r}: one of off, cert-manager, self-managed, insecure"
            )
        policy = (_opt("EVA_WEBHOOK_FAILURE_POLICY") or "Ignore").capitalize()
        if policy not in ("Ignore", "Fail"):
            raise ValueError(f"EVA_WEBHOOK_FAILURE_POLICY={policy!r}: one of Ignore, Fail")
        url = _opt("EVA_WEBHOOK_URL")
        if url is not None and not url.startswith("https://"):
            raise ValueError(f"EVA_WEBHOOK_URL={url!r}: must be an https:// URL")
        resync = os.environ.get("EVA_OPERATOR_RESYNC_SECONDS", "").strip() or "60"
        try:
            resync_seconds = float(resync)
        except ValueError:
            raise ValueError(f"EVA_OPERATOR_RESYNC_SECONDS={resync!r}: not a number") from None
        if not 0 < resync_seconds < float("inf"):
            raise ValueError(f"EVA_OPERATOR_RESYNC_SECONDS={resync!r}: must be positive")
        return cls(
            namespaces=_list("EVA_WATCH_NAMESPACES"),
            bind_address=_opt("EVA_OPERATOR_BIND_ADDRESS") or "0.0.0.0",
            metrics_port=_int("EVA_OPERATOR_METRICS_PORT", 8080),
            health_port=_int("EVA_OPERATOR_HEALTH_PORT", 8081),
            resync_seconds=resync_seconds,
            webhook_mode=mode,
            webhook_port=_int("EVA_WEBHOOK_PORT", 9443, low=1),
            webhook_cert_dir=os.environ.get("EVA_WEBHOOK_CERT_DIR", "/certs"),
            webhook_service=_opt("EVA_WEBHOOK_SERVICE") or "eva-operator-webhook",
            webhook_namespace=_opt("EVA_WEBHOOK_NAMESPACE") or _opt("POD_NAMESPACE") or "default",
            webhook_configuration=_opt("EVA_WEBHOOK_CONFIGURATION") or "eva-operator.eva.dev",
            webhook_url=url,
            webhook_failure_policy=policy,
            webhook_timeout_seconds=_int("EVA_WEBHOOK_TIMEOUT_SECONDS", 10, low=1, high=30),
            steps=steps,
        )
