"""Service-principal credentials (AzureIdentity types 1 and 2) read from a Secret's data.

Validation and decoding only, no MSAL and no I/O. Every error names the object at fault and never
includes its content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

if TYPE_CHECKING:  # cryptography (~10 MiB) is imported only where a certificate is opened
    from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import IdentityConfigurationError
from .model import (SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE, USER_ASSIGNED_MSI, WORKLOAD_IDENTITY, Identity,
                    SecretRef)

DEFAULT_AD_ENDPOINT = "https://login.microsoftonline.com/"
# Azure AD authority hosts of the Azure clouds (MSAL's list of known Entra hosts, minus the retired German cloud):
# public (and its legacy aliases), US Government, China (21Vianet). A client secret or certificate assertion is
# sent only to these, or to hosts the operator names with --allowed-authority-hosts.
AZURE_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net",  # public
    "login.microsoftonline.us", "login-us.microsoftonline.com", "login.usgovcloudapi.net",  # US Government
    "login.chinacloudapi.cn", "login.partner.microsoftonline.cn",  # China
})
MAX_AUXILIARY_TENANTS = 3
MAX_RSA_KEY_BITS = 8192  # signing with a bigger key takes long enough to hurt; Azure AD needs 2048
CLIENT_SECRET_KEY = "clientSecret"
CERTIFICATE_KEY = "certificate"
PASSWORD_KEY = "password"


@dataclass(frozen=True, slots=True)
class CredentialPolicy:
    """What an AzureIdentity may point nmi at (SPEC §7 "Secrets stay in their namespace")."""

    # --allowed-authority-hosts: lower-case host names trusted besides AZURE_AUTHORITY_HOSTS.
    allowed_authority_hosts: frozenset[str] = frozenset()
    # --allow-cross-namespace-secrets: upstream behaviour, clientPassword may name a Secret of any namespace.
    cross_namespace_secrets: bool = False

    def authority_allowed(self, host: str) -> bool:
        host = host.lower()
        return host in AZURE_AUTHORITY_HOSTS or host in self.allowed_authority_hosts


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


def check_identity(identity: Identity, policy: CredentialPolicy = CredentialPolicy()) -> None:
    """Everything that can be checked without reading the Secret; raises IdentityConfigurationError.

    Runs before any Secret is read and before any credential leaves: a Secret outside the identity's namespace
    and an authority host outside the Azure clouds are refused here."""
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
    if identity.client_password.namespace != identity.namespace and not policy.cross_namespace_secrets:
        # Whoever may create an AzureIdentity in one namespace must not borrow another namespace's Secret.
        raise IdentityConfigurationError(
            f"{label}: clientPassword names a Secret in namespace {identity.client_password.namespace!r}; it must be"
            f" in the AzureIdentity's own namespace (or start nmi with --allow-cross-namespace-secrets)")
    if len(identity.auxiliary_tenant_ids) > MAX_AUXILIARY_TENANTS:
        raise IdentityConfigurationError(
            f"{label}: {len(identity.auxiliary_tenant_ids)} auxiliaryTenantIDs given, at most {MAX_AUXILIARY_TENANTS}")
    host = urlsplit(authority_host(identity)).hostname or ""
    if not policy.authority_allowed(host):
        # The client secret (or a signed assertion) would be sent to this host: only Azure AD may receive it.
        raise IdentityConfigurationError(
            f"{label}: adEndpoint host {host!r} is not an Azure AD authority host (allow it with"
            " --allowed-authority-hosts)")


def authority_host(identity: Identity) -> str:
    """`spec.adEndpoint` (default public cloud) as `https://host[/path]/`; MSAL requires https."""
    endpoint = identity.ad_endpoint or DEFAULT_AD_ENDPOINT
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = urlsplit("")
    # userinfo ("https://login.microsoftonline.com@attacker.example/"), query and fragment have no place in an
    # authority and only serve to make a URL look like another.
    if (parts.scheme != "https" or not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment
            or "\\" in endpoint):
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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12

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
    if key.key_size > MAX_RSA_KEY_BITS:
        raise IdentityConfigurationError(f"{label}: the RSA key has {key.key_size} bits, at most {MAX_RSA_KEY_BITS}")
    # OpenSSL's PKCS#12 parser already pairs the key with the certificate holding its public key (a bundle
    # with none comes back without a certificate, refused above); this check keeps that promise explicit.
    certified = certificate.public_key()
    if not isinstance(certified, rsa.RSAPublicKey) or key.public_key().public_numbers() != certified.public_numbers():
        raise IdentityConfigurationError(f"{label}: the private key does not belong to the certificate")
    return ClientCertificate(
        private_key=key,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint=hashlib.sha256(bundle + b"\0" + (password or b"")).hexdigest(),
    )


def open_pkcs12(ref: SecretRef, data: Mapping[str, bytes]) -> tuple[bytes, str, str]:
    """client_certificate_from, for the parser process: (private key as unencrypted PKCS#8 DER, certificate PEM,
    fingerprint), plain values that cross the process boundary. Raises IdentityConfigurationError."""
    from cryptography.hazmat.primitives import serialization

    opened = client_certificate_from(ref, data)
    key_der = opened.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return key_der, opened.certificate_pem, opened.fingerprint


def _key_kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "an EC key"
    return f"a {type(key).__name__} key"
