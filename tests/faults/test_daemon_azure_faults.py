"""Azure faults against the real nmi process (issue 11 item 2): cached tokens are served through an IMDS
outage, every failure is documented IMDS JSON with Retry-After, and the process grows no fds, sockets or threads
per failed call (measured in /proc/<pid> before and after)."""

from __future__ import annotations

from urllib.parse import urlencode

from nmi.fakes.imds import Fault

from tests.faults.harness import assert_documented, eventually, settle
from tests.faults.world import X, pod

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
