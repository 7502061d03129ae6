"""What an identity may point nmi at, checked before any Secret is read or any credential leaves.

AzureIdentity types 1 and 2 (service principals), workload identities and user-assigned managed identities:
required fields, the Secret's namespace, the Azure AD authority host. No MSAL and no I/O. Every error names
the object at fault and never includes its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import IdentityConfigurationError
from ..model import SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE, USER_ASSIGNED_MSI, WORKLOAD_IDENTITY, Identity

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
