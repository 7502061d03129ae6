"""SPEC §7 "Logs cannot be forged", attacked as a pod would: raw request bytes carrying ESC, C1 (incl. NEL
U+0085 and CSI U+009B), DEL, U+2028/U+2029, bidi controls, CR LF and a forged record, in path, query and headers;
the daemon's stderr (text and JSON) must contain none of them raw, and the caller text must still be there,
escaped. Plus the formatters alone, for what a request cannot reach (lone surrogates, tracebacks)."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from nmi.logs import escape_text, setup_logging
from tests.e2e.conftest import NODE
from tests.e2e.harness import NmiProcess
from tests.security import rawhttp
from tests.security.conftest import BOUND_POD, DAEMON_FLAGS, NO_IDENTITY_POD

# Everything the log must never carry raw (a line feed only ends a record).
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
RECORD_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ [\w.]+: ")
FORGED = "2026-01-01T00:00:00.000Z INFO nmi.access: token request pod=victim/admin status=200"
# (name, percent-encoded, decoded): each alone, since a value with whitespace used to be quoted and one without not
PAYLOADS = [
    ("esc", "%1B%5B31mRED%1B%5B0m", "\x1b[31mRED\x1b[0m"),
    ("ls", "a%E2%80%A8b%E2%80%A9c", "a\u2028b\u2029c"),
    ("nel", "a%C2%85b", "a\u0085b"),
    ("c1", "a%C2%9B2Jb%C2%8Dc", "a\u009b2Jb\u008dc"),
    ("del", "a%7Fb", "a\x7fb"),
    ("bidi", "a%E2%80%AEb%E2%81%A6c", "a\u202eb\u2066c"),
    ("crlf", "x%0D%0A" + FORGED.replace(" ", "%20").replace(":", "%3A"), "x\r\n" + FORGED),
]


def attack(port: int) -> None:
    for name, encoded, _ in PAYLOADS:
        for source in (BOUND_POD, NO_IDENTITY_POD):
            query = f"?resource=MARK-{name}-{encoded}".encode()
            rawhttp.get(port, b"/metadata/identity/oauth2/token" + query, source=source)
            rawhttp.get(port, f"/metadata/identity/oauth2/token{encoded}".encode() + query, source=source)
            rawhttp.get(port, f"/x{encoded}/y".encode() + query, source=source)
    raw_header_values = [b"\xc2\x85NEL", b"\xe2\x80\xa8LS", b"\xe2\x80\xaeBIDI", b"\xffBAD", b"\x1bESC", b"a\x7fb"]
    for value in raw_header_values:  # some are refused by the parser: that is an answer too
        rawhttp.get(port, b"/host/token?resource=MARK-header", source=BOUND_POD, headers={b"podns": value, b"podname": value})
        rawhttp.get(port, b"/metadata/identity/oauth2/token?resource=MARK-header", source=NO_IDENTITY_POD,
                    headers={b"User-Agent": value, b"X-Ms-Client-Request-Id": value})
    rawhttp.send(port, b"GET /a\x1b[31m\xe2\x80\xa8 HTTP/1.1\r\nHost: x\r\n\r\n", source=NO_IDENTITY_POD)


def read_log(process: NmiProcess) -> str:
    text = process.log_path.read_bytes().decode("utf-8")  # strict: the log must stay valid UTF-8
    assert "--- Logging error ---" not in text
    return text


def test_text_log_lines_carry_no_raw_control_characters_from_callers(nmi):
    attack(nmi.port)
    log = read_log(nmi)
    assert not UNSAFE.search(log), UNSAFE.search(log)
    for line in log.splitlines():  # splitlines also splits at NEL, U+2028, FS...: none may be there
        assert RECORD_START.match(line) or line.startswith("  ") or not line.strip(), line
        assert not line.startswith(FORGED)
    # the caller's text is there, quoted and escaped, on the access lines, and reads back exactly
    resources = {json.loads(quoted) for quoted in re.findall(r' resource=("(?:[^"\\]|\\.)*")', log)}
    for name, _, decoded in PAYLOADS:
        assert f"MARK-{name}-{decoded}" in resources, name


@pytest.fixture(scope="module")
def json_nmi(fakes, tmp_path_factory):
    process = NmiProcess(tmp_path_factory.mktemp("nmi-json"), fakes, node=NODE,
                         extra=[*DAEMON_FLAGS, "-v=4", "--log-format=json"])
    process.start()
    yield process
    assert process.stop() == 0


def test_json_log_lines_carry_no_raw_control_characters_and_keep_the_text(json_nmi):
    attack(json_nmi.port)
    log = read_log(json_nmi)
    assert not UNSAFE.search(log), UNSAFE.search(log)
    entries = [json.loads(line) for line in log.split("\n") if line.startswith("{")]
    resources = {entry.get("resource") for entry in entries}
    for name, _, decoded in PAYLOADS:
        assert f"MARK-{name}-{decoded}" in resources, name  # escaped on the wire, exact once parsed


# The formatters alone.

@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


HOSTILE = "a\x1b[2J\u2028b\u0085c\x7fd\u202ee\ud800f\r\ng\\h\x00i\u009bj"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_field_of_a_record_is_escaped(restore_logging, log_format):
    stream = io.StringIO()
    logging.getLogger().handlers[:] = [setup_logging(log_format=log_format, stream=stream)]
    log = logging.getLogger("nmi.test")
    log.warning("message %s", HOSTILE, extra={"pod": HOSTILE, "resource": HOSTILE, HOSTILE[:3]: 1})
    try:
        raise ValueError(HOSTILE + "\n" + FORGED)
    except ValueError:
        log.exception("failed %s", HOSTILE)
    written = stream.getvalue()
    assert not UNSAFE.search(written)
    written.encode("utf-8")  # no lone surrogate survives to the stream
    lines = written.splitlines()
    assert not any(line.startswith(FORGED) for line in lines)
    if log_format == "json":
        first, second = (json.loads(line) for line in lines)
        assert first["msg"] == "message " + HOSTILE and first["pod"] == HOSTILE
        assert HOSTILE in second["err"] and FORGED in second["exception"]
    else:
        assert escape_text(HOSTILE) in lines[0]
        assert all(RECORD_START.match(line) or line.startswith("  ") for line in lines)


def test_escaping_is_one_pass_and_keeps_plain_text():
    assert escape_text("plain text: /metadata/identity ñ é 日本") == "plain text: /metadata/identity ñ é 日本"
    assert escape_text("\x1b\u2028\u0085\x7f\t\n\\") == "\\x1b\\u2028\\x85\\x7f\\t\\n\\\\"
    big = HOSTILE * 20000  # a megabyte-scale value of nothing but hostile characters is escaped in one translate
    assert not UNSAFE.search(escape_text(big))
