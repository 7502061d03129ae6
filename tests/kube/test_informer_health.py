"""What "watch broken" means, with the real client against the fake API server: a failing list or watch request
makes the cache stale at once; a re-established watch or a relist makes it fresh; a quiet watch that ends at its
timeout and is renewed, with bookmarks in between, is never stale."""

from __future__ import annotations

from nmi.pod_index import PodIndex
from fakes.apiserver import make_pod
from nmi.freshness import FRESH, NOT_SYNCED, POD_CACHE, STALE, CacheHealth
from nmi.kube import Informer, pods_target

from .conftest import NODE, eventually, running


class RecordingHealth(CacheHealth):
    """Remembers every state the pod cache went through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def _note(self) -> None:
        state = self.state(POD_CACHE)
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)

    def listed(self, resource: str) -> None:
        super().listed(resource)
        self._note()

    def watching(self, resource: str) -> None:
        super().watching(resource)
        self._note()

    def failed(self, resource: str, operation: str, reason: str) -> None:
        super().failed(resource, operation, reason)
        self._note()

    def expired(self, resource: str) -> None:
        super().expired(resource)
        self._note()


def informer(api_client, index, health, recording_sleep, **options) -> Informer:
    options.setdefault("watch_timeout_seconds", 30)
    return Informer(pods_target(api_client, NODE), index, health=health, sleep=recording_sleep, **options)


async def test_a_failing_watch_makes_the_cache_stale_and_a_renewed_watch_fresh(apiserver, api_client, recording_sleep):
    health = RecordingHealth()
    index = PodIndex()
    watcher = informer(api_client, index, health, recording_sleep)
    assert health.state(POD_CACHE) == NOT_SYNCED
    async with running(watcher):
        await eventually(lambda: apiserver.open_watches("pods") == 1)
        assert health.state(POD_CACHE) == FRESH
        apiserver.fail_next(10**6, status=500, path_prefix="/api/v1/pods", verb="watch")
        apiserver.close_watches()
        await eventually(lambda: health.state(POD_CACHE) == STALE)
        assert "(watch failing: HTTP 500)" in health.problems()[0]
        apiserver.clear_faults()
        await eventually(lambda: health.state(POD_CACHE) == FRESH)
        assert apiserver.count("pods", "list") == 1  # resumed from its resourceVersion, no relist needed
    assert health.seen == [FRESH, STALE, FRESH]


async def test_a_dropped_connection_and_a_failing_relist_are_stale_too(apiserver, api_client, recording_sleep):
    health = RecordingHealth()
    async with running(informer(api_client, PodIndex(), health, recording_sleep)):
        await eventually(lambda: apiserver.open_watches("pods") == 1)
        apiserver.fail_next(10**6, status=None, path_prefix="/api/v1/pods", verb="watch")  # connections dropped
        apiserver.close_watches()
        await eventually(lambda: STALE in health.seen)  # once urllib3's own retries are spent
        apiserver.clear_faults()
        await eventually(lambda: health.state(POD_CACHE) == FRESH)
        apiserver.fail_next(10**6, status=503, path_prefix="/api/v1/pods", verb="list")
        apiserver.compact()  # history gone: the next watch gets 410 and must relist, which fails
        apiserver.close_watches()
        await eventually(lambda: "list failing: HTTP 503" in " ".join(health.problems()))
        assert "relisting after 410" not in " ".join(health.problems())  # the failure is what it says now
        apiserver.put(make_pod("web", ip="10.244.0.7"))
        apiserver.clear_faults()
        await eventually(lambda: health.state(POD_CACHE) == FRESH)
        assert apiserver.count("pods", "list") >= 2


async def test_an_idle_watch_renewed_at_its_timeout_with_bookmarks_is_never_stale(api_client, recording_sleep):
    from fakes.apiserver import FakeApiServer
    from nmi.kube import build_api_client
    from tests.conftest import TOKEN

    server = FakeApiServer(bookmark_interval=0.2, token=TOKEN)  # bookmarks every 0.2 s, streams end every 1 s
    await server.start()
    client = build_api_client(host=server.url, token=TOKEN)
    health = RecordingHealth()
    try:
        async with running(informer(client, PodIndex(), health, recording_sleep, watch_timeout_seconds=1)):
            await eventually(lambda: server.count("pods", "watch") >= 3)  # two normal ends, renewed each time
        assert health.seen == [FRESH]
        assert server.count("pods", "list") == 1 and recording_sleep.delays == []
    finally:
        client.close()
        await server.stop()
