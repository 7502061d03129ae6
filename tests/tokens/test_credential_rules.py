"""SPEC §7 "Secrets stay in their namespace": where an AzureIdentity may send nmi for a Secret and a credential,
attacked through TokenService with the real MSAL client and the fake Azure AD over HTTPS. And the PKCS#12 parse:
in a separate process, once per Secret version, failures included."""

from __future__ import annotations

import asyncio

import pytest

from nmi.credential_loader import CredentialLoader
from nmi.errors import IdentityConfigurationError
from fakes.aad import FakeAad
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate, with_mac_iterations
from nmi.model import SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE, Identity, SecretData, SecretRef
from nmi.sp_credentials import AZURE_AUTHORITY_HOSTS, CredentialPolicy, check_identity

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
    fake = FakeAad()
    await fake.start()
    fake.register_secret_app("tenant-a", "sp-client", "whatever")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.write_ca_bundle(tmp_path / "hostile-ca.pem")))
    try:
        yield fake
    finally:
        await fake.stop()


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

    with pytest.raises(Exception):
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


# -- PKCS#12: off the event loop, once per Secret version --------------------------------------------------------

async def test_a_failed_parse_is_cached_per_secret_version_and_retried_for_a_new_version():
    loader = CredentialLoader()
    ref = SecretRef("apps", "cert")
    bad = SecretData({"certificate": b"not a bundle"}, "41")

    for _ in range(3):
        with pytest.raises(IdentityConfigurationError, match="Secret apps/cert"):
            await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, ref, bad)
    assert loader.parses == 1

    key = new_key("rsa")
    good = SecretData({"certificate": pkcs12_bundle(key, self_signed_certificate("ok", key), None)}, "42")
    opened = await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, ref, good)
    assert opened.private_key.private_numbers() == key.private_numbers()
    assert loader.parses == 2


async def test_concurrent_requests_for_one_version_share_one_parse():
    loader = CredentialLoader()
    key = new_key("rsa")
    data = SecretData({"certificate": pkcs12_bundle(key, self_signed_certificate("ok", key), None)}, "7")
    results = await asyncio.gather(*(loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "c"), data)
                                     for _ in range(5)))
    assert loader.parses == 1 and len({r.fingerprint for r in results}) == 1


async def test_a_parse_that_outlives_its_budget_is_stopped_and_cached_as_a_failure():
    key = new_key("rsa")
    good = pkcs12_bundle(key, self_signed_certificate("ok", key), b"pw")
    # The budget also covers starting a fresh worker process (spawn + imports), seconds on a loaded machine.
    loader = CredentialLoader(parse_timeout=5.0)
    await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "warm"), {"certificate": good, "password": b"pw"})
    slow = SecretData({"certificate": with_mac_iterations(good, 400_000_000), "password": b"pw"}, "9")  # ~30 s
    for _ in range(2):
        with pytest.raises(IdentityConfigurationError, match="within 5s"):
            await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "slow"), slow)
    assert loader.parses == 2
    # The stuck worker was killed; the next bundle gets a fresh one.
    fresh = SecretData({"certificate": good, "password": b"pw"}, "10")
    assert (await loader.load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "slow"), fresh)).certificate_pem


EXIT_WHILE_PARSING = """
import asyncio
from nmi.credential_loader import CredentialLoader, ParserProcess
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate, with_mac_iterations
from nmi.model import SERVICE_PRINCIPAL_CERTIFICATE, SecretData, SecretRef

key = new_key("rsa")
bundle = with_mac_iterations(pkcs12_bundle(key, self_signed_certificate("x", key), b"p"), 2_000_000_000)  # minutes


async def main():
    parse = asyncio.ensure_future(CredentialLoader().load(SERVICE_PRINCIPAL_CERTIFICATE, SecretRef("a", "b"),
                                                          SecretData({"certificate": bundle, "password": b"p"}, "1")))
    while ParserProcess._pool is None or not getattr(ParserProcess._pool, "_processes", None):
        await asyncio.sleep(0.01)
    ParserProcess.kill()  # what nmi's shutdown does (assembly registers it on the exit stack)
    parse.cancel()
    await asyncio.gather(parse, return_exceptions=True)

asyncio.run(main())
print("exited")
"""


def test_a_parse_still_running_does_not_hold_the_exit():
    """Without the kill, the pool's exit handler waits for the parse (minutes): the run below would time out."""
    import os
    import signal
    import subprocess
    import sys

    # Its own process group, so that on failure the parser process it spawned is killed too.
    script = subprocess.Popen([sys.executable, "-c", EXIT_WHILE_PARSING], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = script.communicate(timeout=60)
    finally:
        try:
            os.killpg(script.pid, signal.SIGKILL)  # whatever is left of the group (nothing, when it passes)
        except ProcessLookupError:
            pass
        script.wait()
    assert script.returncode == 0 and out.strip() == "exited", err[-2000:]
