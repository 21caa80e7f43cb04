"""The self-managed webhook: a certificate the API server accepts for the Service (or the URL
it is told), a client config that names it, and the configuration the operator keeps."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl

from cryptography import x509

from eva_operator.kube import Kube
from eva_operator.webhook import ManagedWebhookServer, webhook_configuration


def first_config(server: ManagedWebhookServer) -> dict:
    async def run() -> dict:
        async def fn(*_: object, **__: object) -> dict:
            return {}

        # The base server's configs only: registering needs an API server (tests/kube).
        configs = super(ManagedWebhookServer, server).__call__(fn)
        try:
            return dict(await configs.__anext__())
        finally:
            await configs.aclose()

    return asyncio.run(run())


def sans(config: dict) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(base64.b64decode(config["caBundle"]))
    ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_the_webhook_advertises_its_service_with_a_matching_ca_bundle() -> None:
    server = ManagedWebhookServer(
        kube=Kube(),
        configuration="eva-operator.eva.dev",
        addr="127.0.0.1",
        port=0,
        service="eva-operator-webhook",
        namespace="eva",
    )
    config = first_config(server)
    client = server.client_config(config["caBundle"])
    assert "url" not in client
    assert client["service"] == {
        "name": "eva-operator-webhook",
        "namespace": "eva",
        "port": 443,
        "path": "/admit",
    }
    assert "eva-operator-webhook.eva.svc" in sans(config).get_values_for_type(x509.DNSName)


def test_an_operator_outside_the_cluster_advertises_its_url_with_an_ip_certificate() -> None:
    server = ManagedWebhookServer(
        kube=Kube(),
        configuration="eva-operator.eva.dev",
        addr="127.0.0.1",
        port=0,
        service="eva-operator-webhook",
        namespace="eva",
        url="https://127.0.0.1:9443/",
    )
    config = first_config(server)
    assert server.client_config("CA") == {"url": "https://127.0.0.1:9443/admit", "caBundle": "CA"}
    ips = sans(config).get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips


def test_the_configuration_validates_evarun_writes_and_ignores_failures_by_default() -> None:
    body = webhook_configuration("eva-operator.eva.dev", {"url": "https://h/admit"})
    assert body["kind"] == "ValidatingWebhookConfiguration"
    (hook,) = body["webhooks"]
    assert hook["name"] == "admit.eva-operator.eva.dev"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": ["eva.dev"],
            "apiVersions": ["v1alpha1"],
            "resources": ["evaruns"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert "namespaceSelector" not in hook


def test_a_namespaced_install_selects_its_namespaces_where_the_server_labels_them() -> None:
    labelled = webhook_configuration("x", {}, namespaces=("b", "a"), failure_policy="Fail")
    (hook,) = labelled["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
        ]
    }
    old_server = webhook_configuration("x", {}, namespaces=("a",), namespace_labels=False)
    assert "namespaceSelector" not in old_server["webhooks"][0]
