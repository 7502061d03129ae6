import asyncio

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, PodNotOnNode, TokenBroker
from nmi.errors import IdentityNotAssigned, IdentityNotFound, PodConflict, PodNotFound, Unavailable
from nmi.model import PodIdentityException, TokenRequest, Workload

from tests.core.doubles import Catalog, Pods, Tokens, assignment, binding, identity, pod
from tests.eventually import eventually

MANAGED_POLICY = BrokerPolicy(mode=MANAGED, namespaced=True)


def managed_world():
    app = pod("app", "10.0.0.5", label="sel")
    other = pod("other", "10.0.0.6", label="nothing")
    catalog = Catalog(bound=[binding("b1", "id-a", "sel"), binding("b2", "id-b", "sel", weight=3)],
                      ids=[identity("id-a", "client-a"), identity("id-b", "client-b"), identity("id-c", "client-c")])
    return Pods(app, other), catalog, Tokens()


async def test_pod_with_several_identities_gets_the_highest_weight_one_every_time():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    for _ in range(5):
        outcome = await broker.for_caller("10.0.0.5", TokenRequest("https://vault.azure.net"))
        assert outcome.identity.name == "id-b"
        assert outcome.grant.primary.client_id == "client-b"


async def test_requested_identity_among_the_pods_identities_is_used():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    outcome = await broker.for_caller("10.0.0.5", TokenRequest("r", client_id="CLIENT-A"))
    assert outcome.identity.name == "id-a"
    outcome = await broker.for_caller("10.0.0.5", TokenRequest("r", resource_id=catalog.ids[0].resource_id))
    assert outcome.identity.name == "id-a"


async def test_requested_identity_not_bound_to_the_pod_is_identity_not_found_never_another():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    with pytest.raises(IdentityNotFound) as info:
        await broker.for_caller("10.0.0.5", TokenRequest("r", client_id="client-c"))
    assert info.value.status == 400 and info.value.description == "Identity not found"
    assert tokens.calls == []


async def test_unbound_pod_fails_fast_with_identity_not_found():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    with pytest.raises(IdentityNotFound):
        await broker.for_caller("10.0.0.6", TokenRequest("r"))


async def test_object_id_is_matched_against_tokens_of_the_pods_own_identities():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    outcome = await broker.for_caller("10.0.0.5", TokenRequest("r", object_id="OID-CLIENT-A"))
    assert outcome.identity.name == "id-a"
    with pytest.raises(IdentityNotFound):
        await broker.for_caller("10.0.0.5", TokenRequest("r", object_id="oid-client-c"))
    assert all(key != "default/id-c" for key, _ in tokens.calls)


async def test_unknown_caller_and_ip_conflicts_propagate_as_503():
    pods, catalog, tokens = managed_world()
    pods.pods.append(pod("twin", "10.0.0.5", label="sel"))
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    with pytest.raises(PodNotFound) as info:
        await broker.for_caller("10.9.9.9", TokenRequest("r"))
    assert info.value.status == 503 and info.value.retry_after
    with pytest.raises(PodConflict):
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert tokens.calls == []


async def test_exception_pod_gets_the_node_identity_honouring_client_id():
    pods, catalog, tokens = managed_world()
    pods.pods.append(pod("sys", "10.0.0.9", labels={"component": "system"}))
    catalog.excepts.append(PodIdentityException("default", "exc", {"component": "SYSTEM"}))
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    outcome = await broker.for_caller("10.0.0.9", TokenRequest("r", client_id="node-uami"))
    assert outcome.identity is None and tokens.calls == [("node:node-uami", "r")]
    await broker.for_caller("10.0.0.9", TokenRequest("r", resource_id="/sub/x"))
    assert tokens.calls[-1] == ("node:/sub/x", "r")
    await broker.for_caller("10.0.0.9", TokenRequest("r", object_id="oid-node-uami"))
    assert tokens.calls[-1] == ("node:oid-node-uami", "r")


async def test_host_token_for_named_pod_and_unknown_pod():
    pods, catalog, tokens = managed_world()
    broker = TokenBroker(pods, catalog, tokens, policy=MANAGED_POLICY)
    outcome = await broker.for_named_pod("default", "app", TokenRequest("r"))
    assert outcome.identity.name == "id-b"
    with pytest.raises(PodNotOnNode):
        await broker.for_named_pod("default", "ghost", TokenRequest("r"))


def standard_world(**policy):
    app = pod("app", "10.0.0.5", label="sel")
    catalog = Catalog(bound=[binding("b1", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    return app, Pods(app), catalog, Tokens(), BrokerPolicy(mode=STANDARD, **policy)


async def test_standard_mode_answers_as_soon_as_the_informer_sees_the_identity_assigned():
    app, pods, catalog, tokens, policy = standard_world(wait_for_created=80, wait_total=100)
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    task = asyncio.create_task(broker.for_caller("10.0.0.5", TokenRequest("r")))
    await eventually(lambda: catalog.waits == 1, timeout=5, interval=0)  # waiting for a change
    assert not task.done()
    catalog.put_assignment(assignment(app, catalog.ids[0], "Created"))
    await eventually(lambda: catalog.waits == 2, timeout=5, interval=0)  # woken, and waiting again
    assert not task.done()
    catalog.put_assignment(assignment(app, catalog.ids[0], "Assigned"))
    outcome = await asyncio.wait_for(task, 10)  # a poll would come after the 80 s budget's interval
    assert outcome.identity.name == "id-a"
    assert catalog.waits == 2  # one wait per change: woken by the changes, never by a timer


async def test_standard_mode_gives_up_after_the_created_budget_with_404():
    app, pods, catalog, tokens, policy = standard_world(wait_for_created=0.05, wait_total=0.2)
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    with pytest.raises(IdentityNotAssigned) as info:
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert info.value.status == 404 and "CREATED" in info.value.description


async def test_standard_mode_created_but_never_assigned_waits_the_total_budget():
    app, pods, catalog, tokens, policy = standard_world(wait_for_created=0.01, wait_total=0.1)
    catalog.assignments.append(assignment(app, catalog.ids[0], "Created"))
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    with pytest.raises(IdentityNotAssigned, match="ASSIGNED"):
        await broker.for_caller("10.0.0.5", TokenRequest("r"))


async def test_standard_mode_with_retry_after_flag_answers_503_retry_after_20():
    app, pods, catalog, tokens, policy = standard_world(wait_for_created=0.01, wait_total=0.02,
                                                         retry_after_while_waiting=True)
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    with pytest.raises(Unavailable) as info:
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert info.value.status == 503 and info.value.retry_after == 20


async def test_standard_mode_pod_matching_no_binding_fails_fast():
    app, pods, catalog, tokens, policy = standard_world()
    pods.pods.append(pod("lonely", "10.0.0.7", label="unbound"))
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    with pytest.raises(IdentityNotFound):
        await asyncio.wait_for(broker.for_caller("10.0.0.7", TokenRequest("r")), 1)
    with pytest.raises(IdentityNotFound):  # bound, but asks for an identity no binding gives it
        await asyncio.wait_for(broker.for_caller("10.0.0.5", TokenRequest("r", client_id="someone-else")), 1)


async def test_standard_mode_binding_in_other_namespace_counts_only_when_not_namespaced():
    app, pods, catalog, tokens, policy = standard_world(wait_for_created=0.01, wait_total=0.02)
    catalog.bound = [binding("b1", "id-x", "sel", ns="other")]
    catalog.ids = [identity("id-x", "client-x", ns="other")]
    broker = TokenBroker(pods, catalog, tokens, policy=policy)
    with pytest.raises(IdentityNotAssigned):  # MIC could still assign it: wait
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    namespaced = TokenBroker(pods, catalog, tokens, policy=BrokerPolicy(mode=STANDARD, namespaced=True))
    with pytest.raises(IdentityNotFound):
        await asyncio.wait_for(namespaced.for_caller("10.0.0.5", TokenRequest("r")), 1)


class Workloads:
    def __init__(self, *items: Workload) -> None:
        self.items = {(w.namespace, w.name): w for w in items}

    def replicaset(self, namespace: str, name: str) -> Workload | None:
        item = self.items.get((namespace, name))
        return item if item and item.owner_kind else None

    def deployment(self, namespace: str, name: str) -> Workload | None:
        item = self.items.get((namespace, name))
        return item if item and not item.owner_kind else None


async def test_mic_pod_gets_the_node_identity_in_standard_mode_only():
    workloads = Workloads(Workload("default", "mic-5d9", "uid-rs", "Deployment", "mic", "uid-d"),
                          Workload("default", "mic", "uid-d"))
    mic = pod("mic-5d9-x", "10.0.0.7", replicaset="mic-5d9", replicaset_uid="uid-rs")
    for mode, gets_node_identity in ((STANDARD, True), (MANAGED, False)):
        tokens = Tokens()
        broker = TokenBroker(Pods(mic), Catalog(), tokens, policy=BrokerPolicy(mode=mode, namespaced=mode == MANAGED),
                             workloads=workloads)
        if gets_node_identity:
            assert (await broker.for_caller("10.0.0.7", TokenRequest("r"))).identity is None
            assert tokens.calls == [("node:system", "r")]
        else:
            with pytest.raises(IdentityNotFound):
                await broker.for_caller("10.0.0.7", TokenRequest("r"))
            assert tokens.calls == []
