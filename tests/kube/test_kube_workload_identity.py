"""The Kubernetes side of the workload identity bridge, real client against the fake API server: the
ServiceAccount projection and informer, and TokenRequest minting with its error mapping."""

from __future__ import annotations

import base64
import json

import pytest

from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from nmi.errors import IdentityConfigurationError, Unavailable
from fakes.kubeobjects import make_pod, make_service_account
from fakes.sa_issuer import verified_claims
from nmi.kube import Informer, KubeServiceAccountTokens, node_informers, service_accounts_target
from nmi.kube.projection import project_service_account
from nmi.model import ServiceAccount

from .conftest import NODE, eventually, running


def test_service_account_projection_reads_the_workload_identity_annotations():
    raw = make_service_account("sa", "ns", client_id=" cid ", tenant_id="tid")
    raw["metadata"]["uid"] = "u1"
    assert project_service_account(raw) == ServiceAccount("ns", "sa", client_id="cid", tenant_id="tid", uid="u1")
    assert project_service_account(make_service_account("bare", "ns")) == ServiceAccount("ns", "bare")
    assert project_service_account(make_service_account("empty", "ns", client_id="")).client_id == ""
    assert project_service_account({"metadata": {"name": "no-namespace"}}) is None


def test_node_informers_watch_service_accounts_only_with_the_bridge(api_client):
    def resources(**kw) -> list[str]:
        return [i.target.resource for i in node_informers(api_client, node=NODE, pods=PodIndex(),
                                                          identities=IdentityIndex(), managed=True, **kw)]

    assert "serviceaccounts" not in resources()
    assert resources(workload_identity=True)[-1] == "serviceaccounts"


async def test_service_account_informer_fills_and_follows_the_index(apiserver, api_client):
    apiserver.put(make_service_account("sa", "ns", client_id="cid-1"))
    index = IdentityIndex()
    informer = Informer(service_accounts_target(api_client), index.service_account_store)
    async with running(informer):
        assert index.service_account("ns", "sa").client_id == "cid-1"
        apiserver.put(make_service_account("sa", "ns", client_id="cid-2"))
        await eventually(lambda: index.service_account("ns", "sa").client_id == "cid-2")
        apiserver.delete("ServiceAccount", "ns", "sa")
        await eventually(lambda: index.service_account("ns", "sa") is None)
    assert apiserver.count("serviceaccounts", "list") == 1


@pytest.fixture
def minter(api_client):
    reader = KubeServiceAccountTokens(api_client, timeout=2.0)
    try:
        yield reader
    finally:
        reader.close()


async def test_minted_token_is_bound_to_the_pod_with_the_exchange_audience(apiserver, minter):
    apiserver.put(make_service_account("sa", "ns", client_id="cid"))
    pod = apiserver.put(make_pod("p", "ns", service_account="sa"))
    minted = await minter.mint_token("ns", "sa", pod_name="p", pod_uid=pod["metadata"]["uid"])
    claims = verified_claims(minted.token, apiserver.sa_issuer.public_key)
    assert claims is not None and claims["sub"] == "system:serviceaccount:ns:sa"
    assert claims["aud"] == ["api://AzureADTokenExchange"]
    assert claims["kubernetes.io"]["pod"] == {"name": "p", "uid": pod["metadata"]["uid"]}
    assert minted.expires_on == claims["exp"]
    (request,) = apiserver.token_requests
    assert request["spec"]["expirationSeconds"] == 3600
    assert apiserver.count("serviceaccounts/token", "create") == 1
    assert minted.token not in repr(minted)


async def test_unknown_service_account_is_a_configuration_error_naming_it(apiserver, minter):
    apiserver.put(make_pod("p", "ns"))
    with pytest.raises(IdentityConfigurationError, match="ServiceAccount ns/missing"):
        await minter.mint_token("ns", "missing", pod_name="p", pod_uid="whatever")


async def test_a_replaced_or_gone_pod_is_refused(apiserver, minter):
    apiserver.put(make_service_account("sa", "ns"))
    apiserver.put(make_pod("p", "ns"))
    with pytest.raises(IdentityConfigurationError, match="pod ns/p"):
        await minter.mint_token("ns", "sa", pod_name="p", pod_uid="uid-of-an-older-pod")
    with pytest.raises(IdentityConfigurationError, match="ServiceAccount ns/sa"):
        await minter.mint_token("ns", "sa", pod_name="gone", pod_uid="u")


async def test_forbidden_is_a_configuration_error_and_server_errors_are_transient(apiserver, minter):
    apiserver.put(make_service_account("sa", "ns"))
    pod = apiserver.put(make_pod("p", "ns"))
    uid = pod["metadata"]["uid"]
    apiserver.fail_next(1, status=403, verb="create")
    with pytest.raises(IdentityConfigurationError, match="HTTP 403"):
        await minter.mint_token("ns", "sa", pod_name="p", pod_uid=uid)
    apiserver.fail_next(1, status=500, verb="create")
    with pytest.raises(Unavailable) as caught:
        await minter.mint_token("ns", "sa", pod_name="p", pod_uid=uid)
    assert caught.value.retry_after


def test_fake_issuer_tokens_do_not_verify_with_another_key(apiserver):
    from fakes.sa_issuer import ServiceAccountIssuer

    token, _ = apiserver.sa_issuer.mint(namespace="n", service_account="s", service_account_uid="u",
                                        audiences=["a"], expiration_seconds=600)
    assert verified_claims(token, ServiceAccountIssuer().public_key) is None
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256"
