"""The three aiohttp apps in process (pytest-aiohttp's client, loopback): the token app with the broker's test
doubles, the probe app and the metrics app. What `nmi.server` owns: routing, every failure turned into IMDS JSON in
one place, the observer told of every token request (with the caller once identified), the drain's 503."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from nmi.metrics import Metrics
from nmi.model import Identity, TokenGrant
from nmi.observer import AccessObserver, TokenObserver
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import DRAIN, TokenServerConfig, metrics_app, probe_app, token_app
from tests.core.doubles import Catalog, Pods, Tokens, binding, identity, pod

TOKEN_PATH = "/metadata/identity/oauth2/token"
ARM = "https://management.azure.com/"
METADATA = {"Metadata": "true"}


class Recorder(AccessObserver):
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def token_request(self, **seen: Any) -> None:
        self.calls.append(seen)


class HeldTokens(Tokens):
    """Tokens that are issued only once `release` is set (a request kept in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def get(self, identity: Identity, resource: str) -> TokenGrant:
        self.waiting.set()
        await self.release.wait()
        return await super().get(identity, resource)


CALLER = pod("app", "127.0.0.1", label="s")  # every in-process client calls from 127.0.0.1


@pytest.fixture
async def proxy():
    proxy = ImdsProxy("127.0.0.1", 9, timeout=5)  # the proxied routes are not asked here
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
def serve(aiohttp_client, proxy):
    async def start(*pods, tokens: Tokens | None = None, observer: AccessObserver | None = None,
                    bound: bool = True, block_instance_metadata: bool = False):
        catalog = Catalog(bound=[binding("b", "i", "s")] if bound else [], ids=[identity("i", "cid-i")])
        broker = TokenBroker(Pods(*pods), catalog, tokens or Tokens(), policy=BrokerPolicy(mode=MANAGED))
        state = DaemonState(chain_required=False, cache_problems=lambda: [])
        app = token_app(broker, config=TokenServerConfig(block_instance_metadata=block_instance_metadata),
                        state=state, proxy=proxy, observer=observer)
        return app, await aiohttp_client(app)

    return start


async def test_the_token_route_answers_with_the_callers_token_and_reports_the_outcome(serve):
    observer = Recorder()
    _, client = await serve(CALLER, observer=observer)
    response = await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)
    assert response.status == 200
    assert response.headers["Server"].startswith("nmi/")
    assert (await response.json())["access_token"] == f"tok-cid-i-{ARM}"
    [seen] = observer.calls
    assert seen["status"] == 200 and seen["route"] == TOKEN_PATH and seen["remote"] == "127.0.0.1"
    assert seen["pod"] == CALLER and seen["outcome"].identity.name == "i" and seen["resource"] == ARM


async def test_a_refused_request_of_an_identified_caller_still_names_the_caller_to_the_observer(serve):
    """The caller travels with the request, not on the exception: the access log and the per-namespace metric of a
    refused request name the pod that asked."""
    observer = Recorder()
    _, client = await serve(CALLER, observer=observer, bound=False)
    response = await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)
    assert response.status == 400
    assert await response.json() == {"error": "invalid_request", "error_description": "Identity not found"}
    [seen] = observer.calls
    assert seen["status"] == 400 and seen["pod"] == CALLER and seen["outcome"] is None and seen["resource"] == ARM


async def test_an_unknown_caller_gets_503_and_the_observer_no_pod(serve):
    observer = Recorder()
    _, client = await serve(observer=observer)
    response = await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)
    assert response.status == 503 and response.headers["Retry-After"] == "2"
    assert (await response.json())["error"] == "temporarily_unavailable"
    [seen] = observer.calls
    assert seen["pod"] is None and seen["outcome"] is None and seen["resource"] == ARM


async def test_a_bug_is_500_imds_json_without_its_text_logged_with_traceback_and_serving_goes_on(serve, caplog):
    tokens = Tokens()
    tokens.fail_with = RuntimeError("secret-internal-detail")
    observer = Recorder()
    _, client = await serve(CALLER, tokens=tokens, observer=observer)
    with caplog.at_level(logging.ERROR, logger="nmi.server"):
        response = await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)
    assert response.status == 500
    body = await response.text()
    assert json.loads(body) == {"error": "internal_error", "error_description": "Internal error; see the nmi log"}
    assert "secret-internal-detail" not in body
    assert any(r.exc_info and "internal error handling GET " + TOKEN_PATH in r.getMessage() for r in caplog.records)
    assert observer.calls[0]["status"] == 500 and observer.calls[0]["pod"] == CALLER
    tokens.fail_with = None
    assert (await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)).status == 200


async def test_host_token_serves_a_named_pod_to_a_loopback_caller(serve):
    named = pod("named", "10.0.0.7", label="s")
    observer = Recorder()
    _, client = await serve(named, observer=observer)
    response = await client.get("/host/token/", params={"resource": ARM},
                                headers={"podns": "default", "podname": "named"})
    assert response.status == 200
    assert (await response.json())["clientid"] == "cid-i"
    [seen] = observer.calls
    assert seen["route"] == "/host/token" and seen["pod"] == named and seen["status"] == 200
    missing = await client.get("/host/token/", params={"resource": ARM}, headers={"podns": "default"})
    assert missing.status == 400 and observer.calls[-1]["pod"] is None


async def test_refusals_outside_the_token_routes_are_imds_json_from_the_same_place(serve):
    observer = Recorder()
    _, client = await serve(CALLER, observer=observer, block_instance_metadata=True)
    blocked = await client.get("/metadata/instance", headers=METADATA)
    assert blocked.status == 403 and blocked.headers["Server"].startswith("nmi/")
    assert await blocked.json() == {"error": "forbidden", "error_description": "Request blocked by AAD Pod Identity NMI"}
    invalid = await client.get("/metadata/identity/other", headers=METADATA)
    assert invalid.status == 400 and (await invalid.json())["error_description"] == "Invalid request"
    assert observer.calls == []  # only token routes are observed


async def test_the_drain_answers_a_request_still_in_flight_with_503_and_retry_after(serve):
    tokens = HeldTokens()
    observer = Recorder()
    app, client = await serve(CALLER, tokens=tokens, observer=observer)
    request = asyncio.create_task(client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA))
    await asyncio.wait_for(tokens.waiting.wait(), 10)
    app[DRAIN].answer_all_now()
    response = await asyncio.wait_for(request, 10)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error_description"] == "nmi is shutting down; retry"
    assert observer.calls[0]["status"] == 503 and observer.calls[0]["pod"] == CALLER
    assert not app[DRAIN].in_flight


async def test_the_token_observer_turns_a_refusal_into_the_callers_namespace_metric(serve, aiohttp_client):
    metrics = Metrics()
    state = DaemonState(chain_required=False, cache_problems=lambda: [])
    _, client = await serve(pod("app", "127.0.0.1", ns="team-a", label="s"),
                            observer=TokenObserver(metrics, state, audit=None))
    assert (await client.get(TOKEN_PATH, params={"resource": ARM}, headers=METADATA)).status == 400
    scrape = await (await aiohttp_client(metrics_app(metrics.render))).get("/metrics")
    assert scrape.status == 200 and scrape.headers["Content-Type"].startswith("text/plain")
    text = await scrape.text()
    counted = [line for line in text.splitlines()
               if line.startswith("aadpodidentity_nmi_operations_duration_seconds_count")]
    assert len(counted) == 1 and 'namespace="team-a"' in counted[0] and 'status_code="400"' in counted[0]


async def test_probes_tell_liveness_and_readiness(aiohttp_client):
    problems: list[str] = ["pods watch not synced yet"]
    state = DaemonState(chain_required=True, cache_problems=lambda: problems)
    client = await aiohttp_client(probe_app(state))
    assert await (await client.get("/healthz")).text() == "Not Active"
    not_ready = await client.get("/readyz")
    assert not_ready.status == 503 and "pods watch not synced yet" in await not_ready.text()
    state.chain_installed = True
    problems.clear()
    assert await (await client.get("/healthz")).text() == "Active"
    ready = await client.get("/readyz")
    assert ready.status == 200 and await ready.text() == "ok"
    assert (await client.get("/explain", params={"namespace": "default", "pod": "app"})).status == 404  # not wired


async def test_explain_checks_its_query_and_turns_a_bug_into_500_json(aiohttp_client, caplog):
    asked: list[dict[str, str]] = []

    def explain(query):
        asked.append(dict(query))
        if query["pod"] == "bug":
            raise RuntimeError("explain-internal-detail")
        return {"pod": f"{query['namespace']}/{query['pod']}", "status": 200}

    client = await aiohttp_client(probe_app(DaemonState(), explain=explain))
    answer = await client.get("/explain", params={"namespace": "default", "pod": "app", "resource": ARM})
    assert answer.status == 200 and await answer.json() == {"pod": "default/app", "status": 200}
    assert asked == [{"namespace": "default", "pod": "app", "resource": ARM}]
    assert (await client.post("/explain", params={"namespace": "default", "pod": "app"})).status == 405
    unknown = await client.get("/explain", params={"namespace": "default", "pod": "app", "evil": "1"})
    assert unknown.status == 400 and "'evil'" in (await unknown.json())["error_description"]
    assert (await client.get("/explain", params={"namespace": "default"})).status == 400
    with caplog.at_level(logging.ERROR, logger="nmi.server"):
        bug = await client.get("/explain", params={"namespace": "default", "pod": "bug"})
    assert bug.status == 500 and "explain-internal-detail" not in await bug.text()
    assert any(r.exc_info and "internal error handling /explain" in r.getMessage() for r in caplog.records)
    assert len(asked) == 2  # refused queries never reach explain


async def test_explain_decodes_its_query_once(aiohttp_client):
    """A resource holding `%41` and `+` is explained as given (aiohttp's query_string is decoded already; parsing
    it again turned them into `A` and a space)."""
    asked: list[dict[str, str]] = []
    client = await aiohttp_client(probe_app(DaemonState(), explain=lambda query: asked.append(dict(query)) or {}))
    resource = "https://vault.azure.net/%41+b&c=d"
    assert (await client.get("/explain", params={"namespace": "default", "pod": "app", "resource": resource})).status == 200
    assert asked == [{"namespace": "default", "pod": "app", "resource": resource}]
