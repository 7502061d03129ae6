"""/explain on the probe app, one test per reason: real pod and identity caches fed projected objects, the real
broker's rules, no token fetched — and the verdict agrees with what the token route answers."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from nmi.errors import NmiError
from nmi.explain import Explainer
from fakes.imds import FakeImds, VmIdentity
from fakes.kubeobjects import (make_assigned_identity, make_binding, make_exception, make_identity, make_pod,
                                   make_service_account)
from nmi.kube.projection import (project_assigned_identity, project_binding, project_exception, project_identity,
                                 project_pod, project_service_account)
from nmi.model import TokenRequest
from nmi.readiness import DaemonState
from nmi.server import probe_app
from nmi.tokens.config import ImdsEndpoint
from nmi.tokens.service import TokenService

from tests.core.doubles import Tokens

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=timezone.utc).timestamp()  # Tuesday 13:00 in Berlin
CID_A, CID_B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"


class World:
    def __init__(self, *objects, mode=MANAGED, synced=True, workload=False, tokens=None, cached_tokens=None):
        self.pods, self.catalog = PodIndex(), IdentityIndex()
        by_kind = {}
        for obj in objects:
            by_kind.setdefault(obj["kind"], []).append(obj)
        self.pods.replace([project_pod(o) for o in by_kind.get("Pod", [])])
        for kind, store, project in (
                ("AzureIdentity", self.catalog.identity_store, project_identity),
                ("AzureIdentityBinding", self.catalog.binding_store, project_binding),
                ("AzurePodIdentityException", self.catalog.exception_store, project_exception),
                ("AzureAssignedIdentity", self.catalog.assigned_store, project_assigned_identity),
                ("ServiceAccount", self.catalog.service_account_store, project_service_account)):
            store.replace([project(o) for o in by_kind.get(kind, [])])
        self.tokens = tokens or Tokens()
        policy = BrokerPolicy(mode=mode, namespaced=mode == MANAGED, wait_for_created=0.0, wait_total=0.0,
                              workload_identity=workload)
        self.broker = TokenBroker(self.pods, self.catalog, self.tokens, policy=policy, wall_clock=lambda: NOW,
                                  service_accounts=self.catalog)
        problems = [] if synced else ["pods watch: not synced yet"]
        self.state = DaemonState(chain_installed=True, cache_problems=lambda: problems)
        self.explainer = Explainer(self.broker, self.pods, self.state, cached_tokens=cached_tokens)

    async def explain(self, aiohttp_client, **query):
        client = await aiohttp_client(probe_app(self.state, explain=self.explainer.answer))
        response = await client.get("/explain", params={"namespace": "team", **query})
        assert response.status == 200, await response.text()
        return await response.json()

    async def served(self, ip: str, **request) -> int:
        """What the token route answers the pod with this IP (the verdict must agree)."""
        try:
            await self.broker.for_caller(ip, TokenRequest("https://vault.azure.net", **request))
        except NmiError as error:
            return error.status
        return 200


def identities():
    return [make_identity("id-a", "team", client_id=CID_A), make_identity("id-b", "team", client_id=CID_B)]


def row(report, name):
    return next(r for r in report["bindings"] if r["binding"] == name)


async def test_a_bound_pod_gets_the_highest_weight_identity_and_every_binding_says_why(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_binding("b-a", "team", identity="id-a", selector="web", weight=1),
                  make_binding("b-b", "team", identity="id-b", selector="web", weight=5),
                  make_binding("b-db", "team", identity="id-a", selector="db"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"], report["identity"]["name"]) == (200, "bound", "id-b")
    assert row(report, "team/b-b")["reason"] == "bound" and row(report, "team/b-a")["reason"] == "bound"
    assert row(report, "team/b-db")["reason"] == "selector-mismatch" and not row(report, "team/b-db")["matched"]
    assert report["chain"]["installed"] and report["pod_info"]["ip_owners"] == ["team/web"]
    assert world.tokens.calls == [] and await world.served("10.0.0.5") == 200


async def test_a_pod_without_the_label_matches_nothing(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5"),
                  make_binding("b-a", "team", identity="id-a", selector="web"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (400, "no-label")
    assert row(report, "team/b-a")["reason"] == "no-label"
    assert await world.served("10.0.0.5") == 400


async def test_a_binding_with_another_selector_does_not_match(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_binding("b-a", "team", identity="id-a", selector="api"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (400, "no-binding")
    assert "'api'" in row(report, "team/b-a")["detail"] and "'web'" in row(report, "team/b-a")["detail"]


async def test_a_binding_in_another_namespace_does_not_count_in_managed_mode(aiohttp_client):
    world = World(*identities(), make_identity("id-x", "other"),
                  make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_binding("b-x", "other", identity="id-x", selector="web"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (400, "no-binding")
    assert row(report, "other/b-x")["reason"] == "other-namespace"


async def test_an_inactive_window_is_named_with_its_next_window_and_matches_the_403(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_binding("night", "team", identity="id-a", selector="web",
                               active_windows="Mon-Fri 00:00-01:00 Europe/Berlin"),
                  make_binding("broken", "team", identity="id-b", selector="web", active_windows="Mon 25:00-26:00 UTC"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (403, "inactive-window")
    assert report["summary"] == "binding team/night is not active now; next window 2026-12-09T00:00:00+01:00"
    assert row(report, "team/night")["next_window"] == "2026-12-09T00:00:00+01:00"
    assert row(report, "team/broken")["reason"] == "malformed-window"
    assert await world.served("10.0.0.5") == 403


def standard_world(status):
    objects = [*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
               make_binding("b-a", "team", identity="id-a", selector="web")]
    if status:
        objects.append(make_assigned_identity("web-team-id-a", "team", pod="web", pod_namespace="team",
                                              identity=identities()[0], status=status,
                                              binding=make_binding("b-a", "team", identity="id-a", selector="web")))
    return World(*objects, mode=STANDARD)


@pytest.mark.parametrize("status, reason, served", [("Created", "mic-created", 404), (None, "mic-pending", 404),
                                                    ("Assigned", "bound", 200)])
async def test_standard_mode_says_whether_mic_has_assigned_the_identity(aiohttp_client, status, reason, served):
    world = standard_world(status)
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["reason"], report["status"]) == (reason, served)
    assert row(report, "team/b-a")["reason"] == {"bound": "mic-assigned"}.get(reason, reason)
    assert await world.served("10.0.0.5") == served  # zero wait budget: the 404 comes at once


async def test_an_exception_pod_gets_the_node_identity(aiohttp_client):
    world = World(*identities(), make_pod("agent", "team", "10.0.0.7", labels={"component": "agent"}),
                  make_exception("agents", "team", pod_labels={"component": "AGENT"}))
    report = await world.explain(aiohttp_client, pod="agent")
    assert (report["status"], report["reason"]) == (200, "exception")
    assert "team/agents" in report["summary"]


async def test_a_workload_identity_pod_is_served_by_federation(aiohttp_client):
    world = World(make_pod("wi", "team", "10.0.0.8", labels={"azure.workload.identity/use": "true"},
                           service_account="runner"),
                  make_service_account("runner", "team", client_id=CID_B), workload=True)
    report = await world.explain(aiohttp_client, pod="wi")
    assert (report["status"], report["reason"], report["identity"]["client_id"]) == (200, "workload-identity", CID_B)
    assert (await world.explain(aiohttp_client, pod="wi", client_id=CID_A))["status"] == 400


async def test_two_live_pods_with_one_ip_are_a_conflict(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_pod("twin", "team", "10.0.0.5"), make_binding("b-a", "team", identity="id-a", selector="web"))
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (503, "ip-conflict")
    assert report["pod_info"]["ip_owners"] == ["team/twin", "team/web"]
    assert await world.served("10.0.0.5") == 503


async def test_a_pod_not_on_this_node_is_said_to_be_unknown(aiohttp_client):
    world = World(*identities())
    report = await world.explain(aiohttp_client, pod="elsewhere")
    assert (report["status"], report["reason"]) == (503, "not-on-node")


async def test_before_the_caches_sync_nothing_is_promised(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}), synced=False)
    report = await world.explain(aiohttp_client, pod="web")
    assert (report["status"], report["reason"]) == (503, "caches-not-synced")


async def test_the_cached_token_age_is_shown_without_fetching_one(aiohttp_client):
    imds = FakeImds([VmIdentity(CID_A, object_id="oid-a")])
    await imds.start()
    tokens = TokenService(None, imds=ImdsEndpoint("127.0.0.1", imds.port))
    try:
        world = World(*identities(), make_pod("web", "team", "127.0.0.9", labels={"aadpodidbinding": "web"}),
                      make_binding("b-a", "team", identity="id-a", selector="web"), tokens=tokens,
                      cached_tokens=tokens.cached_tokens)
        before = await world.explain(aiohttp_client, pod="web")
        assert before["token_cache"] == [] and imds.token_requests == 0
        assert await world.served("127.0.0.9") == 200 and imds.token_requests == 1
        after = await world.explain(aiohttp_client, pod="web", resource="https://vault.azure.net")
        (entry,) = after["token_cache"]
        assert entry["resource"] == "https://vault.azure.net" and 0 <= entry["age_seconds"] < 60
        assert entry["expires_in"] > 3000 and imds.token_requests == 1
        assert (await world.explain(aiohttp_client, pod="web", resource="https://storage.azure.com/"))[
            "token_cache"] == []
    finally:
        await tokens.close()
        await imds.stop()


@pytest.mark.parametrize("query", ["pod=web", "namespace=team", "namespace=team&pod=web&pod=other",
                                   "namespace=team&pod=web&token=1"])
async def test_a_bad_query_is_400_json(aiohttp_client, query):
    world = World()
    client = await aiohttp_client(probe_app(world.state, explain=world.explainer.answer))
    response = await client.get("/explain?" + query)
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"


async def test_a_binding_to_a_missing_identity_or_another_than_requested_says_so(aiohttp_client):
    world = World(*identities(), make_pod("web", "team", "10.0.0.5", labels={"aadpodidbinding": "web"}),
                  make_binding("b-a", "team", identity="id-a", selector="web"),
                  make_binding("b-gone", "team", identity="id-gone", selector="web"))
    report = await world.explain(aiohttp_client, pod="web", client_id=CID_B)
    assert (report["status"], report["reason"]) == (400, "no-binding")
    assert row(report, "team/b-a")["reason"] == "not-requested"
    assert row(report, "team/b-gone")["reason"] == "identity-missing"
    assert await world.served("10.0.0.5", client_id=CID_B) == 400
