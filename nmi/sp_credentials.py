"""Service-principal credentials (AzureIdentity types 1 and 2) read from a Secret's data.

Validation and decoding only, no MSAL and no I/O. Every error names the object at fault and never
includes its content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import IdentityConfigurationError
from .model import (SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE, USER_ASSIGNED_MSI, WORKLOAD_IDENTITY, Identity,
                    SecretRef)

DEFAULT_AD_ENDPOINT = "https://login.microsoftonline.com/"
MAX_AUXILIARY_TENANTS = 3
CLIENT_SECRET_KEY = "clientSecret"
CERTIFICATE_KEY = "certificate"
PASSWORD_KEY = "password"


@dataclass(frozen=True, slots=True)
class ClientSecret:
    value: str = field(repr=False)
    fingerprint: str  # identifies the material without revealing it; a change rebuilds the MSAL app


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate_pem: str
    fingerprint: str


def identity_label(identity: Identity) -> str:
    if identity.type == WORKLOAD_IDENTITY:
        return f"ServiceAccount {identity.namespace}/{identity.service_account}"
    return f"AzureIdentity {identity.key}"


def check_identity(identity: Identity) -> None:
    """Everything that can be checked without reading the Secret; raises IdentityConfigurationError."""
    label = identity_label(identity)
    if identity.type == USER_ASSIGNED_MSI:
        # Upstream NMI sent no client_id then, which hands the pod the node's own identity. nmi refuses.
        if not identity.client_id and not identity.resource_id:
            raise IdentityConfigurationError(f"{label} has neither clientID nor resourceID")
        return
    if identity.type == WORKLOAD_IDENTITY:
        if not identity.client_id or not identity.service_account:
            raise IdentityConfigurationError(f"{label} has no azure.workload.identity/client-id annotation")
        if not identity.tenant_id:
            raise IdentityConfigurationError(
                f"{label} has no azure.workload.identity/tenant-id annotation and --workload-identity-tenant-id"
                " is not set")
        authority_host(identity)
        return
    if identity.type not in (SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE):
        raise IdentityConfigurationError(f"{label}: unsupported identity type {identity.type}")
    if not identity.client_id or not identity.tenant_id:
        raise IdentityConfigurationError(f"{label}: a service principal needs clientID and tenantID")
    if identity.client_password is None or not identity.client_password.name:
        raise IdentityConfigurationError(f"{label}: clientPassword does not name a Secret")
    if len(identity.auxiliary_tenant_ids) > MAX_AUXILIARY_TENANTS:
        raise IdentityConfigurationError(
            f"{label}: {len(identity.auxiliary_tenant_ids)} auxiliaryTenantIDs given, at most {MAX_AUXILIARY_TENANTS}")
    authority_host(identity)


def authority_host(identity: Identity) -> str:
    """`spec.adEndpoint` (default public cloud) as `https://host[/path]/`; MSAL requires https."""
    endpoint = identity.ad_endpoint or DEFAULT_AD_ENDPOINT
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        what = "--workload-identity-authority-host" if identity.type == WORKLOAD_IDENTITY else "adEndpoint"
        raise IdentityConfigurationError(f"{identity_label(identity)}: {what} must be an https URL")
    return endpoint if endpoint.endswith("/") else endpoint + "/"


def secret_label(ref: SecretRef | None) -> str:
    return f"Secret {ref.namespace}/{ref.name}" if ref else "Secret <none>"


def client_secret_from(ref: SecretRef, data: Mapping[str, bytes]) -> ClientSecret:
    """Key `clientSecret` when present, otherwise the only key (upstream took the first map key, at random)."""
    label = secret_label(ref)
    if CLIENT_SECRET_KEY in data:
        raw = data[CLIENT_SECRET_KEY]
    elif len(data) == 1:
        raw = next(iter(data.values()))
    elif not data:
        raise IdentityConfigurationError(f"{label} has no data")
    else:
        raise IdentityConfigurationError(f"{label} has several keys and none is named {CLIENT_SECRET_KEY}")
    try:
        # Trailing newlines come from `--from-file`; Azure AD secrets never end in whitespace.
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise IdentityConfigurationError(f"{label}: the client secret is not UTF-8 text") from None
    if not value:
        raise IdentityConfigurationError(f"{label}: the client secret is empty")
    return ClientSecret(value, fingerprint=hashlib.sha256(raw).hexdigest())


def client_certificate_from(ref: SecretRef, data: Mapping[str, bytes]) -> ClientCertificate:
    """PKCS#12 bundle under `certificate`, its password under `password` (either may be absent)."""
    label = secret_label(ref)
    bundle = data.get(CERTIFICATE_KEY, b"")
    password = data.get(PASSWORD_KEY, b"").rstrip(b"\r\n") or None
    if not bundle:
        raise IdentityConfigurationError(f"{label} has no {CERTIFICATE_KEY!r} key")
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(bundle, password)
    except (ValueError, TypeError):
        raise IdentityConfigurationError(
            f"{label}: {CERTIFICATE_KEY!r} is not a PKCS#12 bundle that opens with {PASSWORD_KEY!r}") from None
    if key is None or certificate is None:
        raise IdentityConfigurationError(f"{label}: the PKCS#12 bundle must hold a private key and its certificate")
    if not isinstance(key, rsa.RSAPrivateKey):
        # MSAL signs client assertions with PS256/RS256 only and Azure AD accepts only those; an EC key
        # would fail inside MSAL with an unrelated-looking TypeError at the first token request.
        raise IdentityConfigurationError(
            f"{label}: the certificate key is {_key_kind(key)}; Azure AD client assertions need an RSA key")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise IdentityConfigurationError(f"{label}: the private key does not belong to the certificate")
    return ClientCertificate(
        private_key=key,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint=hashlib.sha256(bundle + b"\0" + (password or b"")).hexdigest(),
    )


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "an EC key"
    return f"a {type(key).__name__} key"
