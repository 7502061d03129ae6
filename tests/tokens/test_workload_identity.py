"""Workload identity federation in TokenService: real MSAL against the fake Azure AD over HTTPS, ServiceAccount
tokens signed by the fake cluster issuer, cache isolation per ServiceAccount, re-minting at 80 % of life."""

from __future__ import annotations

import asyncio

import pytest

from nmi.errors import IdentityConfigurationError, TokenRefused, Unavailable
from fakes.sa_issuer import ServiceAccountIssuer
from nmi.model import WORKLOAD_IDENTITY, Identity, ServiceAccountToken
from nmi.tokens.assertions import AssertionCache

TENANT, CLIENT_ID, NS = "tenant-wi", "c11e47d0-0000-4000-8000-0000000000c1", "apps"


class IssuerMinter:
    """ServiceAccountTokenMinter over the fake issuer; records every mint, can be told to fail."""

    def __init__(self, clock) -> None:
        self.issuer = ServiceAccountIssuer(clock=clock)
        self.mints: list[tuple[str, str, str, str]] = []
        self.fail_with: Exception | None = None
        self.delay = 0.0
        self.audiences = ["api://AzureADTokenExchange"]
        self.lifetime = 3600
        self.next_lifetimes: list[int] = []  # consumed one per mint before `lifetime` applies

    async def mint_token(self, namespace: str, service_account: str, *, pod_name: str,
                         pod_uid: str) -> ServiceAccountToken:
        self.mints.append((namespace, service_account, pod_name, pod_uid))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            raise self.fail_with
        token, expires = self.issuer.mint(namespace=namespace, service_account=service_account,
                                          service_account_uid="u", audiences=self.audiences,
                                          expiration_seconds=self.next_lifetimes.pop(0) if self.next_lifetimes
                                          else self.lifetime, pod={"name": pod_name, "uid": pod_uid})
        return ServiceAccountToken(token, expires)


def workload(account: str, *, aad=None, tenant: str = TENANT, pod: str = "pod-1") -> Identity:
    return Identity(namespace=NS, name=account, type=WORKLOAD_IDENTITY, client_id=CLIENT_ID, tenant_id=tenant,
                    ad_endpoint=aad.authority_host if aad else "https://login.example/", service_account=account,
                    pod_name=pod, pod_uid=f"uid-{pod}")


@pytest.fixture
def minter(clock) -> IssuerMinter:
    return IssuerMinter(clock)


def federate(aad, minter: IssuerMinter, *accounts: str) -> None:
    for account in accounts:
        aad.register_federated_app(TENANT, CLIENT_ID, minter.issuer.issuer, f"system:serviceaccount:{NS}:{account}",
                                   public_key=minter.issuer.public_key)


async def test_token_is_exchanged_for_the_service_accounts_federated_assertion_and_cached(aad, minter, make_service):
    federate(aad, minter, "sa-a")
    service = make_service(service_account_tokens=minter)
    grant = await service.get(workload("sa-a", aad=aad), "https://vault.azure.net")
    assert not grant.cached and grant.primary.client_id == CLIENT_ID
    assert minter.mints == [(NS, "sa-a", "pod-1", "uid-pod-1")]
    (claims,) = aad.federated_assertions
    assert claims["sub"] == f"system:serviceaccount:{NS}:sa-a" and claims["kubernetes.io"]["pod"]["uid"] == "uid-pod-1"
    again = await service.get(workload("sa-a", aad=aad, pod="pod-2"), "https://vault.azure.net")
    assert again.cached and again.primary.access_token == grant.primary.access_token
    assert len(minter.mints) == 1 and aad.token_requests == 1


async def test_two_service_accounts_with_one_client_id_have_separate_tokens(aad, minter, make_service):
    federate(aad, minter, "sa-a", "sa-b")
    service = make_service(service_account_tokens=minter)
    a = await service.get(workload("sa-a", aad=aad), "r://x")
    b = await service.get(workload("sa-b", aad=aad), "r://x")
    assert not b.cached and a.primary.access_token != b.primary.access_token
    assert [m[1] for m in minter.mints] == ["sa-a", "sa-b"]
    with pytest.raises(TokenRefused) as caught:  # federated for nothing: Azure AD refuses, nothing is shared
        await service.get(workload("sa-c", aad=aad), "r://x")
    assert caught.value.status == 403 and caught.value.error == "invalid_client"
    assert "AADSTS70021" in caught.value.description


async def test_service_account_token_is_reminted_at_80_percent_of_its_life(aad, minter, make_service, clock):
    federate(aad, minter, "sa-a")
    service = make_service(service_account_tokens=minter)
    await service.get(workload("sa-a", aad=aad), "r://one")
    clock.advance(0.79 * 3600)
    await service.get(workload("sa-a", aad=aad), "r://two")  # a new resource: Azure AD is asked, same assertion
    assert len(minter.mints) == 1 and aad.token_requests == 2
    clock.advance(0.02 * 3600)
    await service.get(workload("sa-a", aad=aad, pod="pod-2"), "r://three")
    assert len(minter.mints) == 2 and minter.mints[-1][2] == "pod-2"
    assert len(aad.federated_assertions) == 3


async def test_misconfiguration_is_403_naming_the_service_account(aad, minter, make_service):
    service = make_service(service_account_tokens=minter)
    with pytest.raises(IdentityConfigurationError, match=f"ServiceAccount {NS}/sa-a.*tenant"):
        await service.get(workload("sa-a", aad=aad, tenant=""), "r://x")
    with pytest.raises(IdentityConfigurationError, match="not enabled"):
        await make_service().get(workload("sa-a", aad=aad), "r://x")
    minter.fail_with = IdentityConfigurationError(f"ServiceAccount {NS}/sa-a not found")
    with pytest.raises(IdentityConfigurationError, match="not found"):
        await service.get(workload("sa-a", aad=aad), "r://x")
    minter.fail_with = Unavailable("API server unreachable")
    with pytest.raises(Unavailable):
        await service.get(workload("sa-a", aad=aad), "r://x")
    assert aad.token_requests == 0


async def test_forgetting_a_vanished_service_account_drops_its_tokens(aad, minter, make_service):
    from nmi.tokens.service import workload_owner_key

    federate(aad, minter, "sa-a")
    service = make_service(service_account_tokens=minter)
    ident = workload("sa-a", aad=aad)
    await service.get(ident, "r://x")
    service.forget({workload_owner_key(ident)})
    assert (await service.get(ident, "r://x")).cached
    service.forget(set())
    assert not (await service.get(ident, "r://x")).cached


async def test_concurrent_misses_for_one_service_account_mint_once(minter, clock):
    cache = AssertionCache(minter, clock=clock)
    minter.delay = 0.01
    tokens = await asyncio.gather(*(cache.current(NS, "sa", pod_name="p", pod_uid="u") for _ in range(20)))
    assert len(set(tokens)) == 1 and len(minter.mints) == 1 and cache.peek(NS, "sa") == tokens[0]
    assert cache.peek(NS, "other") == ""


async def test_fake_azure_ad_checks_audience_expiry_and_signature_of_federated_assertions(aad, minter, make_service,
                                                                                           clock):
    federate(aad, minter, "sa-a")
    minter.audiences = ["https://kubernetes.default.svc"]
    with pytest.raises(TokenRefused, match="AADSTS700212"):
        await make_service(service_account_tokens=minter).get(workload("sa-a", aad=aad), "r://x")
    minter.audiences, minter.lifetime = ["api://AzureADTokenExchange"], -(int(clock.now) - 1_000)
    with pytest.raises(TokenRefused, match="AADSTS700024"):
        await make_service(service_account_tokens=minter).get(workload("sa-a", aad=aad), "r://x")
    minter.lifetime = 3600
    minter.issuer = ServiceAccountIssuer(clock=clock)  # same issuer URL and subject, another signing key
    with pytest.raises(TokenRefused, match="signature"):
        await make_service(service_account_tokens=minter).get(workload("sa-a", aad=aad), "r://x")
    assert aad.federated_assertions == []


async def test_an_assertion_azure_ad_finds_expired_is_reminted_once(aad, minter, make_service, clock):
    federate(aad, minter, "sa-a")
    aad._clock = lambda: clock.now + 100  # Azure AD's clock runs ahead of the node's
    minter.next_lifetimes = [60]  # still fresh for nmi, already expired for Azure AD
    grant = await make_service(service_account_tokens=minter).get(workload("sa-a", aad=aad), "r://x")
    assert grant.primary.client_id == CLIENT_ID
    assert len(minter.mints) == 2 and len(aad.federated_assertions) == 1
