"""Type 0 identities and the node's own identities: the real msal.ManagedIdentityClient against the fake IMDS."""

from __future__ import annotations

import pytest

from nmi.errors import IdentityConfigurationError
from nmi.model import Identity
from nmi.tokens.msal_http import jwt_claims

ARM = "https://management.azure.com/"


def user_assigned(client_id: str = "cid-user-1", *, resource_id: str = "", name: str = "id-1") -> Identity:
    return Identity("default", name, client_id=client_id, resource_id=resource_id)


async def test_user_assigned_identity_gets_a_token_from_imds_by_client_id(imds, make_service, clock):
    service = make_service(imds)

    grant = await service.get(user_assigned(), ARM)

    token = grant.primary
    assert not grant.cached and len(grant.tokens) == 1
    assert jwt_claims(token.access_token)["aud"] == ARM
    assert (token.resource, token.token_type, token.client_id, token.object_id) == (ARM, "Bearer", "cid-user-1",
                                                                                   "oid-user-1")
    assert token.expires_on == int(clock.now) + 3599
    assert token.not_before is not None
    assert imds.calls == {("cid-user-1", ARM): 1}


async def test_identity_with_only_a_resource_id_is_selected_by_resource_id(imds, make_service):
    grant = await make_service(imds).get(user_assigned("", resource_id="/subscriptions/s/rg/id-1"), ARM)

    assert grant.primary.object_id == "oid-user-1"


async def test_second_request_is_answered_from_the_cache_without_an_upstream_call(imds, make_service):
    service = make_service(imds)
    first = await service.get(user_assigned(), ARM)

    second = await service.get(user_assigned(), ARM)

    assert second.cached and second.primary == first.primary
    assert imds.token_requests == 1


async def test_different_resources_and_identities_are_cached_separately(imds, make_service):
    service = make_service(imds)
    await service.get(user_assigned(), ARM)
    await service.get(user_assigned(), "https://vault.azure.net")
    await service.get(user_assigned("cid-user-2", name="id-2"), ARM)

    assert imds.calls == {("cid-user-1", ARM): 1, ("cid-user-1", "https://vault.azure.net"): 1,
                          ("cid-user-2", ARM): 1}


async def test_scope_style_resource_is_sent_to_imds_as_a_resource(imds, make_service):
    grant = await make_service(imds).get(user_assigned(), "https://vault.azure.net/.default")

    assert imds.calls == {("cid-user-1", "https://vault.azure.net"): 1}
    assert grant.primary.resource == "https://vault.azure.net/.default"


async def test_node_token_without_a_selector_is_the_system_assigned_identity(imds, make_service):
    grant = await make_service(imds).get_for_node(ARM)

    assert grant.primary.object_id == "oid-system"


@pytest.mark.parametrize("selector, object_id, sent", [
    ({"client_id": "cid-user-2"}, "oid-user-2", {"client_id": "cid-user-2"}),
    ({"resource_id": "/subscriptions/s/rg/id-1"}, "oid-user-1", {"msi_res_id": "/subscriptions/s/rg/id-1"}),
    ({"object_id": "oid-user-2"}, "oid-user-2", {"object_id": "oid-user-2"}),
])
async def test_node_token_honours_each_selector_as_imds_own(imds, make_service, selector, object_id, sent):
    grant = await make_service(imds).get_for_node(ARM, **selector)

    assert grant.primary.object_id == object_id
    (query,) = imds.queries
    assert {k: v for k, v in query.items() if k in ("client_id", "msi_res_id", "mi_res_id", "object_id")} == sent


async def test_imds_is_reached_at_the_configured_metadata_address_whatever_the_environment(
        imds, make_service, monkeypatch):
    # MSAL alone would follow this variable; nmi must use --metadata-ip/--metadata-port instead.
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")

    grant = await make_service(imds).get(user_assigned(), ARM)

    assert grant.primary.object_id == "oid-user-1"


async def test_user_assigned_identity_without_client_or_resource_id_is_a_configuration_error(imds, make_service):
    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service(imds).get(user_assigned(""), ARM)

    assert caught.value.status == 403 and "AzureIdentity default/id-1" in caught.value.description
    assert imds.token_requests == 0


async def test_forgotten_identity_is_fetched_again_while_kept_ones_stay_cached(imds, make_service):
    service = make_service(imds)
    await service.get(user_assigned(), ARM)
    await service.get(user_assigned("cid-user-2", name="id-2"), ARM)
    await service.get_for_node(ARM)

    service.forget({"default/id-2"})

    assert not (await service.get(user_assigned(), ARM)).cached
    assert (await service.get(user_assigned("cid-user-2", name="id-2"), ARM)).cached
    assert (await service.get_for_node(ARM)).cached
