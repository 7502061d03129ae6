"""SPEC §2 "Token acquisition errors": how upstream refusals, throttling and outages reach the caller."""

from __future__ import annotations

import random
import socket

import pytest

from nmi.errors import Throttled, TokenRefused, Unavailable
from fakes.imds import Fault
from nmi.logs import scrub_text
from nmi.model import SERVICE_PRINCIPAL, Identity, SecretRef
from nmi.tokens.failures import safe_description

ARM = "https://management.azure.com/"
IDENTITY = Identity("default", "id-1", client_id="cid-user-1")
SECRET = "sp-secret-value"


@pytest.mark.parametrize("status, error", [(400, "invalid_resource"), (401, "unauthorized"), (403, "forbidden")])
async def test_imds_refusal_is_403_with_the_upstream_error_and_not_retried(imds, make_service, status, error):
    imds.fail_next(1, Fault(status, {"error": error, "error_description": "AADSTS500011: resource not found"}))

    with pytest.raises(TokenRefused) as caught:
        await make_service(imds).get(IDENTITY, ARM)

    assert (caught.value.status, caught.value.error) == (403, error)
    assert "AADSTS500011: resource not found" in caught.value.description
    assert imds.token_requests == 1


async def test_imds_identity_not_found_is_returned_once_with_its_description(imds, make_service):
    with pytest.raises(TokenRefused) as caught:
        await make_service(imds).get(Identity("default", "ghost", client_id="not-on-this-vm"), ARM)

    assert caught.value.error == "invalid_request" and "Identity not found" in caught.value.description
    assert imds.token_requests == 1


async def test_imds_throttling_past_the_budget_is_429_with_its_retry_after(imds, make_service, clock):
    imds.fail_next(10, Fault(429, retry_after="7"))
    started = clock.now

    with pytest.raises(Throttled) as caught:
        await make_service(imds, retry_budget=10.0).get(IDENTITY, ARM)

    assert (caught.value.status, caught.value.retry_after) == (429, 7)
    assert imds.token_requests == 2  # waited the 7 s once; a second wait would pass the 10 s budget
    assert clock.now - started >= 7


async def test_imds_throttling_once_is_retried_after_retry_after(imds, make_service, clock):
    imds.fail_next(1, Fault(429, retry_after="3"))
    started = clock.now

    grant = await make_service(imds).get(IDENTITY, ARM)

    assert grant.primary.object_id == "oid-user-1"
    assert imds.token_requests == 2 and clock.now - started >= 3


@pytest.mark.parametrize("status", [404, 410, 500, 503])
async def test_imds_transient_answers_are_retried_until_success(imds, make_service, status):
    imds.fail_next(2, Fault(status))

    grant = await make_service(imds).get(IDENTITY, ARM)

    assert grant.primary.object_id == "oid-user-1" and imds.token_requests == 3


@pytest.mark.parametrize("status", [500, 502, 410])
async def test_imds_persistent_outage_is_503_with_retry_after_after_bounded_retries(imds, make_service, clock, status):
    imds.fail_next(50, Fault(status))
    started = clock.now

    with pytest.raises(Unavailable) as caught:
        await make_service(imds, retry_budget=10.0, max_attempts=5, rng=random.Random(1)).get(IDENTITY, ARM)

    assert caught.value.status == 503 and caught.value.retry_after >= 1
    assert 3 <= imds.token_requests <= 5
    assert clock.now - started <= 10.0


async def test_imds_timeout_is_retried_then_503(imds, make_service):
    imds.fail_next(10, Fault(status=0, delay=1.0))  # answers only after the client has given up

    with pytest.raises(Unavailable) as caught:
        await make_service(imds, attempt_timeout=0.2, max_attempts=2).get(IDENTITY, ARM)

    assert caught.value.status == 503 and "ReadTimeout" in caught.value.description
    assert imds.token_requests == 2


async def test_connection_refused_is_retried_then_503(make_service):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempts: list[bool] = []
    service = make_service(metadata_port=port, max_attempts=3, observe_upstream=lambda s, _t, ok: attempts.append(ok))

    with pytest.raises(Unavailable) as caught:
        await service.get(IDENTITY, ARM)

    assert caught.value.retry_after >= 1 and "could not be reached" in caught.value.description
    assert attempts == [False, False, False]  # three attempts, each reported to the metrics hook as failed


def sp(aad) -> Identity:
    return Identity("apps", "sp", type=SERVICE_PRINCIPAL, client_id="sp-client", tenant_id="tenant-a",
                    ad_endpoint=aad.authority_host, client_password=SecretRef("apps", "sp-secret"))


@pytest.fixture
def registered_sp(aad, secrets):
    aad.register_secret_app("tenant-a", "sp-client", SECRET)
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})
    return sp(aad)


async def test_azure_ad_throttling_is_429_with_retry_after(aad, make_service, registered_sp):
    aad.fail_next(10, Fault(429, retry_after="30"))

    with pytest.raises(Throttled) as caught:
        await make_service().get(registered_sp, ARM)

    assert caught.value.retry_after == 30
    assert aad.token_requests == 1  # 30 s does not fit the 10 s budget: answer at once


async def test_azure_ad_server_error_is_retried_then_503(aad, make_service, registered_sp):
    aad.fail_next(10, Fault(500))

    with pytest.raises(Unavailable) as caught:
        await make_service(max_attempts=3).get(registered_sp, ARM)

    assert caught.value.status == 503
    assert aad.token_requests == 3


async def test_azure_ad_server_error_once_is_retried_to_success(aad, make_service, registered_sp):
    aad.fail_next(1, Fault(503))

    grant = await make_service().get(registered_sp, ARM)

    assert grant.primary.client_id == "sp-client" and aad.token_requests == 2


async def test_azure_ad_bad_request_is_403_and_not_retried(aad, make_service, registered_sp):
    aad.fail_next(1, Fault(400, {"error": "invalid_scope", "error_description": f"scope rejected {SECRET}"}))

    with pytest.raises(TokenRefused) as caught:
        await make_service().get(registered_sp, ARM)

    assert caught.value.error == "invalid_scope"
    assert SECRET not in caught.value.description  # even an upstream echo of the secret is blanked
    assert aad.token_requests == 1


async def test_unreachable_azure_ad_is_503(aad, make_service, secrets):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secrets.put("apps", "sp-secret", {"clientSecret": SECRET.encode()})
    identity = Identity("apps", "sp", type=SERVICE_PRINCIPAL, client_id="c", tenant_id="t",
                        ad_endpoint=f"https://127.0.0.1:{port}/", client_password=SecretRef("apps", "sp-secret"))

    with pytest.raises(Unavailable):
        await make_service(max_attempts=2).get(identity, ARM)


@pytest.mark.parametrize("shape", ["eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJl",  # a whole JWT
                                   "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJ4In0",  # header and payload, no signature
                                   "eyJhbGciOiJSUzI1NiJ9"])  # a header alone
def test_attack_token_shaped_text_in_an_upstream_error_description_is_blanked(shape):
    # A hostile or buggy upstream echoes a token (or part of one) and the client secret in its description;
    # the same JWT pattern as the log scrubber's (nmi.logs.JWT_LIKE) blanks it before it reaches the caller.
    text = safe_description(f"AADSTS7000215: bad assertion {shape} for secret s3cr3t~value", secret="s3cr3t~value")
    assert "eyJ" not in text and "s3cr3t" not in text
    assert text == "AADSTS7000215: bad assertion [redacted] for secret [redacted]"
    assert "eyJ" not in scrub_text(f"upstream said {shape}")
