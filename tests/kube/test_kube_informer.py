"""The informer driving the real `kubernetes` client against the fake API server over loopback HTTP."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from fakes.apiserver import (
    make_deployment,
    make_replicaset,
    make_assigned_identity,
    make_binding,
    make_exception,
    make_identity,
    make_pod,
)
from nmi.kube import Informer, backoff_delay, node_informers, pods_target
from nmi.model import Workload
from nmi.workloads import WorkloadIndex

from .conftest import NODE, eventually, running


def pod_informer(api_client, index, **options) -> Informer:
    options.setdefault("watch_timeout_seconds", 30)
    return Informer(pods_target(api_client, NODE), index, **options)


async def test_initial_list_fills_the_index_and_sets_synced(apiserver, api_client):
    apiserver.put(make_pod("web", ip="10.244.0.7", labels={"aadpodidbinding": "web"}))
    index = PodIndex()
    informer = pod_informer(api_client, index)
    assert not informer.synced.is_set()
    async with running(informer):
        pod = await index.pod_for_ip("10.244.0.7")
        assert (pod.namespace, pod.name, pod.labels["aadpodidbinding"]) == ("default", "web", "web")
        assert informer.resource_version == str(apiserver.state.resource_version)


async def test_watch_applies_added_modified_and_deleted(apiserver, api_client):
    index = PodIndex()
    async with running(pod_informer(api_client, index)):
        apiserver.put(make_pod("web", ip="10.244.0.7", phase="Pending"))
        await eventually(lambda: index.pod_by_name("default", "web") is not None)
        apiserver.put(make_pod("web", ip="10.244.0.7", labels={"v": "2"}))
        await eventually(lambda: index.pod_by_name("default", "web").labels.get("v") == "2")
        assert index.pod_by_name("default", "web").phase == "Running"
        apiserver.delete("Pod", "default", "web")
        await eventually(lambda: index.pod_by_name("default", "web") is None)
        assert index.live_pods_with_ip("10.244.0.7") == []


async def test_a_burst_of_events_is_applied_in_order_and_a_change_after_the_burst_still_arrives(apiserver, api_client):
    # During a burst the loop takes queued changes in batches instead of being woken per event; once the burst is
    # over it must stop looking, and the next change must wake it again.
    index = PodIndex()
    informer = pod_informer(api_client, index)
    async with running(informer):
        for n in range(200):
            apiserver.put(make_pod(f"web-{n % 20}", ip=f"10.244.0.{n % 20 + 1}", labels={"n": str(n)}))
        await eventually(lambda: all(index.pod_by_name("default", f"web-{n}") is not None
                                     and index.pod_by_name("default", f"web-{n}").labels["n"] == str(180 + n)
                                     for n in range(20)))
        await eventually(lambda: not informer._wakeup_pending)  # the burst is over: the loop stopped looking
        apiserver.delete("Pod", "default", "web-3")
        await eventually(lambda: index.pod_by_name("default", "web-3") is None)
        assert informer.resource_version == str(apiserver.state.resource_version)


async def test_pods_of_other_nodes_are_never_indexed(apiserver, api_client):
    apiserver.put(make_pod("elsewhere", ip="10.244.1.9", node="node-2"))
    index = PodIndex()
    async with running(pod_informer(api_client, index)):
        apiserver.put(make_pod("also-elsewhere", ip="10.244.1.10", node="node-2"))
        apiserver.put(make_pod("here", ip="10.244.0.8"))
        await eventually(lambda: index.pod_by_name("default", "here") is not None)
        assert index.pods_indexed == 1
        assert all(r.query["fieldSelector"] == "spec.nodeName=node-1" for r in apiserver.requests_for("pods"))


async def test_a_bookmark_advances_the_resource_version_used_by_the_next_watch(apiserver, api_client):
    index = PodIndex()
    apiserver.put(make_pod("web", ip="10.244.0.7"))
    informer = pod_informer(api_client, index)
    async with running(informer):
        listed_at = informer.resource_version
        await eventually(lambda: apiserver.open_watches("pods") == 1)
        apiserver.put(make_pod("other-node", ip="10.244.1.1", node="node-2"))  # bumps the RV, filtered out
        apiserver.bookmark_now()
        await eventually(lambda: informer.resource_version != listed_at)
        bookmarked = informer.resource_version
        assert bookmarked == str(apiserver.state.resource_version)
        apiserver.close_watches()
        await eventually(lambda: apiserver.count("pods", "watch") == 2)
        watches = apiserver.requests_for("pods", "watch")
        assert [w.query["resourceVersion"] for w in watches] == [listed_at, bookmarked]
        assert all(w.query["allowWatchBookmarks"] == "true" and w.query["timeoutSeconds"] == "30" for w in watches)
        assert apiserver.count("pods", "list") == 1


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
async def test_expired_resource_version_relists_and_drops_objects_deleted_while_disconnected(
    apiserver, api_client, as_http_status, recording_sleep
):
    apiserver.expire_with_http_410 = as_http_status
    apiserver.put(make_pod("stays", ip="10.244.0.7"))
    apiserver.put(make_pod("goes", ip="10.244.0.8"))
    index = PodIndex()
    restarts: list[tuple[str, str]] = []
    informer = pod_informer(api_client, index, sleep=recording_sleep,
                            on_restart=lambda resource, reason: restarts.append((resource, reason)))
    async with running(informer):
        assert index.pods_indexed == 2
        apiserver.delete("Pod", "default", "goes", notify=False)
        apiserver.put(make_pod("arrived", ip="10.244.0.9"), notify=False)
        apiserver.compact()
        apiserver.close_watches()
        await eventually(lambda: informer.relists == 1)
        assert index.pod_by_name("default", "goes") is None
        assert index.pod_by_name("default", "arrived") is not None
        assert index.pod_by_name("default", "stays") is not None
        assert ("pods", "expired") in restarts
        assert apiserver.count("pods", "list") == 2


async def test_server_errors_back_off_with_growing_delays_then_recover(apiserver, api_client, recording_sleep):
    apiserver.put(make_pod("web", ip="10.244.0.7"))
    apiserver.fail_next(3, status=500, verb="list")
    errors: list[tuple[str, str]] = []
    informer = pod_informer(
        api_client, PodIndex(), sleep=recording_sleep, backoff=lambda n: backoff_delay(n, rand=lambda: 1.0),
        on_api_error=lambda resource, op: errors.append((resource, op)),
    )
    async with running(informer):
        assert recording_sleep.delays == [0.5, 1.0, 2.0]
        assert errors == [("pods", "list")] * 3
        assert apiserver.count("pods", "list") == 4


async def test_a_dropped_watch_connection_is_retried_and_no_event_is_lost(apiserver, api_client, recording_sleep):
    index = PodIndex()
    informer = pod_informer(api_client, index, sleep=recording_sleep, min_watch_seconds=0)
    async with running(informer):
        await eventually(lambda: apiserver.open_watches("pods") == 1)
        apiserver.fail_next(4, status=None, verb="watch")  # urllib3 itself retries a dropped request 3 times
        apiserver.close_watches()
        await eventually(lambda: informer.errors == 1)
        apiserver.put(make_pod("web", ip="10.244.0.7"))
        await eventually(lambda: index.pod_by_name("default", "web") is not None)
        assert len(recording_sleep.delays) == 1
        assert apiserver.count("pods", "list") == 1


async def test_watch_streams_are_held_open_not_polled(apiserver, api_client):
    informer = pod_informer(api_client, PodIndex())
    async with running(informer):
        await asyncio.sleep(0.3)  # a client in a tight re-watch loop makes thousands of requests here
        assert apiserver.count("pods", "watch") == 1
        assert apiserver.open_watches("pods") == 1


async def test_streams_that_end_at_once_are_rewatched_with_backoff(apiserver, api_client, recording_sleep):
    informer = pod_informer(api_client, PodIndex(), sleep=recording_sleep, min_watch_seconds=60)
    async with running(informer):
        for _ in range(3):
            await eventually(lambda: apiserver.open_watches("pods") == 1)
            apiserver.close_watches()
            await eventually(lambda: apiserver.open_watches("pods") == 0)
        await eventually(lambda: len(recording_sleep.delays) == 3)
        assert recording_sleep.delays[0] < recording_sleep.delays[2]
        assert apiserver.count("pods", "list") == 1


async def test_a_malformed_object_is_skipped_and_the_watch_goes_on(apiserver, api_client, caplog):
    index = PodIndex()
    informer = pod_informer(api_client, index)
    async with running(informer):
        bad = make_pod("bad", ip="10.244.0.6")
        bad["metadata"]["labels"] = ["not", "a", "map"]
        apiserver.put(bad)
        apiserver.put(make_pod("good", ip="10.244.0.7"))
        await eventually(lambda: index.pod_by_name("default", "good") is not None)
        assert index.pod_by_name("default", "bad") is None
        assert informer.errors == 0
        assert "skipping malformed Pod default/bad" in caplog.text


async def test_a_pod_that_becomes_malformed_leaves_the_index(apiserver, api_client):
    index = PodIndex()
    apiserver.put(make_pod("web", ip="10.244.0.7"))
    async with running(pod_informer(api_client, index)):
        bad = make_pod("web", ip="10.244.0.7")
        bad["spec"]["serviceAccountName"] = 42
        apiserver.put(bad)
        await eventually(lambda: index.pod_by_name("default", "web") is None)


async def test_cancelling_run_stops_the_thread_promptly(apiserver, api_client):
    informer = pod_informer(api_client, PodIndex(), watch_timeout_seconds=300)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    await eventually(lambda: apiserver.open_watches("pods") == 1)
    threads = [t for t in threading.enumerate() if t.name == "informer-pods"]
    assert len(threads) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    threads[0].join(timeout=5)  # bounds a failure; the shutdown above makes this immediate
    assert not threads[0].is_alive()


async def test_managed_mode_watches_identities_bindings_exceptions_and_pods(apiserver, api_client):
    apiserver.put(make_identity("id-a", "team-a", client_id="cid-a"))
    apiserver.put(make_binding("bind-a", "team-a", identity="id-a", selector="a", weight="3"))
    apiserver.put(make_exception("exc", "team-a", pod_labels={"app": "mic"}))
    pods, identities = PodIndex(), IdentityIndex()
    informers = node_informers(api_client, node=NODE, pods=pods, identities=identities, managed=True,
                               watch_timeout_seconds=30)
    async with running(*informers):
        assert [i.client_id for i in identities.identities("team-a")] == ["cid-a"]
        assert [(b.identity_name, b.weight) for b in identities.bindings("team-a")] == [("id-a", 3)]
        assert identities.exceptions("team-a")[0].pod_labels == {"app": "mic"}
        apiserver.put(make_identity("id-b", "team-a", client_id="cid-b"))
        assert await identities.wait_changed(5)
        await eventually(lambda: len(identities.identities("team-a")) == 2)
    listed = {r.resource for r in apiserver.requests if r.verb == "list"}
    assert listed == {"pods", "azureidentities", "azureidentitybindings", "azurepodidentityexceptions"}
    assert not apiserver.requests_for("azureassignedidentities")  # no MIC in managed mode


async def test_standard_mode_with_scale_features_watches_assigned_identities_of_this_node_only(apiserver, api_client):
    identity = make_identity("id-a", "default", client_id="cid-a")
    apiserver.put(make_assigned_identity("web-id-a", pod="web", node=NODE, identity=identity, status="Created"))
    apiserver.put(make_assigned_identity("far-id-a", pod="far", node="node-2", identity=identity))
    pods, identities = PodIndex(), IdentityIndex()
    informers = node_informers(api_client, node=NODE, pods=pods, identities=identities, managed=False,
                               scale_features=True, watch_timeout_seconds=30)
    async with running(*informers):
        assert [a.status for a in identities.assigned("default", "web")] == ["Created"]
        assert identities.assigned("default", "far") == []
        apiserver.put(make_assigned_identity("web-id-a", pod="web", node=NODE, identity=identity, status="Assigned"))
        await eventually(lambda: identities.assigned("default", "web")[0].status == "Assigned")
        assert identities.assigned("default", "web")[0].identity.client_id == "cid-a"
    assigned = apiserver.requests_for("azureassignedidentities")
    assert {r.query.get("labelSelector") for r in assigned} == {"nodename=node-1"}
    assert apiserver.count("azureidentitybindings", "list") == 1  # a pod no binding selects must fail fast


async def test_standard_mode_watches_replicasets_and_deployment_mic_of_the_mic_namespace(apiserver, api_client):
    apiserver.put(make_deployment("mic", "aad", uid="uid-d"))
    apiserver.put(make_deployment("mickey", "aad", uid="uid-m"))
    apiserver.put(make_replicaset("mic-1a", "aad", uid="uid-rs", deployment="mic", deployment_uid="uid-d"))
    apiserver.put(make_replicaset("mic-1a", "elsewhere", uid="uid-other"))
    workloads = WorkloadIndex()
    informers = node_informers(api_client, node=NODE, pods=PodIndex(), identities=IdentityIndex(), managed=False,
                               mic_namespace="aad", workloads=workloads, watch_timeout_seconds=30)
    async with running(*informers):
        assert workloads.replicaset("aad", "mic-1a") == Workload("aad", "mic-1a", "uid-rs", "Deployment", "mic", "uid-d")
        assert workloads.deployment("aad", "mic").uid == "uid-d"
        assert workloads.deployment("aad", "mickey") is None and workloads.replicaset("elsewhere", "mic-1a") is None
        apiserver.delete("Deployment", "aad", "mic")
        await eventually(lambda: workloads.deployment("aad", "mic") is None)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    assert backoff_delay(1, rand=lambda: 1.0) == 0.5
    assert backoff_delay(4, rand=lambda: 1.0) == 4.0
    assert backoff_delay(4, rand=lambda: 0.0) == 2.0
    assert backoff_delay(50, rand=lambda: 1.0) == 30.0


async def test_a_store_that_fails_makes_run_fail_instead_of_serving_a_broken_cache(apiserver, api_client):
    class BrokenStore(PodIndex):
        def upsert(self, item):
            raise KeyError("bug")

    informer = pod_informer(api_client, BrokenStore())
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    apiserver.put(make_pod("web", ip="10.244.0.7"))
    with pytest.raises(KeyError):
        await asyncio.wait_for(task, 5)


async def test_initial_list_is_read_in_pages_and_keeps_every_object(apiserver, api_client):
    for n in range(23):
        apiserver.put(make_pod(f"p{n:02d}", ip=f"10.244.0.{n + 10}"))
    apiserver.put(make_pod("other-node", ip="10.244.1.1", node="node-2"))
    index = PodIndex()
    informer = pod_informer(api_client, index, list_page=10)
    async with running(informer):
        await informer.synced.wait()
        assert sorted(p.name for p in (index.pod_by_name("default", f"p{n:02d}") for n in range(23)) if p) == [
            f"p{n:02d}" for n in range(23)]
        assert index.pod_by_name("default", "other-node") is None
        lists = apiserver.requests_for("pods", "list")
        assert [r.query.get("limit") for r in lists] == ["10", "10", "10"]
        assert [r.query.get("continue") for r in lists] == [None, "10", "20"]
        assert informer.resource_version == str(apiserver.state.resource_version)
        apiserver.put(make_pod("late", ip="10.244.0.99"))  # the watch goes on from the list's snapshot
        await eventually(lambda: index.pod_by_name("default", "late") is not None)
