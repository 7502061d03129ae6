"""Live pod lookups and Secret reads through the real client against the fake API server."""

from __future__ import annotations

import socket

import pytest

from nmi.pod_index import PodIndex
from nmi.errors import IdentityConfigurationError, PodNotFound, Unavailable
from fakes.apiserver import make_pod, make_secret
from nmi.kube import Informer, KubeSecretReader, LivePodLookup, build_api_client, pods_target

from .conftest import NODE, running


@pytest.fixture
def lookup(api_client):
    reader = LivePodLookup(api_client, NODE, timeout=2.0)
    yield reader
    reader.close()


@pytest.fixture
def secrets(api_client):
    reader = KubeSecretReader(api_client)
    yield reader
    reader.close()


async def test_a_pod_created_a_moment_ago_is_found_before_the_watch_delivers_it(apiserver, api_client, lookup):
    index = PodIndex(lookup.live_pods_for_ip)
    async with running(Informer(pods_target(api_client, NODE), index, watch_timeout_seconds=30)):
        apiserver.put(make_pod("fresh", ip="10.244.0.21"), notify=False)  # the open watch never hears of it
        pod = await index.pod_for_ip("10.244.0.21")
        assert pod.name == "fresh"
        live = [r for r in apiserver.requests_for("pods", "list") if "status.podIP" in r.query["fieldSelector"]]
        assert [r.query["fieldSelector"] for r in live] == ["spec.nodeName=node-1,status.podIP=10.244.0.21"]
        for _ in range(20):
            await index.pod_for_ip("10.244.0.21")
        assert apiserver.count("pods", "list") == 2  # the initial list and the one live lookup, no more


async def test_the_live_lookup_sees_only_this_node(apiserver, lookup):
    apiserver.put(make_pod("elsewhere", ip="10.244.0.22", node="node-2"))
    assert await lookup.live_pods_for_ip("10.244.0.22") == []


async def test_an_ip_unknown_to_the_api_server_still_gets_pod_not_found(apiserver, lookup):
    with pytest.raises(PodNotFound):
        await PodIndex(lookup.live_pods_for_ip).pod_for_ip("10.244.0.23")


async def test_a_live_lookup_against_a_failing_api_server_is_unavailable(apiserver, lookup):
    apiserver.fail_next(1, status=500)
    with pytest.raises(Unavailable):
        await lookup.live_pods_for_ip("10.244.0.24")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_live_lookup_without_an_api_server_is_unavailable_within_its_bound():
    client = build_api_client(host=f"http://127.0.0.1:{closed_port()}")
    reader = LivePodLookup(client, NODE, timeout=1.0)
    try:
        with pytest.raises(Unavailable):
            await reader.live_pods_for_ip("10.244.0.25")
    finally:
        reader.close()
        client.close()


async def test_a_secret_is_read_and_decoded(apiserver, secrets):
    apiserver.put(make_secret("sp", "team", {"clientSecret": "s3cr3t", "cert": b"\x00\x01"}))
    assert await secrets.read_secret("team", "sp") == {"clientSecret": b"s3cr3t", "cert": b"\x00\x01"}


async def test_a_changed_secret_takes_effect_on_the_next_read(apiserver, secrets):
    apiserver.put(make_secret("sp", "team", {"clientSecret": "old"}))
    await secrets.read_secret("team", "sp")
    apiserver.put(make_secret("sp", "team", {"clientSecret": "new"}))
    assert (await secrets.read_secret("team", "sp"))["clientSecret"] == b"new"


async def test_a_missing_secret_is_a_configuration_error_naming_it(apiserver, secrets):
    with pytest.raises(IdentityConfigurationError) as caught:
        await secrets.read_secret("team", "nope")
    assert caught.value.description == "Secret team/nope not found"
    assert caught.value.status == 403


async def test_a_secret_with_bad_base64_is_named_but_its_content_never_shown(apiserver, secrets):
    secret = make_secret("sp", "team")
    secret["data"] = {"clientSecret": "hunter2!!"}
    apiserver.put(secret)
    with pytest.raises(IdentityConfigurationError) as caught:
        await secrets.read_secret("team", "sp")
    assert "team/sp" in caught.value.description and "hunter2" not in caught.value.description


async def test_a_secret_read_against_a_failing_api_server_is_unavailable(apiserver, secrets):
    apiserver.fail_next(1, status=503)
    with pytest.raises(Unavailable) as caught:
        await secrets.read_secret("team", "sp")
    assert caught.value.retry_after
