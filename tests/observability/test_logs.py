"""Logging: JSON lines, the access line, upstream's client ID redaction and the secret scrubber."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from nmi.logs import log_access, redact_client_id, scrub_text, setup_logging

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiIxMjM0NTY3OCIsImF1ZCI6Imh0dHBzOi8vdmF1bHQifQ.c2lnbmF0dXJlLXNlY3JldA"
BEARER = "opaque-bearer-value-7f3a9c"
ACCESS = "plain-access-token-0a1b2c"
CLIENT_SECRET = "abc8Q~s3cr3tV4lu3Th4tL00ksL1k3AnAzureSecr3t"
PASSWORD = "hunter2-pa55w0rd"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
SECRETS = [JWT, JWT.split(".")[1], JWT.split(".")[2], BEARER, ACCESS, CLIENT_SECRET, PASSWORD,
           "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "sp-secret-in-extra"]


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {name: logging.getLogger(name).level for name in ("kubernetes", "urllib3", "msal", "aiohttp", "asyncio")})
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def captured(log_format: str, verbosity: int = 0) -> io.StringIO:
    stream = io.StringIO()
    handler = setup_logging(log_format=log_format, verbosity=verbosity, stream=stream)
    # Alone, as in production: pytest's capture handlers would see records unscrubbed and re-raise format errors.
    logging.getLogger().handlers[:] = [handler]
    return stream


@pytest.mark.parametrize("client_id, redacted", [
    ("aabc0000-a83v-9h4m-000j-2c0a66b0c1f9", "aabc##### REDACTED #####c1f9"),
    ("abcdefgh", "abcd##### REDACTED #####efgh"),
    ("abcdefg", "abcdefg"),
    ("", ""),
    (" abcdefgh", " abcdefgh"),
    ("abcd efgh", "abcd##### REDACTED #####efgh"),
])
def test_client_ids_are_redacted_as_upstream_does(client_id, redacted):
    assert redact_client_id(client_id) == redacted


def test_json_mode_writes_one_json_object_per_line_with_structured_extras(restore_logging):
    stream = captured("json")
    log = logging.getLogger("nmi.test")
    before = time.time()
    log.info("chain installed", extra={"chain": "aad-metadata", "rules": 2})
    log.warning("two\nlines %s", "here")
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("failed")
    log_access(pod="default/app", identity_client_id="aabc0000-a83v-9h4m-000j-2c0a66b0c1f9",
               resource="https://vault.azure.net", status=200, cache_hit=True, seconds=0.0123, method="GET",
               route="/metadata/identity/oauth2/token", remote="10.244.0.5")
    after = time.time()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    entries = [json.loads(line) for line in lines]
    assert entries[0]["level"] == "INFO" and entries[0]["logger"] == "nmi.test"
    assert entries[0]["chain"] == "aad-metadata" and entries[0]["rules"] == 2
    assert entries[0]["time"].endswith("Z")
    assert entries[1]["msg"] == "two\nlines here"
    assert "ValueError: broken" in entries[2]["exception"]
    assert entries[3] | {"ts": None, "time": None, "caller": None} == {
        "ts": None, "caller": None, "msg": "token request", "v": 0, "time": None, "level": "INFO",
        "logger": "nmi.access", "pod": "default/app", "identity": "aabc##### REDACTED #####c1f9",
        "resource": "https://vault.azure.net", "status": 200, "cache_hit": True, "duration_ms": 12.3, "method": "GET",
        "route": "/metadata/identity/oauth2/token", "remote": "10.244.0.5"}
    assert all(before * 1000 <= entry["ts"] <= after * 1000 for entry in entries)


def test_json_lines_use_kubernetes_component_base_keys(restore_logging):
    # component-base (k8s.io/component-base/logs/json, zapr) writes ts, caller, msg, then v on info lines and
    # err on error lines, then the key/values: log pipelines built for kubelet's JSON logs key on these.
    stream = captured("json", verbosity=4)
    log = logging.getLogger("nmi.test")
    log.debug("detail", extra={"pod": "ns/p"})
    log.info("state change")
    try:
        raise OSError("table locked")
    except OSError:
        log.exception("chain repair failed")
    log.error("no exception here")
    debug, info, error, plain_error = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert list(debug)[:4] == ["ts", "caller", "msg", "v"]
    assert isinstance(debug["ts"], float) and debug["ts"] > 1e12  # epoch milliseconds, as component-base
    assert (debug["msg"], debug["v"], debug["pod"]) == ("detail", 4, "ns/p")
    assert re.fullmatch(r"test_logs\.py:\d+", debug["caller"])
    assert (info["msg"], info["v"]) == ("state change", 0)
    assert list(error)[:4] == ["ts", "caller", "msg", "err"] and "v" not in error
    assert (error["msg"], error["err"], error["level"]) == ("chain repair failed", "table locked", "ERROR")
    assert "v" not in plain_error and "err" not in plain_error


def test_json_err_and_colliding_extras_are_safe(restore_logging):
    stream = captured("json")
    log = logging.getLogger("nmi.test")
    try:
        raise RuntimeError(f"assertion {JWT} refused")
    except RuntimeError:
        log.exception("acquire failed", extra={"msg_id": 1})
    log.info("hello", extra={"v": "caller-chosen", "ts": "x"})
    error, info = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert JWT not in error["err"] and "[REDACTED]" in error["err"]
    assert (info["v"], info["extra_v"], info["extra_ts"]) == (0, "caller-chosen", "x")


def test_text_mode_access_line_is_one_line_of_key_value_pairs(restore_logging):
    stream = captured("text")
    log_access(pod="", identity_client_id="", resource="https://x\ny", status=503, cache_hit=False,
               seconds=2, method="GET", route="/metadata/identity/oauth2/token", remote="10.0.0.9")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert " INFO nmi.access: token request " in line
    assert 'pod="" identity="" resource="https://x\\ny" status=503 cache_hit=false duration_ms=2000' in line
    assert line.endswith("method=GET route=/metadata/identity/oauth2/token remote=10.0.0.9")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_tokens_and_secrets_never_reach_the_log(restore_logging, log_format):
    stream = captured(log_format, verbosity=6)
    log = logging.getLogger("nmi.tokens")
    log.info("got token %s", JWT)
    log.info("response %s", {"access_token": ACCESS, "token_type": "Bearer", "expires_in": "3599"})
    log.info('raw body {"access_token":"%s","refresh_token":""}', ACCESS)
    log.info("headers: Authorization: Bearer %s", BEARER)
    log.info("form client_secret=%s&grant_type=client_credentials password=%s", CLIENT_SECRET, PASSWORD)
    log.info("secret value %s", CLIENT_SECRET)
    log.info("certificate %s", PRIVATE_KEY)
    log.info("repr %r", {"clientSecret": "sp-secret-in-extra", "Password": PASSWORD})
    log.info("extras", extra={"access_token": ACCESS, "headers": {"Authorization": f"Bearer {BEARER}"},
                              "client_secret": "sp-secret-in-extra", "detail": f"token={JWT}",
                              "items": [JWT, {"password": PASSWORD}]})
    log.info("bad format %s %s", JWT)  # too few args: the record must still be written, scrubbed
    try:
        raise RuntimeError(f"AAD said no for assertion {JWT} with client_secret={CLIENT_SECRET}")
    except RuntimeError:
        log.exception("acquire failed")
    logging.getLogger("msal.application").debug("POST body client_secret=%s", CLIENT_SECRET)
    logging.getLogger("urllib3.connectionpool").debug("Authorization: Bearer %s", BEARER)
    log.info("stack", stack_info=True, extra={"note": f"Bearer {BEARER}"})
    output = stream.getvalue()
    assert output.count("[REDACTED]") >= 15
    for secret in SECRETS:
        assert secret not in output
    assert "token_type" in output and "expires_in" in output  # harmless neighbours survive
    assert "client_secret=[REDACTED]&grant_type=client_credentials password=[REDACTED]" in output
    if log_format == "json":
        assert all(json.loads(line) for line in output.splitlines() if line.startswith("{"))


def test_scrubbing_leaves_ordinary_text_alone():
    text = "secret default/sp-secret not found; pod default/app matched identity id-1 (password key missing)"
    assert scrub_text(text) == text


def test_verbosity_maps_upstream_levels_to_debug(restore_logging):
    stream = captured("text", verbosity=0)
    logging.getLogger("nmi.x").debug("hidden")
    logging.getLogger("nmi.x").info("shown")
    logging.getLogger("kubernetes.client").info("library chatter")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    assert "library chatter" not in stream.getvalue()

    stream = captured("text", verbosity=4)
    logging.getLogger("nmi.x").debug("detail")
    logging.getLogger("urllib3").debug("library detail")
    assert "detail" in stream.getvalue() and "library detail" not in stream.getvalue()

    stream = captured("text", verbosity=6)
    logging.getLogger("urllib3").debug("library detail")
    assert "library detail" in stream.getvalue()


def test_setting_up_twice_does_not_duplicate_lines(restore_logging):
    captured("text")
    stream = captured("json")
    logging.getLogger("nmi.x").info("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_unknown_log_format_is_rejected():
    with pytest.raises(ValueError, match="--log-format"):
        setup_logging(log_format="xml", verbosity=0)
