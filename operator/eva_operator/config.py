"""Operator settings: every knob, its environment variable and its default, in one place.

The chart sets these through the Deployment's environment; ``eva-operator --help`` lists the
flags that override them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eva_operator.jobs import StepDefaults


class _Env:
    """Typed reads of the environment, each bad value named with its variable."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def opt(self, name: str) -> str | None:
        return self.environ.get(name, "").strip() or None

    def list(self, name: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.environ.get(name, "").split(",") if x.strip())

    def json(self, name: str, default: Any) -> Any:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}: not valid JSON ({exc})") from None

    def int(self, name: str, default: int, low: int = 0, high: int = 65535) -> int:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r}: not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"environment variable {name}={value}: must be in {low}..{high}")
        return value

    def positive(self, name: str, default: float) -> float:
        raw = self.opt(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: not a number") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"{name}={raw!r}: must be positive")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.opt(name) or default
        match = next((c for c in choices if c.lower() == value.lower()), None)
        if match is None:
            raise ValueError(f"{name}={value!r}: one of {', '.join(choices)}")
        return match


WEBHOOK_MODES = ("off", "cert-manager", "self-managed", "insecure")
FAILURE_POLICIES = ("Ignore", "Fail")


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
    #   EVA_STEP_SERVICE_ACCOUNT, EVA_ARTIFACT_CLAIM, EVA_MODEL_CACHE_CLAIM,
    #   EVA_STEP_NODE_SELECTOR (JSON),
    #   EVA_STEP_TOLERATIONS (JSON list), EVA_STEP_AFFINITY (JSON), EVA_STEP_PRIORITY_CLASS,
    #   EVA_MLFLOW_TRACKING_URI,
    #   EVA_PUSHGATEWAY_URL, EVA_GPU_RESOURCE (nvidia.com/gpu)
    steps: StepDefaults = field(default_factory=StepDefaults)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """The settings from ``environ`` (default: the process environment); unset or empty
        variables keep the defaults above."""
        e = _Env(os.environ if environ is None else environ)
        d = StepDefaults()
        steps = StepDefaults(
            image=e.opt("EVA_STEP_IMAGE") or d.image,
            image_pull_policy=e.opt("EVA_STEP_IMAGE_PULL_POLICY") or d.image_pull_policy,
            image_pull_secrets=e.list("EVA_STEP_IMAGE_PULL_SECRETS"),
            service_account_name=e.opt("EVA_STEP_SERVICE_ACCOUNT"),
            claim_name=e.opt("EVA_ARTIFACT_CLAIM"),
            model_cache_claim=e.opt("EVA_MODEL_CACHE_CLAIM"),
            node_selector=e.json("EVA_STEP_NODE_SELECTOR", {}),
            tolerations=tuple(e.json("EVA_STEP_TOLERATIONS", [])),
            affinity=e.json("EVA_STEP_AFFINITY", None),
            priority_class_name=e.opt("EVA_STEP_PRIORITY_CLASS"),
            mlflow_tracking_uri=e.opt("EVA_MLFLOW_TRACKING_URI"),
            pushgateway_url=e.opt("EVA_PUSHGATEWAY_URL"),
            gpu_resource=e.opt("EVA_GPU_RESOURCE") or d.gpu_resource,
        )
        url = e.opt("EVA_WEBHOOK_URL")
        if url is not None and not url.startswith("https://"):
            raise ValueError(f"EVA_WEBHOOK_URL={url!r}: must be an https:// URL")
        return cls(
            namespaces=e.list("EVA_WATCH_NAMESPACES"),
            bind_address=e.opt("EVA_OPERATOR_BIND_ADDRESS") or cls.bind_address,
            metrics_port=e.int("EVA_OPERATOR_METRICS_PORT", cls.metrics_port),
            health_port=e.int("EVA_OPERATOR_HEALTH_PORT", cls.health_port),
            resync_seconds=e.positive("EVA_OPERATOR_RESYNC_SECONDS", cls.resync_seconds),
            webhook_mode=e.choice("EVA_WEBHOOK_MODE", cls.webhook_mode, WEBHOOK_MODES),
            webhook_port=e.int("EVA_WEBHOOK_PORT", cls.webhook_port, low=1),
            webhook_cert_dir=e.opt("EVA_WEBHOOK_CERT_DIR") or cls.webhook_cert_dir,
            webhook_service=e.opt("EVA_WEBHOOK_SERVICE") or cls.webhook_service,
            webhook_namespace=(
                e.opt("EVA_WEBHOOK_NAMESPACE") or e.opt("POD_NAMESPACE") or cls.webhook_namespace
            ),
            webhook_configuration=e.opt("EVA_WEBHOOK_CONFIGURATION") or cls.webhook_configuration,
            webhook_url=url,
            webhook_failure_policy=e.choice(
                "EVA_WEBHOOK_FAILURE_POLICY", cls.webhook_failure_policy, FAILURE_POLICIES
            ),
            webhook_timeout_seconds=e.int(
                "EVA_WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds, low=1, high=30
            ),
            steps=steps,
        )
