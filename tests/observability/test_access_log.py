"""The access line's fast path writes exactly what the LogRecord path writes: same fields, scrubbing, escaping.

A caller controls `resource` (and, within HTTP's limits, `method`): hostile values go through both paths and the
lines must be identical apart from the clock fields, one line per request, with no secret and no raw control
character in them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from nmi import access_log
from nmi.logs import log_access, setup_logging

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJvaWQiOiIxMjM0NTY3OCJ9.c2lnbmF0dXJlLXNlY3JldA"
HOSTILE_RESOURCES = [
    "https://vault.azure.net",
    "https://x\nINFO nmi.access: token request pod=kube-system/admin status=200",
    f"https://x/?access_token={JWT}",
    "https://x\r\x1b[31mred\x1b[0m\u2028\u2029\x85end",
    'https://x" status=200 pod="other/pod',
    "",
    "https://x/" + "a" * 400,
]


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _lines(log_format: str, *, fast: bool, resource: str, method: str = "GET") -> list[str]:
    stream = io.StringIO()
    handler = setup_logging(log_format=log_format, stream=stream)
    logging.getLogger().handlers[:] = [handler] if fast else [handler, logging.NullHandler()]
    log_access(pod="default/app", identity_client_id="aabc0000-a83v-9h4m-000j-2c0a66b0c1f9", resource=resource,
               status=200, cache_hit=True, seconds=0.0123, method=method, route="/metadata/identity/oauth2/token",
               remote="10.244.0.5")
    # Split on "\n" only: whether U+2028/U+2029/NEL are escaped is the escaping function's rule (nmi.logs), which
    # both paths share; what this file proves is that both paths apply it identically.
    return stream.getvalue().split("\n")[:-1]


def _without_clock(line: str, log_format: str) -> str:
    if log_format == "json":
        entry = json.loads(line)
        entry.update(ts=None, time=None)
        return json.dumps(entry)
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("resource", HOSTILE_RESOURCES)
def test_fast_path_line_equals_the_record_line(restore_logging, log_format, resource):
    fast = _lines(log_format, fast=True, resource=resource, method="G\u2028ET")
    slow = _lines(log_format, fast=False, resource=resource, method="G\u2028ET")
    assert len(fast) == len(slow) == 1
    assert _without_clock(fast[0], log_format) == _without_clock(slow[0], log_format)
    assert JWT not in fast[0] and JWT.split(".")[2] not in fast[0]
    assert not any(ch in fast[0] for ch in "\x1b\r\u2028\u2029\x85")  # nmi.logs' escaping, on the fast path too
    assert len(fast[0].splitlines()) == 1


@pytest.mark.parametrize("resource", HOSTILE_RESOURCES)
def test_a_remembered_text_line_equals_the_record_line_too(restore_logging, resource):
    # The text fast path remembers each caller's escaped fields: the second line for the same caller comes from
    # the memory and must still be exactly the record's.
    slow = _lines("text", fast=False, resource=resource, method="G\u2028ET")
    for _ in range(2):
        fast = _lines("text", fast=True, resource=resource, method="G\u2028ET")
        assert [_without_clock(line, "text") for line in fast] == [_without_clock(line, "text") for line in slow]


def test_json_access_line_has_the_formatter_keys_in_order(restore_logging):
    (line,) = _lines("json", fast=True, resource="https://vault.azure.net")
    assert list(json.loads(line))[:7] == ["ts", "caller", "msg", "v", "time", "level", "logger"]
    assert json.loads(line)["caller"].startswith("access_log.py:")


def test_on_the_loop_lines_wait_for_the_end_of_the_iteration_and_keep_order(restore_logging):
    stream = io.StringIO()
    handler = setup_logging(log_format="text", stream=stream)
    logging.getLogger().handlers[:] = [handler]

    async def requests() -> str:
        for n in range(3):
            log_access(pod=f"ns/p{n}", identity_client_id="", resource="r", status=200, cache_hit=True,
                       seconds=0.001, method="GET", route="/metadata/identity/oauth2/token", remote="10.0.0.1")
        written_during_iteration = stream.getvalue()
        logging.getLogger("nmi.test").warning("after the three requests")
        return written_during_iteration

    during = asyncio.run(requests())
    assert during == ""  # one write per loop iteration, not per request
    lines = stream.getvalue().splitlines()
    assert [line.split("pod=")[1].split(" ")[0] for line in lines[:3]] == ["ns/p0", "ns/p1", "ns/p2"]
    assert "after the three requests" in lines[3] and len(lines) == 4


def test_lines_left_on_a_stopped_loop_are_flushed_at_the_next_record(restore_logging):
    stream = io.StringIO()
    handler = setup_logging(log_format="text", stream=stream)
    logging.getLogger().handlers[:] = [handler]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))

        async def one() -> None:
            log_access(pod="ns/p", identity_client_id="", resource="r", status=200, cache_hit=True, seconds=0.001,
                       method="GET", route="/metadata/identity/oauth2/token", remote="10.0.0.1")

        loop.run_until_complete(one())
    finally:
        loop.close()
    handler.flush()
    assert "pod=ns/p " in stream.getvalue()


def test_without_nmi_handler_the_line_is_an_ordinary_record(caplog):
    access_log._current = None
    with caplog.at_level(logging.INFO, logger="nmi.access"):
        log_access(pod="ns/p", identity_client_id="", resource="https://x\ny", status=503, cache_hit=False,
                   seconds=0.5, method="GET", route="/metadata/identity/oauth2/token", remote="10.0.0.9")
    (record,) = [r for r in caplog.records if r.name == "nmi.access"]
    assert record.getMessage() == "token request" and record.status == 503 and record.pod == "ns/p"
