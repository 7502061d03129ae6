"""Cluster faults against the real nmi process (issue 11 item 1): the API server down at start, restarting
mid-watch, streams cut, repeated 410s, slow lists, an idle watch, objects deleted while cached, IP reuse. And,
on the same process, Azure faults (item 2): cached tokens served through an IMDS outage, failures documented,
no fds, sockets or threads growing per failed call (measured in /proc/<pid> before and after).

Every answer a pod gets is checked: a 200 names the identity the pod is bound to, anything else is documented
IMDS JSON (Retry-After on 503). Recovery is awaited with a bound, never assumed after a sleep."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from fakes.imds import Fault
from fakes.kubeobjects import make_binding, make_identity

from tests.faults.harness import RECOVERY, FaultyNmi, assert_documented, eventually, free_api_port, settle
from tests.faults.world import MANAGED_FLAGS, NODE, NS, X, Y, base_objects, pod


def watch_restarts(metrics: str) -> dict[str, float]:
    """nmi_watch_restarts_total by reason, over every resource."""
    totals: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("nmi_watch_restarts_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            totals[reason] = totals.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def client_id(nmi, source: str) -> str | None:
    """The identity a caller gets now, None for a documented non-200 answer (checked here)."""
    answer = nmi.token(source=source)
    if answer.status == 200:
        return answer.json["client_id"]
    assert_documented(answer)
    return None


def test_api_server_down_at_start_nmi_stays_up_answers_503_and_recovers_by_itself(fakes, tmp_path):
    api_port = free_api_port()
    fakes.start(api_port=None)
    for obj in [*base_objects(), pod("web", "127.0.0.11", "x")]:
        fakes.put(obj)
    nmi = FaultyNmi(tmp_path, fakes, node=NODE, extra=MANAGED_FLAGS, api_port=api_port)
    nmi.start_unready()
    try:
        readyz = nmi.readyz()
        assert readyz.status == 503 and "caches" in readyz.body
        assert nmi.get("/healthz", port=nmi.probe_port).status == 200  # alive: no restart loop
        for source in ("127.0.0.11", "127.0.0.12"):  # a pod that will be known, one that never will
            answer = nmi.token(source=source)
            assert answer.status == 503, answer.body  # never 400 "Identity not found" from empty caches
            assert_documented(answer)
        assert nmi.proc.poll() is None

        fakes.start_api(api_port)
        nmi.wait_ready(timeout=RECOVERY)
        assert eventually(lambda: client_id(nmi, "127.0.0.11") == X.client_id, timeout=5)
    finally:
        assert nmi.stop() == 0


def test_slow_crd_list_at_start_gives_503_and_readyz_names_the_cache(fakes, tmp_path):
    fakes.start()
    for obj in [*base_objects(), pod("web", "127.0.0.11", "x")]:
        fakes.put(obj)
    fakes.call(lambda: setattr(fakes.api, "slow_resources", frozenset({"azureidentitybindings"})))
    fakes.call(lambda: setattr(fakes.api, "list_delay", 2.0))
    nmi = FaultyNmi(tmp_path, fakes, node=NODE, extra=MANAGED_FLAGS)
    nmi.start_unready()
    try:
        assert "azureidentitybindings" in nmi.readyz().body
        answer = nmi.token(source="127.0.0.11")  # the pod is found by live lookup; the bindings are not listed yet
        assert answer.status in (200, 503), answer.body
        assert_documented(answer) if answer.status != 200 else None
    finally:
        nmi.stop()


def test_a_relabelled_pod_never_gets_its_old_identity_while_the_watch_is_broken(fakes, tmp_path):
    fakes.start()  # its own nmi: the watch stays broken for a while, its backoff must not reach other tests
    for obj in [*base_objects(), pod("web-stale", "127.0.0.91", "x")]:
        fakes.put(obj)
    nmi = FaultyNmi(tmp_path, fakes, node=NODE, extra=MANAGED_FLAGS)
    nmi.start()
    assert eventually(lambda: client_id(nmi, "127.0.0.91") == X.client_id, timeout=5)
    fakes.call(lambda: fakes.api.fail_next(10_000, status=500, verb="watch"))  # lists (live lookups) still work
    try:
        fakes.call(lambda: fakes.api.cut_watches("pods"))
        fakes.put(pod("web-stale", "127.0.0.91", "y"))
        # SPEC: the cache is stale as soon as the watch cannot be re-established; from then on never the old identity.
        eventually(lambda: client_id(nmi, "127.0.0.91") != X.client_id, timeout=5, what="old identity dropped")
        assert {client_id(nmi, "127.0.0.91") for _ in range(5)} <= {Y.client_id, None}
    finally:
        nmi.stop()


# -- Azure faults in the daemon (issue 11 item 2) ---------------------------------------------------------

POD_IP = "127.0.0.61"
CACHED, UNCACHED = "https://vault.azure.net", "https://storage.azure.com/"


def ask(nmi, resource: str):
    return nmi.get("/metadata/identity/oauth2/token?" + urlencode({"api-version": "2018-02-01", "resource": resource}),
                   source=POD_IP, headers={"Metadata": "true"}, timeout=20)


def test_cached_tokens_survive_an_imds_outage_and_failures_leak_nothing(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    fakes.put(pod("azure-faults", POD_IP, "x"))
    first = eventually(lambda: (a := ask(nmi, CACHED)).status == 200 and a, timeout=10)
    assert first.json["client_id"] == X.client_id

    outages = [Fault(500, retry_after="30"), Fault(503, text="<html>down</html>", retry_after="30"),
               Fault(429, retry_after="30"), Fault(200, text='{"access_token": "eyJ')]

    def failing_round() -> None:
        for fault in outages:
            fakes.call(lambda: fakes.imds.fail_next(1, fault))
            answer = ask(nmi, UNCACHED)
            assert answer.status == (429 if fault.status == 429 else 503), answer.body
            assert_documented(answer)
            if fault.retry_after:
                assert answer.headers["Retry-After"] == fault.retry_after
            cached = ask(nmi, CACHED)  # the cache is not touched by the outage
            assert cached.status == 200 and cached.json["access_token"] == first.json["access_token"]

    for _ in range(3):  # warm-up: worker threads and pooled connections are made on first use
        failing_round()
    before = nmi.stats()
    for _ in range(10):
        failing_round()
    after = nmi.stats()
    assert after.fds <= before.fds + 2 and after.sockets <= before.sockets + 2, (before, after)
    assert after.threads <= before.threads + 1, (before, after)

    # A connection reset once is retried; after the outage the uncached resource is fetched again.
    fakes.call(lambda: fakes.imds.fail_next(1, Fault(reset=True)))
    recovered = ask(nmi, UNCACHED)
    assert recovered.status == 200 and recovered.json["client_id"] == X.client_id


# -- back to the cluster: the disruptive faults come last, each test settles first ----------------------------

def test_an_idle_healthy_watch_is_not_mistaken_for_a_broken_one(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    restarts_before = watch_restarts(nmi.metrics())
    lists_before = fakes.call(lambda: len(fakes.api.requests_for("pods", "list")))
    watches_before = fakes.call(lambda: len(fakes.api.requests_for("pods", "watch")))
    idle_until = time.monotonic() + 3.0  # three bookmark intervals with no change at all
    while time.monotonic() < idle_until:
        assert nmi.readyz().status == 200
        time.sleep(0.5)
    assert fakes.call(lambda: len(fakes.api.requests_for("pods", "list"))) == lists_before
    assert fakes.call(lambda: len(fakes.api.requests_for("pods", "watch"))) == watches_before
    assert watch_restarts(nmi.metrics()) == restarts_before


def test_deleted_binding_or_identity_stops_tokens_at_once_cached_ones_included(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    fakes.put(pod("web-deleted", "127.0.0.41", "x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.41") == X.client_id, timeout=5)
    assert nmi.token(source="127.0.0.41").status == 200  # now cached
    fetched = fakes.call(lambda: fakes.imds.calls[(X.client_id, "https://management.azure.com/")])

    fakes.delete("AzureIdentityBinding", NS, "bind-x")
    assert eventually(lambda: nmi.token(source="127.0.0.41").status == 400, timeout=5)
    fakes.put(make_binding("bind-x", NS, identity="id-x", selector="x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.41") == X.client_id, timeout=5)

    fakes.delete("AzureIdentity", NS, "id-x")
    assert eventually(lambda: nmi.token(source="127.0.0.41").status == 400, timeout=5)
    fakes.put(make_identity("id-x", NS, client_id=X.client_id, resource_id=X.resource_id))
    assert eventually(lambda: client_id(nmi, "127.0.0.41") == X.client_id, timeout=5)
    # The identity's cached token went with it: the re-created identity needed a fresh one.
    assert fakes.call(lambda: fakes.imds.calls[(X.client_id, "https://management.azure.com/")]) == fetched + 1


def test_ip_reuse_across_a_cut_watch_never_hands_the_old_pods_identity(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    fakes.put(pod("old", "127.0.0.51", "x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.51") == X.client_id, timeout=5)
    fakes.delete("Pod", NS, "old")
    fakes.put(pod("new", "127.0.0.51", "y"))
    assert eventually(lambda: client_id(nmi, "127.0.0.51") == Y.client_id, timeout=5)

    # The same again while the watch is down: the old pod goes, a new one takes its IP, nobody is told.
    api_port = int(fakes.api.url.rsplit(":", 1)[1])
    fakes.stop_api()
    fakes.call(lambda: fakes.api.delete("Pod", NS, "new", notify=False))
    fakes.call(lambda: fakes.api.put(pod("newer", "127.0.0.51", "x"), notify=False))
    fakes.start_api(api_port)
    assert eventually(lambda: client_id(nmi, "127.0.0.51") == X.client_id, timeout=RECOVERY)
    # A completed pod's IP passes to its successor without a restart of anything.
    fakes.put(pod("newer", "127.0.0.51", "x", phase="Succeeded"))
    fakes.put(pod("newest", "127.0.0.51", "y"))
    assert eventually(lambda: client_id(nmi, "127.0.0.51") == Y.client_id, timeout=5)


def test_restart_cut_streams_and_repeated_410_converge_on_the_cluster_as_it_is(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    fakes.put(pod("web-restart", "127.0.0.21", "x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.21") == X.client_id, timeout=5)
    api_port = int(fakes.api.url.rsplit(":", 1)[1])

    # 1. The API server restarts mid-watch; while it is away the pod is relabelled (nobody is told).
    fakes.stop_api()
    fakes.call(lambda: fakes.api.put(pod("web-restart", "127.0.0.21", "y"), notify=False))
    assert client_id(nmi, "127.0.0.21") in (X.client_id, Y.client_id, None)  # old, new, or 503: never a third
    fakes.start_api(api_port)
    assert eventually(lambda: client_id(nmi, "127.0.0.21") == Y.client_id, timeout=RECOVERY)
    nmi.wait_ready(timeout=RECOVERY)

    # 2. Streams cut again and again, a change in between: nothing is lost.
    for _ in range(3):
        fakes.call(fakes.api.cut_watches)
    fakes.put(pod("web-restart", "127.0.0.21", "x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.21") == X.client_id, timeout=RECOVERY)

    # 3. Repeated 410s: history compacted, every watch refused with 410 a few times; the informers relist.
    fakes.call(lambda: fakes.api.fail_next(4, status=410, verb="watch"))
    fakes.call(fakes.api.compact)
    fakes.call(lambda: fakes.api.put(pod("web-restart", "127.0.0.21", "y"), notify=False))
    fakes.call(fakes.api.cut_watches)
    assert eventually(lambda: client_id(nmi, "127.0.0.21") == Y.client_id, timeout=RECOVERY)
    nmi.wait_ready(timeout=RECOVERY)
    assert "nmi_watch_relists_total" in nmi.metrics()


def test_slow_lists_during_relist_never_give_a_wrong_identity(running, shared_fakes):
    nmi, fakes = running, shared_fakes
    settle(nmi, fakes)
    fakes.put(pod("web-slow", "127.0.0.31", "x"))
    assert eventually(lambda: client_id(nmi, "127.0.0.31") == X.client_id, timeout=5)
    fakes.call(lambda: setattr(fakes.api, "list_delay", 2.0))
    fakes.call(fakes.api.compact)
    fakes.call(fakes.api.cut_watches)  # every informer relists, slowly
    seen = {client_id(nmi, "127.0.0.31") for _ in range(10)}
    assert seen <= {X.client_id, None}
    fakes.call(lambda: setattr(fakes.api, "list_delay", 0.0))
    assert eventually(lambda: client_id(nmi, "127.0.0.31") == X.client_id, timeout=RECOVERY)
