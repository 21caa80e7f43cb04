"""The admission webhook server of the self-managed mode, and the configuration it keeps.

The operator serves ``/admit`` over TLS with a self-signed certificate (made with
``cryptography``: kopf's default builder needs oscrypto, which cannot read OpenSSL 3's version
string) and keeps one ValidatingWebhookConfiguration pointing at itself, with that
certificate's CA bundle, its failure policy and, for a namespaced install, its namespaces. It
manages the configuration itself rather than through kopf's managed mode, which also keeps a
MutatingWebhookConfiguration (an object with no webhooks, and RBAC the chart would grant only
for it) and exits the operator when it may not.

The API server reaches an in-cluster operator through its Service; an operator that runs
elsewhere (a development machine, the tests) advertises a URL instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Collection
from typing import Any

import kopf

from eva_operator import GROUP, PLURAL, VERSION
from eva_operator.kube import Kube, KubeError, with_retries

log = logging.getLogger("eva_operator")

WEBHOOK_ID = "admit"  # the handler id, and so the URL path kopf routes to it
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
# The namespace label the API server sets on every namespace from Kubernetes 1.21.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def webhook_configuration(
    name: str,
    client_config: dict[str, Any],
    *,
    failure_policy: str = "Ignore",
    timeout_seconds: int = 10,
    namespaces: Collection[str] = (),
    namespace_labels: bool = True,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for EvaRun creates and updates.

    ``namespaces`` (a namespaced install) limits it to those namespaces where the server
    labels namespaces with their names (``namespace_labels``, 1.21+); on older servers the
    handler admits what it does not watch instead.
    """
    hook: dict[str, Any] = {
        "name": f"{WEBHOOK_ID}.{name}",
        "admissionReviewVersions": ["v1", "v1beta1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout_seconds,
        "clientConfig": client_config,
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "resources": [PLURAL],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
    }
    if namespaces and namespace_labels:
        hook["namespaceSelector"] = {
            "matchExpressions": [
                {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(namespaces)}
            ]
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "eva", "app.kubernetes.io/component": "webhook"},
        },
        "webhooks": [hook],
    }


async def apply_configuration(kube: Kube, body: dict[str, Any]) -> None:
    """Create the configuration, or replace its webhooks (the verbs the chart's RBAC grants)."""
    name = body["metadata"]["name"]
    try:
        await with_retries(lambda: kube.create(CONFIGURATIONS, body))
    except KubeError as exc:
        if exc.status != 409:
            raise
        await with_retries(
            lambda: kube.merge_patch(f"{CONFIGURATIONS}/{name}", {"webhooks": body["webhooks"]})
        )


class ManagedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, advertised through the Service (or ``url``) it is reached by."""

    def __init__(
        self,
        *,
        kube: Kube,
        configuration: str,
        service: str,
        namespace: str,
        url: str | None = None,
        failure_policy: str = "Ignore",
        timeout_seconds: int = 10,
        namespaces: Collection[str] = (),
        service_port: int = 443,
        **kwargs: Any,
    ):
        if url:
            host = urllib.parse.urlsplit(url).hostname or "localhost"
            sans = [host]
        else:
            host = f"{service}.{namespace}.svc"
            sans = [service, f"{service}.{namespace}", host, f"{host}.cluster.local"]
        super().__init__(host=host, extra_sans=sans, **kwargs)
        self.kube = kube
        self.configuration = configuration
        self.service = service
        self.namespace = namespace
        self.service_port = service_port
        self.url = url.rstrip("/") if url else None
        self.failure_policy = failure_policy
        self.timeout_seconds = timeout_seconds
        self.namespaces = tuple(namespaces)

    def client_config(self, ca_bundle: str | None) -> dict[str, Any]:
        out: dict[str, Any]
        if self.url:
            out = {"url": f"{self.url}/{WEBHOOK_ID}"}
        else:
            out = {
                "service": {
                    "name": self.service,
                    "namespace": self.namespace,
                    "port": self.service_port,
                    "path": f"/{WEBHOOK_ID}",
                }
            }
        if ca_bundle:
            out["caBundle"] = ca_bundle
        return out

    async def __call__(self, fn: Any) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            await self.register(config.get("caBundle"))
            yield config

    async def register(self, ca_bundle: str | None) -> None:
        """Point the configuration at this server; a failure is logged, never fatal."""
        try:
            version = await self.kube.server_version()
            body = webhook_configuration(
                self.configuration,
                self.client_config(ca_bundle),
                failure_policy=self.failure_policy,
                timeout_seconds=self.timeout_seconds,
                namespaces=self.namespaces,
                namespace_labels=version >= (1, 21),
            )
            await apply_configuration(self.kube, body)
        except Exception as exc:  # RBAC, network: the operator still reconciles without it
            log.error(
                "the admission webhook is not registered (ValidatingWebhookConfiguration %s): "
                "%s; EvaRuns are checked by the CRD schema and by the operator only",
                self.configuration,
                exc,
            )
        else:
            log.info("admission webhook registered in %s", self.configuration)

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        """A self-signed CA certificate for ``hostnames`` and its key (PEM), valid one year."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        names = list(dict.fromkeys(h for h in hostnames if h and h not in ("0.0.0.0", "::")))
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        encryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        pkey = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return cert.public_bytes(serialization.Encoding.PEM), pkey
