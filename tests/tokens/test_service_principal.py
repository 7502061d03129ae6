"""Types 1 and 2: the real msal.ConfidentialClientApplication against the fake Azure AD over HTTPS."""

from __future__ import annotations

import pytest

from nmi.errors import IdentityConfigurationError, TokenRefused
from fakes.pki import new_key, pkcs12_bundle, self_signed_certificate
from nmi.model import SERVICE_PRINCIPAL, SERVICE_PRINCIPAL_CERTIFICATE, Identity, SecretRef
from nmi.tokens.msal_http import jwt_claims

ARM = "https://management.azure.com/"
SECRET = "s3cret-value~abc"


def service_principal(aad, *, type: int = SERVICE_PRINCIPAL, client_id: str = "sp-client", tenant: str = "tenant-a",
                      aux: tuple[str, ...] = (), ad_endpoint: str | None = None, secret: str = "sp-secret") -> Identity:
    return Identity("apps", "sp", type=type, client_id=client_id, tenant_id=tenant, auxiliary_tenant_ids=aux,
                    ad_endpoint=aad.authority_host if ad_endpoint is None else ad_endpoint,
                    client_password=SecretRef("apps", secret))


def assert_safe(error: Exception, *secrets: str) -> None:
    text = str(error) + repr(error.__dict__)
    assert not any(secret in text for secret in secrets)
    assert "eyJ" not in text


async def test_client_secret_gets_a_token_for_the_v2_default_scope(aad, make_service, secrets):
    app = aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    grant = await make_service().get(service_principal(aad), ARM)

    token = grant.primary
    # resource + "/.default" keeps the exact v1 audience, trailing slash included (Azure AD's documented mapping).
    assert aad.token_calls == {("tenant-a", "sp-client", "https://management.azure.com//.default"): 1}
    assert jwt_claims(token.access_token)["aud"] == ARM
    assert (token.resource, token.client_id, token.object_id) == (ARM, "sp-client", app.object_id)
    assert aad.client_auth == ["secret"]


async def test_secret_with_a_single_key_of_any_name_is_used(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"password": (SECRET + "\n").encode()})

    grant = await make_service().get(service_principal(aad), "https://vault.azure.net")

    assert grant.primary.client_id == "sp-client"


async def test_secret_with_several_keys_and_no_client_secret_key_is_a_configuration_error(aad, make_service, secrets):
    secrets.put("apps", "sp-secret", {"a": SECRET.encode(), "b": b"other-value"})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad), ARM)

    assert caught.value.status == 403 and "Secret apps/sp-secret" in caught.value.description
    assert_safe(caught.value, SECRET, "other-value")
    assert aad.token_requests == 0


async def test_missing_secret_is_a_configuration_error_naming_it(aad, make_service):
    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad), ARM)

    assert "apps/sp-secret" in caught.value.description


async def test_wrong_client_secret_is_refused_with_403_and_the_azure_ad_error(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", "the-right-one")
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(TokenRefused) as caught:
        await make_service().get(service_principal(aad), ARM)

    assert (caught.value.status, caught.value.error) == (403, "invalid_client")
    assert "AADSTS7000215" in caught.value.description
    assert_safe(caught.value, SECRET, "the-right-one")
    assert aad.token_requests == 1  # a refusal is final: no retry


async def test_unknown_tenant_is_refused_with_403(aad, make_service, secrets):
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(TokenRefused) as caught:
        await make_service().get(service_principal(aad, tenant="nobody"), ARM)

    assert (caught.value.status, caught.value.error) == (403, "invalid_tenant")
    assert "nobody" in caught.value.description


@pytest.mark.parametrize("password", [b"pfx-pass", None])
async def test_rsa_certificate_signs_a_client_assertion_azure_ad_verifies(aad, make_service, secrets, password):
    key = new_key("rsa")
    certificate = self_signed_certificate("sp-cert", key)
    app = aad.register_certificate_app("tenant-a", "sp-client", certificate)
    data = {"certificate": pkcs12_bundle(key, certificate, password)}
    if password:
        data["password"] = password
    secrets.put("apps", "sp-secret", data)

    grant = await make_service().get(service_principal(aad, type=SERVICE_PRINCIPAL_CERTIFICATE), ARM)

    assert grant.primary.object_id == app.object_id
    assert aad.client_auth == ["assertion:PS256"]
    assert {"x5c", "x5t#S256"} <= set(aad.assertion_headers[0])  # x5c: the chain is sent, like upstream


async def test_certificate_of_another_key_is_refused_by_azure_ad(aad, make_service, secrets):
    registered = self_signed_certificate("sp-cert", new_key("rsa"))
    aad.register_certificate_app("tenant-a", "sp-client", registered)
    other_key = new_key("rsa")
    secrets.put("apps", "sp-secret", {"certificate": pkcs12_bundle(other_key, self_signed_certificate("x", other_key),
                                                                   None)})

    with pytest.raises(TokenRefused) as caught:
        await make_service().get(service_principal(aad, type=SERVICE_PRINCIPAL_CERTIFICATE), ARM)

    assert caught.value.error == "invalid_client"


async def test_ec_certificate_is_a_configuration_error_because_msal_signs_only_with_rsa(aad, make_service, secrets):
    key = new_key("ec")
    secrets.put("apps", "sp-secret", {"certificate": pkcs12_bundle(key, self_signed_certificate("ec", key), None)})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad, type=SERVICE_PRINCIPAL_CERTIFICATE), ARM)

    assert "EC key" in caught.value.description and "RSA" in caught.value.description
    assert "Secret apps/sp-secret" in caught.value.description
    assert aad.token_requests == 0


@pytest.mark.parametrize("data", [
    {"certificate": b"not a pkcs12 bundle"},
    {"password": b"orphan"},
    "wrong-password",
])
async def test_unreadable_certificate_is_a_configuration_error_naming_the_secret(aad, make_service, secrets, data):
    if data == "wrong-password":
        key = new_key("rsa")
        data = {"certificate": pkcs12_bundle(key, self_signed_certificate("c", key), b"right"), "password": b"wrong"}
    secrets.put("apps", "sp-secret", data)

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad, type=SERVICE_PRINCIPAL_CERTIFICATE), ARM)

    assert "Secret apps/sp-secret" in caught.value.description
    assert_safe(caught.value, "right", "wrong", "orphan")


async def test_auxiliary_tenants_give_one_token_per_tenant_primary_first_in_array_order(aad, make_service, secrets):
    for tenant in ("tenant-a", "tenant-b", "tenant-c", "tenant-d"):
        aad.register_secret_app(tenant, "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})
    identity = service_principal(aad, aux=("tenant-d", "tenant-b", "tenant-c"))

    grant = await make_service().get(identity, ARM)

    assert [jwt_claims(t.access_token)["tid"] for t in grant.tokens] == ["tenant-a", "tenant-d", "tenant-b", "tenant-c"]
    assert (await make_service().get(identity, ARM)).tokens[0].resource == ARM


async def test_certificate_identity_honours_auxiliary_tenants_too(aad, make_service, secrets):
    # Upstream ignored auxiliaryTenantIDs for type 2; nmi answers them like for a client secret.
    key = new_key("rsa")
    certificate = self_signed_certificate("sp-cert", key)
    for tenant in ("tenant-a", "tenant-b"):
        aad.register_certificate_app(tenant, "sp-client", certificate)
    secrets.put("apps", "sp-secret", {"certificate": pkcs12_bundle(key, certificate, None)})

    grant = await make_service().get(service_principal(aad, type=SERVICE_PRINCIPAL_CERTIFICATE, aux=("tenant-b",)),
                                     ARM)

    assert [jwt_claims(t.access_token)["tid"] for t in grant.tokens] == ["tenant-a", "tenant-b"]


async def test_more_than_three_auxiliary_tenants_is_a_configuration_error(aad, make_service, secrets):
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad, aux=("b", "c", "d", "e")), ARM)

    assert "AzureIdentity apps/sp" in caught.value.description and "auxiliaryTenantIDs" in caught.value.description
    assert aad.token_requests == 0 and secrets.reads == 0


@pytest.mark.parametrize("identity_type", [3, -1])
async def test_unsupported_identity_type_is_a_configuration_error(aad, make_service, identity_type):
    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad, type=identity_type), ARM)

    assert f"unsupported identity type {identity_type}" in caught.value.description


async def test_ad_endpoint_without_trailing_slash_is_used_as_the_authority(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    await make_service().get(service_principal(aad, ad_endpoint=aad.authority_host.rstrip("/")), ARM)

    assert aad.discovery_calls == {"tenant-a": 1}


async def test_plain_http_ad_endpoint_is_a_configuration_error(aad, make_service, secrets):
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})

    with pytest.raises(IdentityConfigurationError) as caught:
        await make_service().get(service_principal(aad, ad_endpoint="http://127.0.0.1:9/"), ARM)

    assert "adEndpoint" in caught.value.description


async def test_rotated_secret_takes_effect_at_the_next_acquisition_without_restart(aad, make_service, secrets):
    aad.register_secret_app("tenant-a", "sp-client", "first-secret")
    secrets.put("apps", "sp-secret", {"clientSecret": b"first-secret"})
    service = make_service()
    await service.get(service_principal(aad), ARM)

    aad.register_secret_app("tenant-a", "sp-client", "second-secret")  # the old secret stops working
    secrets.put("apps", "sp-secret", {"clientSecret": b"second-secret"})
    grant = await service.get(service_principal(aad), "https://vault.azure.net")

    assert grant.primary.client_id == "sp-client"
    assert aad.discovery_calls == {"tenant-a": 2}  # the MSAL app was rebuilt for the new credential
    assert (await service.get(service_principal(aad), ARM)).cached  # tokens already issued stay valid


async def test_refresh_ahead_reaches_azure_ad_although_msal_would_still_have_cached_the_token(
        aad, make_service, secrets, clock):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})
    service = make_service()
    first = await service.get(service_principal(aad), ARM)

    clock.advance(3599 - 300)  # due for refresh by nmi's clock; MSAL's own cache would answer by the real clock
    assert (await service.get(service_principal(aad), ARM)).cached
    await service.wait_idle()

    assert aad.token_requests == 2
    assert (await service.get(service_principal(aad), ARM)).primary != first.primary
