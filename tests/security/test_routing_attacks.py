"""SPEC §7 "Routing is on a canonical path", attacked on the real daemon: a pod with no identity sends every
spelling of nmi's routes and of the blocked instance path as raw bytes; a fake IMDS that records every request
proves none of them is ever forwarded."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import B
from tests.security import rawhttp
from tests.security.conftest import NO_IDENTITY_POD, UNKNOWN_CALLER, VM_IDENTITY

TOKEN_SPELLINGS = [
    b"/metadata/Identity/oauth2/token", b"/METADATA/IDENTITY/OAUTH2/TOKEN/", b"/metadata%2Fidentity%2Foauth2%2Ftoken",
    b"/metadata%5Cidentity%5Coauth2%5Ctoken", b"/metadata/identity\\oauth2\\token", b"/metadata/%49dentity/oauth2/token",
    b"//metadata//identity/./oauth2/x/../token", b"/metadata/identity/oauth2/TOKEN", b"/metadata%2fIdentity/oauth2/token/",
    b"http://169.254.169.254/metadata/IDENTITY/oauth2/token",
]
IDENTITY_SPELLINGS = [b"/metadata/identity/info", b"/metadata/Identity/info", b"/metadata/IDENTITY", b"/metadata/identityX",
                      b"/metadata/identity/oauth2", b"/metadata%5Cidentity%5Coauth2", b"/x/../metadata/identity/y"]
INSTANCE_SPELLINGS = [b"/metadata\\instance", b"/metadata%5Cinstance/compute", b"/Metadata/INSTANCE", b"/metadata/instance",
                      b"/metadata%2finstance", b"/metadata/identity/../instance", b"/metadata/%69nstance?format=json",
                      b"http://169.254.169.254/metadata/instance", b"/metadata/instance/."]
HOST_TOKEN_SPELLINGS = [b"/host/token", b"/HOST/token", b"/Host/Token/", b"/host%2Ftoken", b"/host\\token", b"/x/../host/token"]
ODD_SPELLINGS = [b"/metadata%252Finstance", b"/metadata;x/instance", b"/metadata./instance", b"/metadata/inst%C4%B1nce",
                 b"/metadata/%E2%84%AAey", b"/metadata%00/instance", b"/metadata/%ff"]
SELECT = b"?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=" + VM_IDENTITY.client_id.encode()


def forwarded(fakes) -> list[tuple[str, str]]:
    return fakes.call(lambda: list(fakes.imds.requests))


def assert_imds_json(answer: rawhttp.RawAnswer) -> None:
    assert answer.headers["content-type"].startswith("application/json")
    assert set(answer.json) == {"error", "error_description"}


@pytest.mark.parametrize("source", [NO_IDENTITY_POD, UNKNOWN_CALLER])
def test_no_spelling_of_a_route_or_blocked_path_reaches_imds_for_a_pod_without_identity(nmi, fakes, source):
    fakes.call(fakes.imds.requests.clear)
    answers = {}
    for path in TOKEN_SPELLINGS:
        answers[path] = answer = rawhttp.get(nmi.port, path + SELECT, source=source)
        # the token route: no identity for this caller (400), or caller unknown (503); never a token
        assert answer.status == (400 if source == NO_IDENTITY_POD else 503), (path, answer)
    for path in IDENTITY_SPELLINGS:
        answers[path] = answer = rawhttp.get(nmi.port, path + SELECT, source=source)
        assert answer.status == 400, (path, answer)
    for path in INSTANCE_SPELLINGS:
        answers[path] = answer = rawhttp.get(nmi.port, path, source=source)
        assert answer.status == 403, (path, answer)
    for path in HOST_TOKEN_SPELLINGS:
        answers[path] = answer = rawhttp.get(nmi.port, path + b"?resource=r", source=source,
                                             headers={b"podns": b"e2e", b"podname": b"app"})
        assert answer.status == 403, (path, answer)
    for path in ODD_SPELLINGS:
        answers[path] = answer = rawhttp.get(nmi.port, path, source=source)
        assert answer.status == 400, (path, answer)
    for answer in answers.values():
        assert_imds_json(answer)
        assert b"access_token" not in answer.body
    assert forwarded(fakes) == []


def test_the_token_route_in_any_spelling_serves_the_bound_pod_its_own_identity(nmi, fakes):
    for path in (b"/METADATA/IDENTITY/OAUTH2/TOKEN/", b"/metadata%5Cidentity%5Coauth2%5Ctoken"):
        answer = rawhttp.get(nmi.port, path + b"?resource=https%3A%2F%2Fvault.azure.net", source="127.0.0.1")
        assert answer.status == 200 and answer.json["client_id"] == B.client_id  # the heavier binding


def test_the_proxy_forwards_only_the_canonical_path(nmi, fakes):
    fakes.call(fakes.imds.requests.clear)
    answer = rawhttp.get(nmi.port, b"/metadata/./x/..//versions?api-version=2021-01-01", source=NO_IDENTITY_POD)
    assert answer.status == 404  # the fake IMDS has no /metadata/versions; what matters is what it was sent
    assert forwarded(fakes) == [("GET", "/metadata/versions?api-version=2021-01-01")]
