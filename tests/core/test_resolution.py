"""`nmi.identities.resolve` directly: the one pure decision the broker acts on and `nmi explain` shows."""

from __future__ import annotations

import dataclasses

from nmi.broker import MANAGED, STANDARD, BrokerPolicy
from nmi.errors import AccessDenied, IdentityNotFound
from nmi.identities import BINDINGS, NODE, WORKLOAD, View, resolve
from nmi.model import PodIdentityException, ServiceAccount, TokenRequest
from nmi.windows import parse_windows

from tests.core.doubles import Catalog, binding, identity, pod

NOW = 1_700_000_000.0  # a Tuesday, 22:13 UTC
NEVER_NOW = parse_windows("Sat 01:00-02:00 UTC")
ARM = TokenRequest("https://management.azure.com/")


class CountingCatalog(Catalog):
    """Counts how often resolution reads bindings (each read is a pass over the pod's candidate bindings)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.binding_reads = 0

    def bindings(self, namespace):
        self.binding_reads += 1
        return super().bindings(namespace)


class Accounts:
    def __init__(self, *accounts: ServiceAccount) -> None:
        self.accounts = {(a.namespace, a.name): a for a in accounts}

    def service_account(self, namespace, name):
        return self.accounts.get((namespace, name))


def test_an_exception_gives_the_node_identity_on_the_token_route_only():
    p = pod("sys", "10.0.0.9", labels={"component": "system"}, label="s")
    exception = PodIdentityException("default", "e", {"component": "system"})
    catalog = Catalog(bound=[binding("b", "i", "s")], ids=[identity("i", "cid-i")], excepts=[exception])
    policy = BrokerPolicy(mode=MANAGED, namespaced=True)
    decision = resolve(p, View(catalog), ARM, policy, now=NOW)
    assert (decision.source, decision.exception, decision.ready) == (NODE, exception, ())
    named = resolve(p, View(catalog), ARM, policy, now=NOW, node_identity_allowed=False)  # /host/token
    assert named.source == BINDINGS and [i.name for i in named.ready] == ["i"]


def test_the_decision_names_the_active_binding_that_gives_each_identity():
    p = pod("app", "10.0.0.5", label="s")
    asleep = dataclasses.replace(binding("heavy", "i", "s", weight=9), windows=NEVER_NOW)
    catalog = Catalog(bound=[asleep, binding("light", "i", "s", weight=1), binding("lighter", "i", "s")],
                      ids=[identity("i", "cid-i")])
    decision = resolve(p, View(catalog), ARM, BrokerPolicy(mode=MANAGED, namespaced=True), now=NOW)
    [chosen] = decision.ready
    assert decision.binding_for(chosen).name == "light"  # the heaviest binding is outside its window


def test_only_inactive_bindings_refuse_with_the_window_and_nothing_matching_with_identity_not_found():
    p = pod("app", "10.0.0.5", label="s")
    asleep = dataclasses.replace(binding("b", "i", "s"), windows=NEVER_NOW)
    catalog = Catalog(bound=[asleep], ids=[identity("i", "cid-i")])
    policy = BrokerPolicy(mode=MANAGED, namespaced=True)
    refusal = resolve(p, View(catalog), ARM, policy, now=NOW).refusal(NOW)
    assert isinstance(refusal, AccessDenied) and "binding default/b is not active now" in refusal.description
    other = resolve(p, View(catalog), TokenRequest(ARM.resource, client_id="cid-other"), policy, now=NOW)
    assert not other.ready and not other.inactive and isinstance(other.refusal(NOW), IdentityNotFound)


def test_bindings_are_matched_once_per_decision():
    """Standard mode, nothing assigned yet, workload identity on: the bridge check, the inactive-binding check and
    what MIC will assign all read the pod's bindings from one match (before `resolve`, each matched them anew)."""
    p = pod("app", "10.0.0.5", label="s", labels={"azure.workload.identity/use": "true"})
    asleep = dataclasses.replace(binding("later", "j", "s"), windows=NEVER_NOW)
    catalog = CountingCatalog(bound=[binding("b", "i", "s"), asleep], ids=[identity("i", "cid-i"), identity("j", "cid-j")])
    policy = BrokerPolicy(mode=STANDARD, workload_identity=True)
    decision = resolve(p, View(catalog, service_accounts=Accounts()), ARM, policy, now=NOW)
    assert [i.name for i in decision.expected] == ["i"] and [b.name for b in decision.inactive] == ["later"]
    assert catalog.binding_reads == 1


def test_the_workload_identity_answers_only_its_own_client_id():
    p = pod("wl", "10.0.0.6", labels={"azure.workload.identity/use": "true"}, service_account="runner")
    accounts = Accounts(ServiceAccount("default", "runner", client_id="cid-wl", tenant_id="t"))
    policy = BrokerPolicy(mode=MANAGED, namespaced=True, workload_identity=True)
    view = View(Catalog(), service_accounts=accounts)
    mine = resolve(p, view, TokenRequest(ARM.resource, client_id="CID-WL"), policy, now=NOW)
    assert mine.source == WORKLOAD and [i.client_id for i in mine.ready] == ["cid-wl"]
    assert mine.binding_for(mine.ready[0]) is None  # no binding gave it: no binding audit trail
    other = resolve(p, view, TokenRequest(ARM.resource, client_id="cid-other"), policy, now=NOW)
    assert other.source == WORKLOAD and other.workload is not None and not other.ready
    assert isinstance(other.refusal(NOW), IdentityNotFound)
