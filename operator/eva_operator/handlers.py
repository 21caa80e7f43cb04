"""kopf handlers: thin. Each one pokes the reconciler or answers admission; none decides.

Retries, back-off and Events are the operator's own, not kopf's (``TemporaryError``, handler
progress): every poke runs one coalesced, level-triggered reconciliation of the whole run
(``reconciler.py``) that reads the current state and plans from it, so there is no per-handler
attempt to retry and nothing kopf would need to remember between calls.

The handlers are registered into a fresh registry per operator (``registry(config)``), so
the admission handler exists only where a webhook server serves it, and the resync
interval comes from the configuration. ``eva-operator`` runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from eva_operator import GROUP, PLURAL, VERSION
from eva_operator.admission import review
from eva_operator.config import OperatorConfig
from eva_operator.kube import Kube, jobs_path
from eva_operator.metrics import OperatorMetrics
from eva_operator.reconciler import Reconciler
from eva_operator.webhook import WEBHOOK_ID, ManagedWebhookServer
from eva_runtime.api import LABEL_RUN, TERMINAL

log = logging.getLogger("eva_operator")


@dataclass
class OperatorState:
    """Shared by every handler: kopf gives each object a shallow copy of the global memo."""

    config: OperatorConfig
    metrics: OperatorMetrics
    reconciler: Reconciler


def _state(memo: Any) -> OperatorState:
    return memo.eva  # type: ignore[no-any-return]


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = getattr(memo, "config", None) or OperatorConfig.from_env()
    metrics = getattr(memo, "metrics", None) or OperatorMetrics()
    kube = Kube()
    memo.eva = OperatorState(
        config=cfg,
        metrics=metrics,
        reconciler=Reconciler(
            kube=kube,
            defaults=cfg.steps,
            metrics=metrics,
            mlflow_uri=cfg.steps.mlflow_tracking_uri,
        ),
    )
    # Our own status and Events only: kopf keeps its bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # Resources and namespaces are discovered once at start, not watched: the operator needs
    # no permission on namespaces or CRDs (least privilege, namespaced installs included).
    settings.scanning.disabled = True
    if cfg.webhook_mode == "insecure":
        settings.admission.server = kopf.WebhookServer(
            addr="127.0.0.1", port=cfg.webhook_port, insecure=True
        )
    elif cfg.webhook_mode == "cert-manager":
        cert = Path(cfg.webhook_cert_dir)
        settings.admission.server = kopf.WebhookServer(
            addr=cfg.bind_address,
            port=cfg.webhook_port,
            certfile=str(cert / "tls.crt"),
            pkeyfile=str(cert / "tls.key"),
        )
    elif cfg.webhook_mode == "self-managed":
        # The operator keeps its ValidatingWebhookConfiguration itself (not kopf's managed
        # mode, which needs a MutatingWebhookConfiguration too): see webhook.py.
        settings.admission.server = ManagedWebhookServer(
            kube=kube,
            configuration=cfg.webhook_configuration,
            addr=cfg.bind_address,
            port=cfg.webhook_port,
            service=cfg.webhook_service,
            namespace=cfg.webhook_namespace,
            url=cfg.webhook_url,
            failure_policy=cfg.webhook_failure_policy,
            timeout_seconds=cfg.webhook_timeout_seconds,
            namespaces=cfg.namespaces,
        )


async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig; the same credentials for our client."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        _state(memo).reconciler.kube.set_connection(info)
    return info


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    rec = _state(memo).reconciler
    await rec.close()
    await rec.kube.close()


def _reconciler(memo: Any, eva_jobs: kopf.Index, eva_pods: kopf.Index) -> Reconciler:
    rec = _state(memo).reconciler
    rec.jobs_of = lambda ns, name: eva_jobs.get((ns, name), ())
    rec.pods_of = lambda ns, name: eva_pods.get((ns, name), ())
    return rec


# --------------------------------------------------------------------------- indexes


def _slim(body: kopf.Body) -> dict[str, Any]:
    """What the plan reads of a Job or Pod (a snapshot, not kopf's live view)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "labels", "creationTimestamp", "deletionTimestamp")
        },
        "spec": {k: (body.get("spec") or {}).get(k) for k in ("completions", "suspend")},
        "status": dict(body.get("status") or {}),
    }


async def eva_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[LABEL_RUN]): _slim(body)}


async def eva_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[LABEL_RUN]): _slim(body)}


# --------------------------------------------------------------------------- pokes


async def run_event(
    type: str | None,
    name: str,
    namespace: str,
    memo: kopf.Memo,
    eva_jobs: kopf.Index,
    eva_pods: kopf.Index,
    **_: Any,
) -> None:
    rec = _reconciler(memo, eva_jobs, eva_pods)
    if type == "DELETED":
        rec.forget(namespace, name)
    else:
        rec.poke(namespace, name)


async def child_event(
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    eva_jobs: kopf.Index,
    eva_pods: kopf.Index,
    **_: Any,
) -> None:
    """A Job or Pod of a run changed: reconcile its run."""
    _reconciler(memo, eva_jobs, eva_pods).poke(namespace, labels[LABEL_RUN])


async def resync(
    name: str,
    namespace: str,
    memo: kopf.Memo,
    eva_jobs: kopf.Index,
    eva_pods: kopf.Index,
    **_: Any,
) -> None:
    """Safety net only: events drive the runs."""
    _reconciler(memo, eva_jobs, eva_pods).poke(namespace, name)


async def run_deleted(
    name: str,
    namespace: str,
    status: kopf.Status,
    memo: kopf.Memo,
    eva_jobs: kopf.Index,
    eva_pods: kopf.Index,
    body: kopf.Body,
    **_: Any,
) -> None:
    """Remove the run's Jobs now (owner references would, later) and end its MLflow run."""
    rec = _reconciler(memo, eva_jobs, eva_pods)
    rec.forget(namespace, name)
    for job in list(eva_jobs.get((namespace, name), ())):
        job_name = (job.get("metadata") or {}).get("name")
        if job_name:
            await rec.kube.delete(jobs_path(namespace, job_name))
    if status.get("phase") not in TERMINAL:
        await rec.end_tracking(dict(body), dict(status), "KILLED")


# --------------------------------------------------------------------------- admission


async def admit(
    operation: str,
    body: kopf.Body,
    old: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    cfg = _state(memo).config
    if not isinstance(body, Mapping):
        raise kopf.AdmissionError("invalid EvaRun: the object is not a JSON object", code=422)
    meta = body.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    if cfg.namespaces and namespace not in cfg.namespaces:
        return  # another install's run (servers before 1.21 cannot select by namespace)
    previous = dict(old) if isinstance(old, Mapping) and old else None
    problems = review(operation, dict(body), previous, cfg.steps)
    if problems:
        raise kopf.AdmissionError("invalid EvaRun:\n" + "\n".join(problems), code=422)


# --------------------------------------------------------------------------- registration


def _handler(fn: Callable[..., Any]) -> Any:
    """kopf's callback protocols name every keyword argument kopf may pass; these handlers
    take the few they use (and ``**_``), which kopf accepts at run time."""
    return fn


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL


def registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler, registered for one operator with this configuration."""
    reg = kopf.OperatorRegistry()
    jobs = ("batch", "v1", "jobs")
    pods = ("", "v1", "pods")
    ours = {LABEL_RUN: kopf.PRESENT}
    kopf.on.startup(registry=reg)(_handler(configure))
    kopf.on.login(registry=reg)(_handler(login))
    kopf.on.cleanup(registry=reg)(_handler(shutdown))
    kopf.index(*jobs, labels=ours, registry=reg)(_handler(eva_jobs))
    kopf.index(*pods, labels=ours, registry=reg)(_handler(eva_pods))
    kopf.on.event(GROUP, VERSION, PLURAL, registry=reg)(_handler(run_event))
    kopf.on.event(*jobs, labels=ours, id="job_event", registry=reg)(_handler(child_event))
    kopf.on.event(*pods, labels=ours, id="pod_event", registry=reg)(_handler(child_event))
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=config.resync_seconds,
        when=_unfinished,
        registry=reg,
    )(_handler(resync))
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=reg)(_handler(run_deleted))
    if config.webhook_mode != "off":
        # The id is the webhook's URL path (/admit): the chart's cert-manager mode names it.
        kopf.on.validate(
            GROUP, VERSION, PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"], registry=reg
        )(_handler(admit))
    return reg
