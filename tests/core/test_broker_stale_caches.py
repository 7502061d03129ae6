"""SPEC §7 "Stale caches are not trusted" at the broker: while an identity cache (identities, bindings, assigned
identities, exceptions, ServiceAccounts) is not synced or stale, no answer is given from it — no token (a binding
removed meanwhile could still hand one out), no `Identity not found` (one added meanwhile would be denied), no
node identity (an exception removed meanwhile) — but 503 + Retry-After."""

import asyncio

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.errors import CachesNotTrusted
from nmi.freshness import POD_CACHE, CacheHealth
from nmi.model import PodIdentityException, TokenRequest

from tests.core.doubles import Catalog, Pods, Tokens, assignment, binding, identity, pod
from tests.eventually import eventually


def synced(*resources: str) -> CacheHealth:
    health = CacheHealth()
    for resource in resources:
        health.track(resource)
        health.listed(resource)
    return health


def managed(health: CacheHealth):
    app = pod("app", "10.0.0.5", label="sel")
    sys_pod = pod("sys", "10.0.0.9", labels={"component": "system"})
    loner = pod("loner", "10.0.0.6", label="none")
    catalog = Catalog(bound=[binding("b1", "id-a", "sel")], ids=[identity("id-a", "client-a")],
                      excepts=[PodIdentityException(namespace="default", name="e", pod_labels={"component": "system"})])
    tokens = Tokens()
    broker = TokenBroker(Pods(app, sys_pod, loner), catalog, tokens, policy=BrokerPolicy(mode=MANAGED, namespaced=True),
                         caches=health)
    return broker, tokens


@pytest.mark.parametrize("ip", ["10.0.0.5", "10.0.0.9", "10.0.0.6"], ids=["bound", "exception", "unbound"])
@pytest.mark.parametrize("condition", ["not synced", "watch failing", "relisting"])
async def test_no_answer_from_a_binding_cache_that_cannot_be_trusted(ip, condition):
    health = synced(POD_CACHE, "azureidentities", "azurepodidentityexceptions")
    health.track("azureidentitybindings")
    if condition != "not synced":
        health.listed("azureidentitybindings")
        if condition == "watch failing":
            health.failed("azureidentitybindings", "watch", "HTTP 500")
        else:
            health.expired("azureidentitybindings")
    broker, tokens = managed(health)
    with pytest.raises(CachesNotTrusted) as caught:
        await broker.for_caller(ip, TokenRequest("https://vault.azure.net"))
    assert caught.value.status == 503 and caught.value.retry_after
    assert "azureidentitybindings watch" in caught.value.description
    assert tokens.calls == []  # not even a cached token: the binding may be gone
    health.listed("azureidentitybindings")  # recovered
    outcome = await broker.for_caller("10.0.0.5", TokenRequest("https://vault.azure.net"))
    assert outcome.identity.name == "id-a"


async def test_a_stale_pod_cache_is_left_to_the_pod_index_but_host_token_refuses_it():
    health = synced(POD_CACHE, "azureidentities", "azureidentitybindings")
    broker, tokens = managed(health)
    health.failed(POD_CACHE, "watch", "HTTP 500")
    # The token route: the pod directory confirms callers live (tested with the real index); the broker lets it.
    assert (await broker.for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-a"
    # /host/token names a pod the cache may have lost: refused while the pod cache is stale.
    with pytest.raises(CachesNotTrusted) as caught:
        await broker.for_named_pod("default", "app", TokenRequest("r"))
    assert "pods watch" in caught.value.description
    health.watching(POD_CACHE)
    assert (await broker.for_named_pod("default", "app", TokenRequest("r"))).identity.name == "id-a"


async def test_a_watch_breaking_while_a_standard_mode_request_waits_ends_the_wait_with_503():
    app = pod("app", "10.0.0.5", label="sel")
    catalog = Catalog(bound=[binding("b1", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    health = synced(POD_CACHE, "azureidentities", "azureidentitybindings", "azureassignedidentities")
    broker = TokenBroker(Pods(app), catalog, Tokens(), policy=BrokerPolicy(mode=STANDARD, wait_for_created=80,
                                                                          wait_total=100), caches=health)
    waiting = asyncio.create_task(broker.for_caller("10.0.0.5", TokenRequest("r")))
    await eventually(lambda: catalog.waits == 1, timeout=5, interval=0)  # waiting for a change
    assert not waiting.done()
    health.failed("azureidentitybindings", "watch", "ConnectionRefusedError")
    catalog.put_assignment(assignment(app, catalog.ids[0], "Assigned"))  # an event on another, healthy watch
    with pytest.raises(CachesNotTrusted):
        await asyncio.wait_for(waiting, 10)
