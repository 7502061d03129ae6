"""The decision memo never answers with an identity the pod no longer has (SPEC §7): every change to what
resolution reads — a binding, an identity, an exception, MIC's assignment or workloads, the pod itself, the IP's
owner, the active windows — is seen by the very next request. Real indexes, the broker, a token double."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from nmi.errors import AccessDenied, IdentityNotFound, PodNotFound
from nmi.model import PodIdentityException, TokenRequest, Workload
from nmi.windows import parse_windows
from nmi.workloads import WorkloadIndex

from tests.core.doubles import Tokens, assignment, binding, identity, pod

ARM = TokenRequest(resource="https://management.azure.com/")
IP = "10.244.0.7"


class WallClock:
    def __init__(self, at: float) -> None:
        self.now = at

    def __call__(self) -> float:
        return self.now


def world(mode: str = MANAGED, *, at: float = 1_800_000_000.25):
    pods, catalog, workloads, tokens = PodIndex(), IdentityIndex(), WorkloadIndex(), Tokens()
    clock = WallClock(at)
    broker = TokenBroker(pods, catalog, tokens, policy=BrokerPolicy(mode=mode), wall_clock=clock,
                         service_accounts=catalog, workloads=workloads if mode == STANDARD else None)
    catalog.identity_store.replace([identity("id-a", "client-a"), identity("id-b", "client-b")])
    catalog.binding_store.replace([binding("bind-a", "id-a", "sel-a"), binding("bind-b", "id-b", "sel-b")])
    pods.replace([pod("web", IP, label="sel-a")])
    return broker, pods, catalog, workloads, clock


async def client_of(broker: TokenBroker, request: TokenRequest = ARM) -> str:
    outcome = await broker.for_caller(IP, request)
    return outcome.grant.primary.client_id


async def test_repeated_requests_are_answered_from_the_memo():
    broker, *_ = world()
    assert await client_of(broker) == "client-a"
    first = broker.decide(await broker.caller(IP), ARM)
    assert broker.decide(await broker.caller(IP), ARM) is first  # remembered, not resolved again


async def test_attack_binding_removed_the_next_request_is_refused():
    broker, _, catalog, _, _ = world()
    assert await client_of(broker) == "client-a"
    catalog.binding_store.discard("default", "bind-a")
    with pytest.raises(IdentityNotFound):
        await client_of(broker)


async def test_attack_identity_changed_the_next_request_gets_the_new_client_id():
    broker, _, catalog, _, _ = world()
    assert await client_of(broker) == "client-a"
    catalog.identity_store.upsert(identity("id-a", "client-a2"))
    assert await client_of(broker) == "client-a2"


async def test_attack_pod_relabelled_the_next_request_gets_the_other_identity():
    broker, pods, _, _, _ = world()
    assert await client_of(broker) == "client-a"
    pods.upsert(pod("web", IP, label="sel-b"))
    assert await client_of(broker) == "client-b"
    pods.upsert(pod("web", IP))  # no label at all
    with pytest.raises(IdentityNotFound):
        await client_of(broker)


async def test_attack_ip_reused_by_a_pod_of_another_namespace_never_gets_the_old_identity():
    broker, pods, _, _, _ = world()
    assert await client_of(broker) == "client-a"
    pods.discard("default", "web")
    with pytest.raises(PodNotFound):
        await client_of(broker)
    pods.upsert(pod("thief", IP, ns="other", label="sel-a"))  # same label, another namespace: no binding there
    with pytest.raises(IdentityNotFound):
        await client_of(broker)


async def test_attack_an_exception_added_turns_the_pod_to_the_node_identity_at_once():
    broker, _, catalog, _, _ = world()
    assert await client_of(broker) == "client-a"
    catalog.exception_store.upsert(PodIdentityException(namespace="default", name="ex", pod_labels={"aadpodidbinding": "sel-a"}))
    assert await client_of(broker) == "node-system"


async def test_attack_a_selector_is_never_answered_from_another_selectors_memo():
    broker, _, catalog, _, _ = world()
    catalog.binding_store.upsert(binding("bind-a2", "id-b", "sel-a"))  # the pod has both identities now
    assert await client_of(broker, replace(ARM, client_id="client-b")) == "client-b"
    assert await client_of(broker, replace(ARM, client_id="client-a")) == "client-a"
    with pytest.raises(IdentityNotFound):
        await client_of(broker, replace(ARM, client_id="client-c"))


async def test_attack_a_window_that_closes_is_seen_within_the_same_request_second_it_closes_in():
    # The window closes at 01:00 Berlin: a decision made one microsecond before is not used at 01:00:00.
    closing = datetime(2026, 12, 8, 0, 0, tzinfo=timezone.utc).timestamp()  # Tuesday 01:00 in Berlin
    broker, _, catalog, _, clock = world(at=closing - 0.5)
    windowed = replace(binding("bind-a", "id-a", "sel-a"), windows=parse_windows("Mon-Fri 00:00-01:00 Europe/Berlin"))
    catalog.binding_store.upsert(windowed)
    assert await client_of(broker) == "client-a"
    clock.now = closing - 0.000001
    assert await client_of(broker) == "client-a"
    clock.now = closing
    with pytest.raises(AccessDenied):
        await client_of(broker)


async def test_attack_standard_mode_assignment_removed_and_mic_workloads_changed_are_seen():
    broker, pods, catalog, workloads, _ = world(STANDARD)
    web = await broker.caller(IP)
    catalog.assigned_store.replace([assignment(web, identity("id-a", "client-a"), "Assigned")])
    assert await client_of(broker) == "client-a"
    # MIC's own pod gets the node's identity only through the owner chain (workloads): it appears, it is used.
    mic = replace(web, replicaset="mic-rs", replicaset_uid="rs-uid")
    pods.upsert(mic)
    assert await client_of(broker) == "client-a"
    workloads.replicaset_store.upsert(Workload(namespace="default", name="mic-rs", uid="rs-uid",
                                               owner_kind="Deployment", owner_name="mic", owner_uid="dep-uid"))
    workloads.deployment_store.upsert(Workload(namespace="default", name="mic", uid="dep-uid"))
    assert await client_of(broker) == "node-system"
    workloads.deployment_store.discard("default", "mic")
    assert await client_of(broker) == "client-a"
