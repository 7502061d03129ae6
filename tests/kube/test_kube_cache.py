"""PodIndex and IdentityIndex as plain objects: IP ownership, live lookups, conflicts, change notification."""

from __future__ import annotations

import asyncio

import pytest

from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from nmi.errors import PodConflict, PodNotFound, Unavailable
from nmi.model import AssignedIdentity, Binding, Identity, PodInfo


def pod(name: str, ip: str = "10.244.0.5", *, uid: str | None = None, rv: str = "10", **fields) -> PodInfo:
    return PodInfo(namespace="default", name=name, uid=uid or f"uid-{name}", ip=ip, resource_version=rv, **fields)


class ScriptedLookup:
    """A live lookup answering from a dict, counting calls; `gate` lets a test hold the answer back."""

    def __init__(self, answers: dict[str, list[PodInfo]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, ip: str) -> list[PodInfo]:
        self.calls.append(ip)
        if self.gate is not None:
            await self.gate.wait()
        return list(self.answers.get(ip, []))


async def test_a_cached_pod_is_found_without_a_live_lookup():
    lookup = ScriptedLookup()
    index = PodIndex(lookup)
    index.replace([pod("web")])
    assert (await index.pod_for_ip("10.244.0.5")).name == "web"
    assert lookup.calls == []


async def test_an_unknown_ip_gets_pod_not_found_with_retry_after():
    index = PodIndex(ScriptedLookup())
    with pytest.raises(PodNotFound) as caught:
        await index.pod_for_ip("10.244.0.99")
    assert caught.value.status == 503 and caught.value.retry_after


async def test_a_miss_is_answered_by_one_live_lookup_whose_result_is_kept():
    lookup = ScriptedLookup({"10.244.0.6": [pod("new", "10.244.0.6")]})
    index = PodIndex(lookup)
    assert (await index.pod_for_ip("10.244.0.6")).name == "new"
    assert (await index.pod_for_ip("10.244.0.6")).name == "new"
    assert lookup.calls == ["10.244.0.6"]
    assert index.pod_by_name("default", "new") is not None


async def test_concurrent_misses_for_one_ip_share_a_single_lookup():
    lookup = ScriptedLookup({"10.244.0.6": [pod("new", "10.244.0.6")]})
    lookup.gate = asyncio.Event()
    index = PodIndex(lookup)
    waiting = [asyncio.create_task(index.pod_for_ip("10.244.0.6")) for _ in range(10)]
    await asyncio.sleep(0)
    lookup.gate.set()
    assert {p.name for p in await asyncio.gather(*waiting)} == {"new"}
    assert lookup.calls == ["10.244.0.6"]


async def test_a_recent_miss_is_not_looked_up_again_until_it_expires():
    now = [100.0]
    lookup = ScriptedLookup()
    index = PodIndex(lookup, negative_ttl=1.0, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(PodNotFound):
            await index.pod_for_ip("127.0.0.1")
    assert lookup.calls == ["127.0.0.1"]
    now[0] += 1.5
    with pytest.raises(PodNotFound):
        await index.pod_for_ip("127.0.0.1")
    assert lookup.calls == ["127.0.0.1", "127.0.0.1"]


async def test_a_watch_event_clears_a_remembered_miss():
    index = PodIndex(ScriptedLookup(), clock=lambda: 0.0)
    with pytest.raises(PodNotFound):
        await index.pod_for_ip("10.244.0.6")
    index.upsert(pod("arrived", "10.244.0.6"))
    assert (await index.pod_for_ip("10.244.0.6")).name == "arrived"


async def test_a_failing_live_lookup_becomes_pod_not_found():
    async def unreachable(ip: str) -> list[PodInfo]:
        raise Unavailable("The Kubernetes API server could not be reached")

    with pytest.raises(PodNotFound) as caught:
        await PodIndex(unreachable).pod_for_ip("10.244.0.6")
    assert caught.value.retry_after


async def test_two_live_pods_with_one_ip_are_a_conflict_never_a_pod():
    conflicts = []
    index = PodIndex(on_conflict=lambda ip, pods: conflicts.append((ip, [p.name for p in pods])))
    index.replace([pod("a"), pod("b")])
    with pytest.raises(PodConflict) as caught:
        await index.pod_for_ip("10.244.0.5")
    assert caught.value.status == 503 and caught.value.retry_after
    assert conflicts == [("10.244.0.5", ["a", "b"])]


@pytest.mark.parametrize("ending", ["deleted", "Succeeded", "Failed", "deleting"])
async def test_an_ip_passes_to_the_new_pod_once_the_old_one_ends(ending):
    index = PodIndex()
    index.replace([pod("old", rv="10")])
    if ending == "deleted":
        index.discard("default", "old")
    elif ending == "deleting":
        index.upsert(pod("old", rv="11", deleting=True))
    else:
        index.upsert(pod("old", rv="11", phase=ending))
    index.upsert(pod("new", rv="12"))
    assert (await index.pod_for_ip("10.244.0.5")).name == "new"


async def test_a_stale_old_pod_and_a_new_pod_on_one_ip_conflict():
    index = PodIndex()
    index.replace([pod("old")])  # the old pod's end has not been seen yet
    index.upsert(pod("new", rv="12"))
    with pytest.raises(PodConflict):
        await index.pod_for_ip("10.244.0.5")


async def test_a_pod_being_deleted_does_not_answer_for_its_ip():
    index = PodIndex(ScriptedLookup())
    index.replace([pod("leaving", deleting=True)])
    assert index.pod_by_name("default", "leaving") is not None
    with pytest.raises(PodNotFound):
        await index.pod_for_ip("10.244.0.5")


async def test_a_slow_live_lookup_cannot_resurrect_a_pod_the_watch_deleted():
    lookup = ScriptedLookup({"10.244.0.5": [pod("old", rv="10")]})
    lookup.gate = asyncio.Event()
    index = PodIndex(lookup)
    waiting = asyncio.create_task(index.pod_for_ip("10.244.0.5"))
    await asyncio.sleep(0)
    index.upsert(pod("old", rv="10"))
    index.discard("default", "old")  # the watch saw it go while the lookup was in flight
    lookup.gate.set()
    with pytest.raises(PodNotFound):
        await waiting
    assert index.pod_by_name("default", "old") is None


async def test_a_live_lookup_result_older_than_the_watch_state_is_ignored():
    lookup = ScriptedLookup({"10.244.0.5": [pod("job", rv="10")]})
    lookup.gate = asyncio.Event()
    index = PodIndex(lookup)
    waiting = asyncio.create_task(index.pod_for_ip("10.244.0.5"))
    await asyncio.sleep(0)
    index.upsert(pod("job", rv="11", phase="Succeeded"))
    lookup.gate.set()
    with pytest.raises(PodNotFound):
        await waiting
    assert index.pod_by_name("default", "job").phase == "Succeeded"


def test_a_relist_replaces_everything():
    index = PodIndex()
    index.replace([pod("a", "10.244.0.1"), pod("b", "10.244.0.2")])
    index.replace([pod("b", "10.244.0.2"), pod("c", "10.244.0.3")])
    assert index.pods_indexed == 2
    assert index.pod_by_name("default", "a") is None
    assert index.pod_by_name("default", "c").uid == "uid-c"
    assert index.live_pods_with_ip("10.244.0.1") == []


def test_a_pod_recreated_under_the_same_name_replaces_the_old_one():
    index = PodIndex()
    index.replace([pod("web", "10.244.0.1", uid="u1")])
    index.upsert(pod("web", "10.244.0.9", uid="u2", rv="5"))  # new uid: RV order does not apply
    assert index.pod_by_name("default", "web").uid == "u2"
    assert index.live_pods_with_ip("10.244.0.1") == []
    index.upsert(pod("web", "10.244.0.1", uid="u1", rv="99"))  # the old incarnation never comes back
    assert index.pod_by_name("default", "web").uid == "u2"


def test_on_size_is_told_the_count_after_each_pod_change():
    changes = []
    index = PodIndex(on_size=changes.append)
    index.replace([pod("a")])
    index.upsert(pod("b", "10.244.0.6"))
    index.discard("default", "a")
    index.discard("default", "never-there")
    assert changes == [1, 2, 1]


def identity(name: str, namespace: str = "default") -> Identity:
    return Identity(namespace=namespace, name=name, client_id=f"cid-{name}")


def test_identity_objects_are_grouped_by_namespace_and_sorted_by_name():
    index = IdentityIndex()
    index.identity_store.replace([identity("b"), identity("a"), identity("z", "other")])
    index.binding_store.upsert(Binding(namespace="default", name="bind", identity_name="a", selector="a"))
    assert [i.name for i in index.identities("default")] == ["a", "b"]
    assert [i.name for i in index.identities("other")] == ["z"]
    assert [b.name for b in index.bindings("default")] == ["bind"]
    assert index.bindings("other") == [] and index.exceptions("default") == []
    index.binding_store.upsert(Binding(namespace="a-first", name="z", identity_name="z", selector="z"))
    assert [(b.namespace, b.name) for b in index.bindings(None)] == [("a-first", "z"), ("default", "bind")]


def test_assigned_identities_are_found_by_the_pod_they_name():
    index = IdentityIndex()
    assigned = AssignedIdentity(namespace="default", name="web-a", pod="web", pod_namespace="team",
                                node="node-1", status="Assigned", identity=identity("a"))
    index.assigned_store.upsert(assigned)
    assert index.assigned("team", "web") == [assigned]
    index.assigned_store.discard("default", "web-a")
    assert index.assigned("team", "web") == []


async def test_wait_changed_wakes_on_a_change_and_times_out_without_one():
    changes = []
    index = IdentityIndex(on_change=lambda: changes.append(index.generation))
    assert await index.wait_changed(0.01) is False
    waiter = asyncio.create_task(index.wait_changed(5))
    await asyncio.sleep(0)
    index.assigned_store.replace([])
    assert await waiter is True
    assert changes == [1]


async def test_host_network_pods_are_never_identified_by_the_node_address_they_share():
    from nmi.pod_index import PodIndex
    from nmi.errors import PodNotFound
    from nmi.model import PodInfo

    index = PodIndex()
    index.upsert(PodInfo("kube-system", "kube-proxy-x", "u1", "10.240.0.4", host_network=True,
                         labels={"aadpodidbinding": "node-admin"}))
    with pytest.raises(PodNotFound):
        await index.pod_for_ip("10.240.0.4")
    assert index.pod_by_name("kube-system", "kube-proxy-x") is not None  # still known by name (/host/token)
