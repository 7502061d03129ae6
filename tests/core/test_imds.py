import json

import pytest

from nmi import imds
from nmi.errors import BadRequest, MetadataHeaderMissing, MethodNotAllowed
from nmi.imds import Route
from nmi.model import AccessToken

OK_HEADERS = {"Metadata": "true"}


@pytest.mark.parametrize("raw, expected", [
    ("/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token"),
    ("/metadata/identity/oauth2/token/", "/metadata/identity/oauth2/token/"),
    ("//metadata/identity/oauth2/token", "/metadata/identity/oauth2/token"),
    ("/metadata/./identity//oauth2/token", "/metadata/identity/oauth2/token"),
    ("/metadata/identity/../instance", "/metadata/instance"),
    ("/metadata/identity/%2e%2e/instance", "/metadata/instance"),
    ("/metadata%2Finstance", "/metadata/instance"),
    ("/../../metadata/instance", "/metadata/instance"),
    ("/metadata\\instance", "/metadata/instance"),
    ("/metadata%5Cinstance/compute", "/metadata/instance/compute"),
    ("/Metadata/INSTANCE", "/Metadata/INSTANCE"),
    ("/metadata%252Finstance", "/metadata%2Finstance"),
    ("", "/"),
])
def test_paths_are_normalised_before_routing(raw, expected):
    assert imds.normalise_path(raw) == expected


def test_invalid_utf8_and_nul_in_path_are_bad_requests():
    with pytest.raises(BadRequest):
        imds.normalise_path("/metadata/%ff")
    with pytest.raises(BadRequest):
        imds.normalise_path("/metadata/%00instance")


@pytest.mark.parametrize("path, route", [
    ("/metadata/identity/oauth2/token", Route.TOKEN),
    ("/metadata/identity/oauth2/token/", Route.TOKEN),
    ("/Metadata/identity/oauth2/token/", Route.TOKEN),
    ("/METADATA/identity/oauth2/token", Route.TOKEN),
    ("/metadata/identity/oauth2/tokenXYZ", Route.TOKEN),
    ("/foo/metadata/identity/x/oauth2/y/token", Route.INVALID_TOKEN_PATH),
    ("/host/token", Route.HOST_TOKEN),
    ("/host/token/", Route.HOST_TOKEN),
    ("/host/tokenfoo", Route.HOST_TOKEN),
    ("/metadata/instance", Route.PROXY),
    ("/metadata/", Route.PROXY),
    ("/doesnotexist", Route.PROXY),
])
def test_route_table_matches_upstream_order(path, route):
    assert imds.route_for(path, block_instance_metadata=False) is route


# SPEC §7: routing is on the canonical path (decoded once, `\` read as `/`, dot segments and `//` resolved),
# compared case-insensitively. Upstream answered the backslash spellings 400; here they are the token route,
# which is just as safe (never proxied) and is what the same request spelled plainly gets.
@pytest.mark.parametrize("raw", [
    "/metadata/Identity/oauth2/token", "/METADATA/IDENTITY/OAUTH2/TOKEN/", "/metadata%2Fidentity%2Foauth2%2Ftoken",
    "/metadata%5Cidentity%5Coauth2%5Ctoken", "/metadata/identity\\oauth2/token/", "/metadata/identity/oauth2\\token/",
    "/metadata/identity\\\\\\oauth2\\\\token/", "/metadata/identity/\\oauth2\\token/", "/metadata/%49dentity/oauth2/token",
    "//metadata//identity/./oauth2/x/../token", "http://169.254.169.254/metadata/Identity/oauth2/token?resource=r",
    "/metadata/identity/oauth2/token%3Fresource=x",
])
def test_every_spelling_of_the_token_route_is_the_token_route(raw):
    assert imds.route_for(imds.canonical_path(raw), block_instance_metadata=False) is Route.TOKEN


@pytest.mark.parametrize("raw", [
    "/metadata/identity/info", "/metadata/Identity/info", "/metadata/identity", "/metadata/IDENTITY/",
    "/metadata/identity/oauth2", "/metadata/identity/oauth2/tok", "/metadata%2Fidentity/oauth2/", "/metadata/identityX",
    "/metadata\\identity\\oauth2", "/x/../metadata/identity/y/oauth2/z/token",
])
def test_any_other_path_under_metadata_identity_is_refused(raw):
    assert imds.route_for(imds.canonical_path(raw), block_instance_metadata=False) is Route.INVALID_TOKEN_PATH


@pytest.mark.parametrize("raw", ["/HOST/token", "/Host/Token/", "/host%2Ftoken", "/host\\token", "/x/../host/token",
                                 "/host/TOKEN?resource=r"])
def test_every_spelling_of_host_token_is_the_host_token_route(raw):
    """Decided: a case variant of /host/token is the host-token route (served to 127.0.0.1 only), never
    proxied; the safe reading whatever IMDS would make of it."""
    assert imds.route_for(imds.canonical_path(raw), block_instance_metadata=True) is Route.HOST_TOKEN


@pytest.mark.parametrize("path", ["/metadata%25252Finstance", "/metadata;x/instance", "/metadata/inst%C4%B1nce",
                                  "/metadata./instance", "/metadata/instance%3F", "/metadata/ x", "/a%0Ab",
                                  "/metadata/\u212anstance"])
def test_proxied_paths_must_be_spelled_as_imds_spells_its_own(path):
    with pytest.raises(BadRequest):
        imds.check_proxyable(imds.canonical_path(path))


@pytest.mark.parametrize("path", ["/metadata/versions", "/metadata/attested/document", "/metadata/scheduledevents",
                                  "/metadata/instance/compute/tagsList", "/"])
def test_imds_own_paths_are_proxyable(path):
    imds.check_proxyable(imds.canonical_path(path))


@pytest.mark.parametrize("raw", [
    "/metadata/instance", "/Metadata/instance", "/Metadata/instance/", "/metadata/instance/compute",
    "/METADATA/INSTANCE", "/metadata/identity/../instance", "//metadata/instance", "/metadata/%69nstance",
    "/metadata/./instance", "/x/../metadata/instance?api-version=2021-02-01", "/metadata%2finstance",
    "/metadata\\instance", "/metadata%5Cinstance/compute", "/Metadata/INSTANCE", "/metadata%5cINSTANCE",
    "http://169.254.169.254/metadata/instance", "/metadata/instance.", "/metadata/instance/",
])
def test_instance_metadata_blocked_in_every_spelling(raw):
    path = imds.canonical_path(raw)
    assert imds.route_for(path, block_instance_metadata=True) is Route.INSTANCE_BLOCKED


def test_absolute_form_is_reduced_to_its_path_and_other_forms_are_refused():
    assert imds.canonical_path("HTTP://169.254.169.254:80/metadata/versions?x=1") == "/metadata/versions"
    for target in ("*", "169.254.169.254:80", "metadata/instance"):
        with pytest.raises(BadRequest):
            imds.canonical_path(target)


def parse(query, headers=OK_HEADERS, method="GET", required=True):
    return imds.parse_token_request(method, headers, imds.parse_query(query), metadata_required=required)


def test_metadata_header_missing_or_not_exactly_true_is_rejected_first():
    for headers in ({}, {"Metadata": "True"}, {"Metadata": "1"}, {"Metadata": "TRUE"}):
        with pytest.raises(MetadataHeaderMissing) as info:
            parse("", headers=headers, method="POST")
        assert imds.render_error(info.value) == (
            '{"error":"invalid_request","error_description":"Required metadata header not specified"}')


def test_metadata_header_not_needed_when_not_required():
    assert parse("resource=r", headers={}, required=False).resource == "r"


def test_x_forwarded_for_is_rejected_before_method():
    with pytest.raises(BadRequest, match="X-Forwarded-For"):
        parse("resource=r", headers={"Metadata": "true", "X-Forwarded-For": "1.2.3.4"}, method="POST")


def test_methods_other_than_get_are_405():
    with pytest.raises(MethodNotAllowed) as info:
        parse("resource=r", method="POST")
    assert info.value.status == 405


@pytest.mark.parametrize("query", ["resource=a&resource=b", "resource=a&client_id=x&client_id=x"])
def test_duplicate_query_keys_are_rejected(query):
    with pytest.raises(BadRequest, match="more than once"):
        parse(query)


@pytest.mark.parametrize("query", ["", "resource=", "resource=%20", "client_id=x"])
def test_missing_or_empty_resource_is_400(query):
    with pytest.raises(BadRequest, match="resource"):
        parse(query)


@pytest.mark.parametrize("query", ["resource=r&client_id=a&msi_res_id=b", "resource=r&msi_res_id=a&mi_res_id=b",
                                   "resource=r&object_id=a&client_id=b"])
def test_at_most_one_identity_selector(query):
    with pytest.raises(BadRequest, match="Only one"):
        parse(query)


def test_selectors_are_parsed():
    assert parse("resource=r&client_id=C").client_id == "C"
    assert parse("resource=r&msi_res_id=/a").resource_id == "/a"
    assert parse("resource=r&mi_res_id=/b").resource_id == "/b"
    assert parse("resource=r&object_id=O").object_id == "O"
    request = parse("resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01")
    assert request.resource == "https://vault.azure.net" and not request.selects


def test_token_object_is_all_strings_with_remaining_lifetime():
    token = AccessToken(access_token="at", expires_on=1_000_3600, resource="ignored", client_id="cid",
                        not_before=1_000_000)
    body = imds.token_object(token, resource="https://vault.azure.net", now=1_000_3600 - 1234.7)
    assert body == {"access_token": "at", "refresh_token": "", "expires_in": "1234", "expires_on": "10003600",
                    "not_before": "1000000", "resource": "https://vault.azure.net", "token_type": "Bearer",
                    "client_id": "cid"}
    assert all(isinstance(v, str) for v in body.values())


def test_several_tokens_render_as_an_array_primary_first():
    tokens = [AccessToken(access_token=f"t{i}", expires_on=100, resource="r") for i in range(3)]
    rendered = json.loads(imds.render_tokens(tokens, resource="r", now=50))
    assert [t["access_token"] for t in rendered] == ["t0", "t1", "t2"]
    single = json.loads(imds.render_tokens(tokens[:1], resource="r", now=50))
    assert single["access_token"] == "t0" and single["expires_in"] == "50"


def test_expired_token_never_renders_negative_lifetime():
    token = AccessToken(access_token="t", expires_on=100, resource="r")
    assert imds.token_object(token, resource="r", now=500)["expires_in"] == "0"
