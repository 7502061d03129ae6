"""SPEC §7 "Secrets stay in their namespace": where an AzureIdentity may send nmi for a Secret and a credential,
attacked through TokenService with the real MSAL client and the fake Azure AD over HTTPS."""

from __future__ import annotations


import pytest

from nmi.errors import IdentityConfigurationError, TokenRefused
from fakes.aad import FakeAad
from nmi.model import SERVICE_PRINCIPAL, Identity, SecretRef
from nmi.tokens.credential_policy import AZURE_AUTHORITY_HOSTS, CredentialPolicy, check_identity

ARM = "https://management.azure.com/"
SECRET = "victim-s3cret"


def sp(endpoint: str, *, secret_namespace: str = "attacker", type: int = SERVICE_PRINCIPAL) -> Identity:
    return Identity("attacker", "evil", type=type, client_id="sp-client", tenant_id="tenant-a", ad_endpoint=endpoint,
                    client_password=SecretRef(secret_namespace, "sp-secret"))


async def test_attack_secret_of_another_namespace_is_refused_without_reading_it(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("victim", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(sp(aad.authority_host, secret_namespace="victim"), ARM)

    assert caught.value.status == 403 and "AzureIdentity attacker/evil" in caught.value.description
    assert secrets.reads == 0 and aad.token_requests == 0


async def test_allow_cross_namespace_secrets_restores_upstream(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("victim", "sp-secret", {"clientSecret": SECRET.encode()})
    policy = CredentialPolicy(allowed_authority_hosts=frozenset({"127.0.0.1"}), cross_namespace_secrets=True)

    grant = await make_service(credential_policy=policy).get(sp(aad.authority_host, secret_namespace="victim"), ARM)

    assert grant.primary.client_id == "sp-client" and secrets.reads == 1


@pytest.fixture
async def hostile(tmp_path, monkeypatch):
    """An attacker's https authority that nmi's TLS trusts, reachable as `localhost` (not an allowed host)."""
    async with FakeAad() as fake:
        fake.register_secret_app("tenant-a", "sp-client", "whatever")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.write_ca_bundle(tmp_path / "hostile-ca.pem")))
        yield fake


@pytest.mark.parametrize("endpoint", [
    "https://localhost:{port}/",
    "https://login.microsoftonline.com@localhost:{port}/",  # userinfo: the host is localhost
    "https://LOCALHOST:{port}",
    "https://localhost:{port}/#login.microsoftonline.com",
    "https://localhost:{port}/?x=login.microsoftonline.com",
    "https://login.microsoftonline.com.localhost:{port}/",
])
async def test_attack_hostile_authority_host_receives_nothing(hostile, make_service, secrets, endpoint):
    secrets.put("attacker", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(sp(endpoint.format(port=hostile.port)), ARM)

    assert "AzureIdentity attacker/evil" in caught.value.description
    assert (hostile.token_requests, sum(hostile.discovery_calls.values()), secrets.reads) == (0, 0, 0)


async def test_control_the_same_hostile_host_once_allowed_does_receive_the_secret(hostile, make_service, secrets):
    """Proves the attack test above can fail: allowed by the operator, the host gets the client secret."""
    secrets.put("attacker", "sp-secret", {"clientSecret": SECRET.encode()})
    policy = CredentialPolicy(allowed_authority_hosts=frozenset({"localhost"}))

    with pytest.raises(TokenRefused):  # the hostile host answers no token, but it got the secret
        await make_service(credential_policy=policy).get(sp(f"https://localhost:{hostile.port}/"), ARM)

    assert hostile.token_requests == 1 and hostile.client_auth == ["secret"]


@pytest.mark.parametrize("host", sorted(AZURE_AUTHORITY_HOSTS))
def test_azure_cloud_hosts_pass_without_any_flag(host):
    check_identity(sp(f"https://{host}/"))
    check_identity(sp(f"https://{host.upper()}"))


@pytest.mark.parametrize("endpoint", ["http://login.microsoftonline.com/", "https://login.microsoftonline.de/",
                                      "https://westus.login.microsoft.com/", "https://login.microsoftonline.com.evil/",
                                      "https://evil.example/", "https:///tenant", "https://127.0.0.1:99999/",
                                      "ftp://login.microsoftonline.com/"])
def test_other_or_malformed_authority_hosts_are_refused(endpoint):
    with pytest.raises(IdentityConfigurationError, match="AzureIdentity attacker/evil"):
        check_identity(sp(endpoint))


def test_allowed_authority_hosts_are_matched_on_the_host_only():
    policy = CredentialPolicy(allowed_authority_hosts=frozenset({"login.contoso.example"}))
    check_identity(sp("https://login.contoso.example:8443/"), policy)
    with pytest.raises(IdentityConfigurationError):
        check_identity(sp("https://evil.login.contoso.example/"), policy)
