"""The admission webhook server for kopf's self-managed mode inside a cluster.

kopf's own server advertises itself by URL; the API server reaches in-cluster webhooks
through a Service instead, so this server advertises the Service (with the CA bundle of the
self-signed certificate) in the ValidatingWebhookConfiguration kopf keeps. The certificate
is made with ``cryptography`` (kopf's default builder needs oscrypto, which cannot read
OpenSSL 3's version string).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Collection
from typing import Any

import kopf


class ServiceWebhookServer(kopf.WebhookServer):
    def __init__(self, *, service: str, namespace: str, service_port: int = 443, **kwargs: Any):
        # The certificate must name the Service's DNS names.
        sans = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
        super().__init__(host=f"{service}.{namespace}.svc", extra_sans=sans, **kwargs)
        self.service = service
        self.namespace = namespace
        self.service_port = service_port

    async def __call__(self, fn: Any) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            out = kopf.WebhookClientConfig(
                service=kopf.WebhookClientConfigService(
                    name=self.service, namespace=self.namespace, port=self.service_port, path=""
                )
            )
            if "caBundle" in config:
                out["caBundle"] = config["caBundle"]
            yield out

    @staticmethod
    def build_certificate(
        hostnames: Collection[str], password: str | None = None
    ) -> tuple[bytes, bytes]:
        """A self-signed CA certificate for ``hostnames`` and its key (PEM), valid one year."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        names = [h for h in hostnames if h and h not in ("0.0.0.0", "::")]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
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
