"""`TokenObserver` behind the in-process token app: every token request becomes the request metric and one access
line; an issued token also becomes the audit Event of the binding that gave the identity (the Decision's), a
refused one none."""

from __future__ import annotations

import dataclasses
import logging

from nmi.audit import AuditRecorder
from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from nmi.metrics import Metrics
from nmi.observer import TokenObserver
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, token_app
from nmi.windows import parse_windows

from tests.core.doubles import Catalog, Pods, Tokens, binding, identity, pod
from tests.observability.test_audit import RecordingWriter

TOKEN_PATH = "/metadata/identity/oauth2/token"
ARM = "https://management.azure.com/"


async def test_an_issued_token_is_audited_through_the_binding_that_gave_it_and_a_refusal_is_not(aiohttp_client,
                                                                                                  caplog):
    asleep = dataclasses.replace(binding("heavy", "i", "s", weight=9), windows=parse_windows("Sat 01:00-01:01 UTC"))
    catalog = Catalog(bound=[asleep, binding("light", "i", "s", weight=1)], ids=[identity("i", "cid-i")])
    pods = Pods(pod("app", "127.0.0.1", label="s"))
    broker = TokenBroker(pods, catalog, Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True),
                         wall_clock=lambda: 1_700_000_000.0)  # a Tuesday: `heavy` is outside its window
    writer, metrics = RecordingWriter(), Metrics()
    audit = AuditRecorder(writer, node="node-1")
    state = DaemonState(chain_required=False, cache_problems=lambda: [])
    proxy = ImdsProxy("127.0.0.1", 9, timeout=5)
    try:
        app = token_app(broker, config=TokenServerConfig(), state=state, proxy=proxy,
                        observer=TokenObserver(metrics, state, audit))
        client = await aiohttp_client(app)
        with caplog.at_level(logging.INFO, logger="nmi.access"):
            ok = await client.get(TOKEN_PATH, params={"resource": ARM}, headers={"Metadata": "true"})
            refused = await client.get(TOKEN_PATH, params={"resource": ARM, "client_id": "cid-other"},
                                       headers={"Metadata": "true"})
        assert (ok.status, refused.status) == (200, 400)
        assert await audit.flush() == 1
        [event] = writer.events
        assert event["involvedObject"]["name"] == "light"
        assert event["message"].startswith(f"Token for identity i and resource {ARM} issued to pod default/app")
        lines = [(r.pod, r.status) for r in caplog.records if r.name == "nmi.access"]
        assert lines == [("default/app", 200), ("default/app", 400)]  # the refused caller is named too
        text = metrics.render()[0].decode()
        assert 'nmi_token_cache_lookups_total{result="miss"} 1' in text
    finally:
        await proxy.close()
