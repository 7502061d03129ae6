"""The fakes speak the wire shapes other tests and the README demo rely on."""

from __future__ import annotations

import aiohttp
import pytest

from fakes.imds import FakeImds, VmIdentity
from nmi.tokens.msal_http import jwt_claims

TOKEN = "/metadata/identity/oauth2/token"


async def fetch(url: str, *, headers: dict | None = None, method: str = "GET", data: bytes | None = None):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers, data=data) as response:
            return response.status, await response.json(content_type=None)


async def test_fake_imds_answers_the_real_all_strings_shape(imds):
    status, body = await fetch(f"{imds.url}{TOKEN}?api-version=2018-02-01&resource=https://vault.azure.net&"
                               "object_id=oid-user-2", headers={"Metadata": "true"})

    assert status == 200
    assert set(body) == {"access_token", "refresh_token", "expires_in", "expires_on", "ext_expires_in", "not_before",
                         "resource", "token_type", "client_id"}
    assert all(isinstance(value, str) for value in body.values())
    assert body["client_id"] == "cid-user-2" and jwt_claims(body["access_token"])["oid"] == "oid-user-2"


@pytest.mark.parametrize("query, headers, description", [
    ("resource=r", {}, "Required metadata header not specified"),
    ("resource=r&client_id=unknown", {"Metadata": "true"}, "Identity not found"),
    ("resource=r&mi_res_id=/nope", {"Metadata": "true"}, "Identity not found"),
])
async def test_fake_imds_rejects_like_imds(imds, query, headers, description):
    status, body = await fetch(f"{imds.url}{TOKEN}?{query}", headers=headers)

    assert (status, body) == (400, {"error": "invalid_request", "error_description": description})


async def test_fake_imds_without_selector_needs_a_single_or_system_identity():
    async with FakeImds([VmIdentity("a"), VmIdentity("b")]) as fake:
        status, body = await fetch(f"{fake.url}{TOKEN}?resource=r", headers={"Metadata": "true"})

    assert status == 400 and "Multiple user assigned identities" in body["error_description"]


async def test_fake_imds_serves_instance_metadata_and_echoes_other_paths(imds):
    status, instance = await fetch(f"{imds.url}/metadata/instance?api-version=2021-02-01", headers={"Metadata": "true"})
    echo_status, echo = await fetch(f"{imds.url}/metadata/other/x?a=1", method="POST", data=b"payload",
                                    headers={"Metadata": "true"})

    assert status == 200 and instance["compute"]["name"] == "fake-vm"
    assert echo_status == 404
    assert (echo["method"], echo["path"], echo["query_string"], echo["body"]) == ("POST", "/metadata/other/x", "a=1",
                                                                                 "payload")
