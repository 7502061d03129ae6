"""Time-boxed bindings in resolution: inactive bindings do not exist for either mode, their pods get 403 naming
the next window, and no token cached through them is served. The wall clock is injected; nothing waits."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.errors import AccessDenied, IdentityNotFound
from nmi.model import AccessToken, TokenRequest
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, token_app
from nmi.tokens.cache import TokenCache
from nmi.windows import parse_windows

from tests.core.doubles import Catalog, Pods, Tokens, assignment, binding, identity, pod

NIGHT = "Mon-Fri 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC"
INSIDE = "2026-12-07T23:30:00"  # Tuesday 00:30 in Berlin
OUTSIDE = "2026-12-08T12:00:00"  # Tuesday 13:00 in Berlin
NEXT_AFTER_OUTSIDE = "2026-12-09T00:00:00+01:00"


class WallClock:
    def __init__(self, at: str) -> None:
        self.set(at)

    def set(self, at: str) -> None:
        self.now = datetime.fromisoformat(at).replace(tzinfo=timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now


def timeboxed(name, identity_name, selector, text=NIGHT, **kw):
    return replace(binding(name, identity_name, selector, **kw), windows=parse_windows(text))


def managed(catalog, *, clock, tokens=None):
    app = pod("app", "10.0.0.5", label="sel")
    return TokenBroker(Pods(app), catalog, tokens or Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True),
                       wall_clock=clock)


async def test_managed_pod_whose_only_binding_is_inactive_gets_403_naming_the_next_window():
    clock = WallClock(INSIDE)
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    broker = managed(catalog, clock=clock)
    assert (await broker.for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-a"
    clock.set(OUTSIDE)
    with pytest.raises(AccessDenied) as denied:
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert denied.value.status == 403 and denied.value.error == "access_denied"
    assert denied.value.description == f"binding default/night is not active now; next window {NEXT_AFTER_OUTSIDE}"


async def test_an_inactive_binding_is_skipped_for_an_active_one_even_with_a_higher_weight():
    clock = WallClock(OUTSIDE)
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel", weight=10), binding("always", "id-b", "sel")],
                      ids=[identity("id-a", "client-a"), identity("id-b", "client-b")])
    broker = managed(catalog, clock=clock)
    assert (await broker.for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-b"
    with pytest.raises(AccessDenied, match="binding default/night is not active now"):  # asked for by client ID
        await broker.for_caller("10.0.0.5", TokenRequest("r", client_id="client-a"))
    with pytest.raises(IdentityNotFound):  # no binding of the pod, active or not, gives this one
        await broker.for_caller("10.0.0.5", TokenRequest("r", client_id="client-c"))
    clock.set(INSIDE)
    assert (await broker.for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-a"


async def test_with_several_inactive_bindings_the_403_names_the_one_opening_first():
    clock = WallClock(OUTSIDE)
    catalog = Catalog(bound=[timeboxed("late", "id-a", "sel", "Sun 10:00-11:00 UTC"),
                             timeboxed("soon", "id-b", "sel", "Tue 14:00-15:00 UTC")],
                      ids=[identity("id-a", "client-a"), identity("id-b", "client-b")])
    with pytest.raises(AccessDenied) as denied:
        await managed(catalog, clock=clock).for_caller("10.0.0.5", TokenRequest("r"))
    assert denied.value.description == "binding default/soon is not active now; next window 2026-12-08T14:00:00+00:00"


async def test_a_malformed_annotation_makes_the_binding_inactive_and_the_403_says_so_without_its_text():
    clock = WallClock(INSIDE)
    broken = replace(binding("broken", "id-a", "sel"), windows_error="window 1: unknown day in 'Funday'")
    catalog = Catalog(bound=[broken], ids=[identity("id-a", "client-a")])
    with pytest.raises(AccessDenied) as denied:
        await managed(catalog, clock=clock).for_caller("10.0.0.5", TokenRequest("r"))
    assert "binding default/broken is not active now" in denied.value.description
    assert "malformed" in denied.value.description and "Funday" not in denied.value.description


class CountingCachedTokens(Tokens):
    """The real TokenCache in front of a counting fetch: what the daemon's TokenService does on a hit."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.cache = TokenCache(clock=clock)
        self.fetches = 0
        self.lookups = 0

    async def get(self, identity, resource):
        self.lookups += 1

        async def fetch():
            self.fetches += 1
            return (AccessToken(access_token=f"tok-{identity.client_id}", expires_on=int(self.cache._clock()) + 2 * 86400,
                                resource=resource, client_id=identity.client_id),)

        return await self.cache.get((identity.key, resource), fetch, owner=identity.key)


async def test_a_token_cached_inside_the_window_is_not_served_outside_it():
    clock = WallClock(INSIDE)
    tokens = CountingCachedTokens(clock)
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    broker = managed(catalog, clock=clock, tokens=tokens)
    first = await broker.for_caller("10.0.0.5", TokenRequest("r"))
    again = await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert (first.grant.cached, again.grant.cached, tokens.fetches) == (False, True, 1)  # the token is cached
    clock.set(OUTSIDE)
    for _ in range(3):
        with pytest.raises(AccessDenied):
            await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert tokens.lookups == 2  # refused before the cache was even asked
    clock.set("2026-12-08T23:10:00")  # the next window (still within the cached token's life)
    back = await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert back.grant.cached and tokens.fetches == 1


def standard(catalog, app, *, clock):
    return TokenBroker(Pods(app), catalog, Tokens(), policy=BrokerPolicy(mode=STANDARD, wait_for_created=80,
                                                                         wait_total=100), wall_clock=clock)


async def test_standard_mode_does_not_serve_an_assignment_made_through_an_inactive_binding():
    clock = WallClock(INSIDE)
    app = pod("app", "10.0.0.5", label="sel")
    ident = identity("id-a", "client-a")
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel")], ids=[ident],
                      assignments=[replace(assignment(app, ident, "Assigned"), binding_name="night")])
    broker = standard(catalog, app, clock=clock)
    assert (await broker.for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-a"
    clock.set(OUTSIDE)
    with pytest.raises(AccessDenied, match=re.escape(f"next window {NEXT_AFTER_OUTSIDE}")):
        await broker.for_caller("10.0.0.5", TokenRequest("r"))
    assert catalog.waits == 0  # refused at once: waiting for MIC cannot help


async def test_standard_mode_uses_mics_copy_of_the_binding_once_the_binding_is_gone():
    clock = WallClock(OUTSIDE)
    app = pod("app", "10.0.0.5", label="sel")
    ident = identity("id-a", "client-a")
    copy = timeboxed("night", "id-a", "sel")
    catalog = Catalog(ids=[ident], assignments=[replace(assignment(app, ident, "Assigned"), binding_name="night",
                                                        binding_namespace="default", binding=copy)])
    with pytest.raises(AccessDenied):
        await standard(catalog, app, clock=clock).for_caller("10.0.0.5", TokenRequest("r"))


async def test_standard_mode_pod_whose_bindings_are_all_inactive_is_refused_without_waiting_for_mic():
    clock = WallClock(OUTSIDE)
    app = pod("app", "10.0.0.5", label="sel")
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    with pytest.raises(AccessDenied, match="binding default/night"):
        await standard(catalog, app, clock=clock).for_caller("10.0.0.5", TokenRequest("r"))
    assert catalog.waits == 0


async def test_the_token_route_answers_403_access_denied_json(aiohttp_client):
    clock = WallClock(OUTSIDE)
    app = pod("app", "127.0.0.1", label="sel")
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    broker = TokenBroker(Pods(app), catalog, Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True),
                         wall_clock=clock)
    client = await aiohttp_client(token_app(broker, config=TokenServerConfig(), state=DaemonState(), proxy=None))
    response = await client.get("/metadata/identity/oauth2/token?resource=r", headers={"Metadata": "true"})
    assert response.status == 403 and response.content_type == "application/json"
    assert json.loads(await response.text()) == {
        "error": "access_denied",
        "error_description": f"binding default/night is not active now; next window {NEXT_AFTER_OUTSIDE}"}


async def test_standard_mode_serves_an_identity_another_active_binding_of_the_pod_also_gives():
    clock = WallClock(OUTSIDE)
    app = pod("app", "10.0.0.5", label="sel")
    ident = identity("id-a", "client-a")
    catalog = Catalog(bound=[timeboxed("night", "id-a", "sel"), binding("always", "id-a", "sel")], ids=[ident],
                      assignments=[replace(assignment(app, ident, "Assigned"), binding_name="night")])
    assert (await standard(catalog, app, clock=clock).for_caller("10.0.0.5", TokenRequest("r"))).identity.name == "id-a"
