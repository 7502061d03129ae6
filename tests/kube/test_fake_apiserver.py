"""The fake API server's own wire behaviour, where the informer tests do not already pin it down."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from kubernetes import client as k8s_client

from fakes.apiserver import make_pod

from .conftest import TOKEN

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict]:
    events = []
    while len(events) < count:
        line = await asyncio.wait_for(response.content.readline(), 5)
        assert line.endswith(b"\n")
        events.append(json.loads(line))
    return events


async def test_a_pod_bound_to_this_node_arrives_as_added_and_leaving_the_selection_as_deleted(apiserver):
    unbound = make_pod("web", ip="", node="")
    apiserver.put(unbound)
    rv = apiserver.state.resource_version
    query = {"watch": "true", "resourceVersion": str(rv), "fieldSelector": "spec.nodeName=node-1"}
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.get(f"{apiserver.url}/api/v1/pods", params=query) as response:
            apiserver.put(make_pod("web", ip="10.244.0.7", node="node-1"))
            apiserver.put(make_pod("web", ip="10.244.0.7", node="node-9"))
            events = await read_events(response, 2)
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) < int(events[1]["object"]["metadata"]["resourceVersion"])


async def test_a_watch_without_resource_version_starts_with_the_current_objects(apiserver):
    apiserver.put(make_pod("a", labels={"tier": "x"}))
    apiserver.put(make_pod("b", labels={"tier": "y"}))
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        params = {"watch": "true", "labelSelector": "tier=y"}
        async with session.get(f"{apiserver.url}/api/v1/pods", params=params) as response:
            events = await read_events(response, 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]


async def test_a_watch_ends_at_its_timeout_seconds(apiserver):
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        params = {"watch": "true", "resourceVersion": str(apiserver.state.resource_version), "timeoutSeconds": "1"}
        async with session.get(f"{apiserver.url}/api/v1/pods", params=params) as response:
            assert await asyncio.wait_for(response.read(), 5) == b""


async def test_events_are_stored_with_201(apiserver):
    body = {"metadata": {"generateName": "web."}, "reason": "TokenIssued", "message": "m",
            "involvedObject": {"kind": "Pod", "namespace": "team", "name": "web"}}
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.post(f"{apiserver.url}/api/v1/namespaces/team/events", json=body) as response:
            assert response.status == 201
            stored = await response.json()
    assert stored["metadata"]["name"].startswith("web.") and stored["metadata"]["namespace"] == "team"
    assert [e["reason"] for e in apiserver.posted_events] == ["TokenIssued"]
    assert apiserver.count("events", "create") == 1


async def test_an_unknown_crd_plural_is_a_404_status(apiserver):
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.get(f"{apiserver.url}/apis/aadpodidentity.k8s.io/v1/bogus") as response:
            assert response.status == 404
            assert (await response.json())["kind"] == "Status"


async def test_schema_complete_pods_deserialize_in_the_real_client(apiserver, api_client):
    apiserver.put(make_pod("web", ip="10.244.0.7", replicaset="web-5d", deleting=True))
    pods = await asyncio.to_thread(k8s_client.CoreV1Api(api_client).list_pod_for_all_namespaces)
    assert [(p.metadata.name, p.status.pod_ip) for p in pods.items] == [("web", "10.244.0.7")]


@pytest.mark.parametrize("status", [500, None])
async def test_injected_faults_hit_only_the_next_matching_requests(apiserver, status):
    # aiohttp's client retries a GET whose connection drops once, so a drop must hit both attempts.
    apiserver.fail_next(1 if status else 2, status=status, path_prefix="/api/v1/pods")
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        with pytest.raises(aiohttp.ClientError) if status is None else _no_error():
            async with session.get(f"{apiserver.url}/api/v1/pods") as response:
                assert response.status == 500
        async with session.get(f"{apiserver.url}/api/v1/pods") as response:
            assert response.status == 200


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


async def list_pages(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[list[dict], list[str | None]]:
    """Every item of a paged list, and the continue token each page was asked with."""
    items: list[dict] = []
    asked: list[str | None] = [None]
    while True:
        query = dict(params, **({"continue": asked[-1]} if asked[-1] else {}))
        async with session.get(url, params=query) as response:
            assert response.status == 200 and response.content_type == "application/json"
            page = json.loads(await response.read())
        items += page["items"]
        if not page["metadata"].get("continue"):
            return items, asked
        asked.append(page["metadata"]["continue"])


async def test_lists_page_in_key_order_and_serve_each_object_as_last_stored(apiserver):
    # Namespaces where one is a prefix of another, as the key order and the namespaced list must get right.
    for i in range(12):
        apiserver.put(make_pod(f"p{i:02d}", namespace="team", labels={"tier": "x" if i % 2 else "y"}))
        apiserver.put(make_pod(f"p{i:02d}", namespace="team-b", labels={"tier": "x"}))
    apiserver.put(make_pod("p03", namespace="team", ip="10.244.9.9", labels={"tier": "y"}))  # replaced
    apiserver.delete("Pod", "team-b", "p05")
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        items, asked = await list_pages(session, f"{apiserver.url}/api/v1/pods", limit="10")
        assert asked == [None, "10", "20"]
        keys = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items]
        assert keys == sorted({(ns, f"p{i:02d}") for ns in ("team", "team-b") for i in range(12)} - {("team-b", "p05")})
        assert items == [apiserver.state.get("pods", ns, name) for ns, name in keys]
        replaced = items[keys.index(("team", "p03"))]
        assert replaced["status"]["podIP"] == "10.244.9.9" and replaced["metadata"]["labels"] == {"tier": "y"}
        assert replaced["metadata"]["resourceVersion"] == str(apiserver.state.resource_version - 1)

        team, _ = await list_pages(session, f"{apiserver.url}/api/v1/namespaces/team/pods", limit="5")
        assert [p["metadata"]["name"] for p in team] == [f"p{i:02d}" for i in range(12)]
        selected, _ = await list_pages(session, f"{apiserver.url}/api/v1/namespaces/team/pods", labelSelector="tier=y")
        assert [p["metadata"]["name"] for p in selected] == ["p00", "p02", "p03", "p04", "p06", "p08", "p10"]
        async with session.get(f"{apiserver.url}/api/v1/pods", params={"limit": "4"}) as response:
            first = await response.json()
        assert first["metadata"]["resourceVersion"] == str(apiserver.state.resource_version)
        assert [first["apiVersion"], first["kind"]] == ["v1", "PodList"]

        # Objects coming and going after lists were served: each next list sees them.
        apiserver.put(make_pod("p05", namespace="team-b", labels={"tier": "x"}))
        items, _ = await list_pages(session, f"{apiserver.url}/api/v1/pods", limit="7")
        keys = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items]
        assert ("team-b", "p05") in keys and keys == sorted(keys) and len(keys) == 24
        apiserver.delete("Pod", "team", "p00")
        items, _ = await list_pages(session, f"{apiserver.url}/api/v1/pods", limit="7")
        assert ("team", "p00") not in [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items]
        assert len(items) == 23


async def test_what_the_caller_holds_is_a_copy_the_server_never_serves(apiserver):
    pod = make_pod("web", ip="10.244.0.7")
    stored = apiserver.put(pod)
    pod["metadata"]["labels"] = {"changed": "by the caller"}
    stored["status"]["podIP"] = "10.244.6.6"
    apiserver.state.list("pods", None, lambda obj: True)[0][0]["spec"]["nodeName"] = "node-9"
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.get(f"{apiserver.url}/api/v1/pods") as response:
            [served] = (await response.json())["items"]
    assert served == apiserver.state.get("pods", "default", "web")
    assert (served["status"]["podIP"], served["spec"]["nodeName"]) == ("10.244.0.7", "node-1")
    assert "changed" not in (served["metadata"].get("labels") or {})
