"""The broker's workload identity bridge over in-memory ports: which pods it serves, with which identity, and
how selectors are answered."""

import pytest

from nmi.broker import MANAGED, STANDARD, BrokerPolicy, TokenBroker
from nmi.errors import IdentityNotFound
from nmi.model import WORKLOAD_IDENTITY, ServiceAccount, TokenRequest

from tests.core.doubles import Catalog, Pods, Tokens, assignment, binding, identity, pod

USE = {"azure.workload.identity/use": "true"}
WI_POLICY = BrokerPolicy(mode=MANAGED, namespaced=True, workload_identity=True, workload_identity_tenant="tenant-flag",
                         workload_identity_authority="https://login.example/")


class Accounts:
    def __init__(self, *accounts: ServiceAccount) -> None:
        self.accounts = {(a.namespace, a.name): a for a in accounts}

    def service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        return self.accounts.get((namespace, name))


def world(*, policy=WI_POLICY):
    pods = Pods(pod("wi", "10.0.0.1", labels=USE, service_account="sa-wi"),
                pod("wi-tenant", "10.0.0.2", labels=USE, service_account="sa-tenant"),
                pod("unlabelled", "10.0.0.3", service_account="sa-wi"),
                pod("label-false", "10.0.0.4", labels={"azure.workload.identity/use": "True"}, service_account="sa-wi"),
                pod("plain-sa", "10.0.0.5", labels=USE, service_account="plain"),
                pod("bound", "10.0.0.6", label="sel", labels=USE, service_account="sa-wi"))
    catalog = Catalog(bound=[binding("b", "id-a", "sel")], ids=[identity("id-a", "client-a")])
    accounts = Accounts(ServiceAccount("default", "sa-wi", client_id="client-wi"),
                        ServiceAccount("default", "sa-tenant", client_id="client-wi", tenant_id="tenant-annotated"),
                        ServiceAccount("default", "plain"))
    tokens = Tokens()
    return TokenBroker(pods, catalog, tokens, policy=policy, service_accounts=accounts), tokens, catalog


async def test_unbound_labelled_pod_with_annotated_service_account_gets_a_workload_identity():
    broker, tokens, _ = world()
    outcome = await broker.for_caller("10.0.0.1", TokenRequest("https://vault.azure.net"))
    ident = outcome.identity
    assert ident.type == WORKLOAD_IDENTITY and ident.client_id == "client-wi"
    assert (ident.namespace, ident.service_account) == ("default", "sa-wi")
    assert (ident.pod_name, ident.pod_uid) == ("wi", "uid-default-wi")
    assert ident.tenant_id == "tenant-flag" and ident.ad_endpoint == "https://login.example/"
    assert outcome.binding is None and outcome.grant.primary.client_id == "client-wi"


async def test_the_tenant_annotation_wins_over_the_flag():
    broker, _, _ = world()
    outcome = await broker.for_caller("10.0.0.2", TokenRequest("r"))
    assert outcome.identity.tenant_id == "tenant-annotated"


@pytest.mark.parametrize("ip", ["10.0.0.3", "10.0.0.4", "10.0.0.5"], ids=["no-label", "label-not-true", "no-annotation"])
async def test_pods_the_bridge_does_not_apply_to_get_identity_not_found(ip):
    broker, tokens, _ = world()
    with pytest.raises(IdentityNotFound):
        await broker.for_caller(ip, TokenRequest("r"))
    assert tokens.calls == []


async def test_a_pod_with_a_binding_keeps_its_aad_pod_identity_even_when_its_selector_misses():
    broker, _, _ = world()
    assert (await broker.for_caller("10.0.0.6", TokenRequest("r"))).identity.name == "id-a"
    with pytest.raises(IdentityNotFound):
        await broker.for_caller("10.0.0.6", TokenRequest("r", client_id="client-wi"))


async def test_flag_off_serves_no_workload_identity():
    broker, tokens, _ = world(policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    with pytest.raises(IdentityNotFound):
        await broker.for_caller("10.0.0.1", TokenRequest("r"))
    assert tokens.calls == []


async def test_selectors_on_a_workload_identity_pod():
    broker, tokens, _ = world()
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r", client_id="CLIENT-WI"))).identity.client_id
    for request in (TokenRequest("r", client_id="client-a"), TokenRequest("r", resource_id="/subscriptions/x"),
                    TokenRequest("r", object_id="oid-someone-else")):
        with pytest.raises(IdentityNotFound):
            await broker.for_caller("10.0.0.1", request)
    outcome = await broker.for_caller("10.0.0.1", TokenRequest("r", object_id="OID-client-wi"))
    assert outcome.identity.service_account == "sa-wi"


async def test_standard_mode_bridges_pods_without_binding_or_assignment_only():
    policy = BrokerPolicy(mode=STANDARD, workload_identity=True, workload_identity_tenant="t")
    broker, _, catalog = world(policy=policy)
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r"))).identity.type == WORKLOAD_IDENTITY
    wi_pod = await broker._pods.pod_for_ip("10.0.0.1")
    catalog.assignments.append(assignment(wi_pod, identity("id-a", "client-a"), "Assigned"))
    assert (await broker.for_caller("10.0.0.1", TokenRequest("r"))).identity.name == "id-a"
