"""The self-managed webhook server: a certificate the API server accepts for the Service, and
a client config that names the Service, not a URL."""

from __future__ import annotations

import asyncio
import base64
import ssl

from cryptography import x509

from eva_operator.webhook import ServiceWebhookServer


def test_the_webhook_advertises_its_service_with_a_matching_ca_bundle() -> None:
    async def first_config() -> dict:
        server = ServiceWebhookServer(
            addr="127.0.0.1", port=0, service="eva-operator-webhook", namespace="eva"
        )

        async def fn(*_: object, **__: object) -> dict:
            return {}

        configs = server(fn)
        try:
            return dict(await configs.__anext__())
        finally:
            await configs.aclose()

    config = asyncio.run(first_config())
    assert "url" not in config
    assert config["service"] == {
        "name": "eva-operator-webhook",
        "namespace": "eva",
        "port": 443,
        "path": "",
    }
    cert = x509.load_pem_x509_certificate(base64.b64decode(config["caBundle"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "eva-operator-webhook.eva.svc" in sans.get_values_for_type(x509.DNSName)
    ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode())
