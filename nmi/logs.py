"""Logging setup: text or JSON lines on stderr, a scrubber for anything token-like, and the access line.

Conventions for the rest of nmi: state changes (listening, caches synced, chain installed or repaired, watch
restarted) at INFO; per-retry and per-object detail at DEBUG; client IDs in informational lines go through
`redact_client_id`. The scrubber installed by `setup_logging` is a safety net, not a licence: never pass a
token, a secret or an Authorization header to a logger in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Any, TextIO

ACCESS_LOGGER = "nmi.access"
_ACCESS_CALLER_FIELDS = ("resource", "remote", "method")
REDACTED = "[REDACTED]"
# Libraries whose INFO/DEBUG output is noise at normal verbosity (and whose DEBUG may echo request bodies).
NOISY_LIBRARIES = ("kubernetes", "urllib3", "msal", "aiohttp", "asyncio")
VERBOSITY_DEBUG = 4  # klog V(4) is where upstream NMI starts logging per-retry detail
VERBOSITY_LIBRARY_DEBUG = 6  # klog V(6) is upstream's cache-listing detail: the most verbose level

_CLIENT_ID = re.compile(r"([^\t\n\f\r ]{4})[\s\S]*([^\t\n\f\r ]{4})")
# A JWT, or the start of one (header alone, header.payload); nmi.tokens.failures blanks these out of upstream
# error descriptions too.
JWT_LIKE = re.compile(r"eyJ[\w-]{4,}(?:\.[\w-]*){0,2}")
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+")
_AAD_CLIENT_SECRET = re.compile(r"\b[A-Za-z0-9_\-.]{3}[0-9]Q~[A-Za-z0-9_\-.~]{30,}")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)")
_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>(?:access_token|refresh_token|id_token|client[_\-]?secret|client_assertion
                           |password|passwd|authorization|api[_\-]?key)["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<value>\[REDACTED\]|"[^"]*"|'[^']*'|[^\s,;&}\])]+)
    """
)
_SENSITIVE_KEY_ENDINGS = ("token", "secret", "password", "passwd", "authorization", "assertion", "apikey",
                          "credential", "credentials", "cookie")
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_MAX_DEPTH = 4


_redacted_ids: dict[str, str] = {}  # client IDs repeat on every request: redact each once (bounded)


def redact_client_id(client_id: str) -> str:
    """Upstream's RedactClientID: first and last 4 non-space characters kept, the middle replaced;
    shorter strings are returned unchanged. `aabc0000-…-2c0a66b0c1f9` -> `aabc##### REDACTED #####c1f9`."""
    redacted = _redacted_ids.get(client_id)
    if redacted is None:
        match = _CLIENT_ID.fullmatch(client_id)
        redacted = f"{match.group(1)}##### REDACTED #####{match.group(2)}" if match else client_id
        if len(_redacted_ids) >= 1024:
            _redacted_ids.clear()
        _redacted_ids[client_id] = redacted
    return redacted


def _redact_assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    if value in ('""', "''", REDACTED):
        return match.group(0)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group('key')}{match.group('sep')}{quote}{REDACTED}{quote}"


# Every pattern below needs one of these (case-insensitively); most log text has none, and `in` is cheap.
_TRIGGERS = ("eyj", "bearer", "basic", "q~", "private key", "token", "secret", "password", "passwd",
             "authorization", "assertion", "api_key", "api-key", "apikey")


def scrub_text(text: str) -> str:
    """`text` with JWTs, Bearer/Basic credentials, Azure AD client secrets, private keys and the values of
    token/secret/password assignments replaced. Linear in the length of `text` (the key prefix is bounded),
    so caller-supplied text cannot make logging slow."""
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    text = _PRIVATE_KEY.sub(REDACTED, text)
    text = JWT_LIKE.sub(REDACTED, text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _AAD_CLIENT_SECRET.sub(REDACTED, text)
    return _SECRET_ASSIGNMENT.sub(_redact_assignment, text)


def _sensitive_key(key: str) -> bool:
    folded = key.lower().replace("_", "").replace("-", "")
    return folded.endswith(_SENSITIVE_KEY_ENDINGS)


def scrub_value(key: str, value: Any, depth: int = 0) -> Any:
    if _sensitive_key(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if depth < _MAX_DEPTH and isinstance(value, dict):
        return {str(k): scrub_value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < _MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
        return [scrub_value(key, v, depth + 1) for v in value]
    return scrub_text(str(value))


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


class SecretScrubber(logging.Filter):
    """Installed on the handler (handler filters see records from every logger, logger filters do not):
    rewrites message, arguments, extras, exception and stack text of each record before it is formatted."""

    _exception_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record, nor leak its arguments unscrubbed
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = scrub_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info)
        extras = record_extras(record)
        if record.name == ACCESS_LOGGER:  # built by log_access from nmi's own state; only these come from callers
            extras = {key: extras[key] for key in _ACCESS_CALLER_FIELDS if key in extras}
        for key, value in extras.items():
            setattr(record, key, scrub_value(key, value))
        return True


_last_second: list[Any] = [None, ""]  # (whole second, its formatted prefix): one datetime per second, not per line


def _timestamp(created: float) -> str:
    """`2026-01-02T03:04:05.678Z` (milliseconds truncated, as isoformat does)."""
    second = int(created)
    if _last_second[0] != second:
        _last_second[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second[0] = second
    return f"{_last_second[1]}.{min(999, int((created - second) * 1000)):03d}Z"


# Characters caller text could use to start a line, rewrite a terminal or hide text (SPEC §7 "Logs cannot be
# forged"): C0 (tab, CR, LF, ESC...), DEL, C1 (NEL U+0085, CSI U+009B...), the Unicode line and paragraph
# separators, bidirectional controls, and lone surrogates (which would make the stream's encoder drop the record).
_UNSAFE = ("\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff")
_UNSAFE_CODEPOINTS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x200E, 0x200F,
                      *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000)]
_SHORT_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
# str.translate tables: one pass, linear in the length of the text whatever it contains.
_TEXT_ESCAPES = {cp: _SHORT_ESCAPES.get(cp) or (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}")
                 for cp in _UNSAFE_CODEPOINTS}
_TEXT_ESCAPES[ord("\\")] = "\\\\"  # so that an escape in the log always was one in the text
_JSON_ESCAPES = {cp: f"\\u{cp:04x}" for cp in _UNSAFE_CODEPOINTS if cp >= 0x7F}  # json.dumps escapes C0 itself
_NEEDS_QUOTES = re.compile(f'[\\s"=\\\\{_UNSAFE}]')


def escape_text(text: str) -> str:
    """`text` on one line with nothing a terminal or a log reader would act on: every character above written
    as `\\n`, `\\t`, `\\r`, `\\xNN` or `\\uNNNN`, and `\\` doubled."""
    return text.translate(_TEXT_ESCAPES)


def escape_lines(text: str) -> str:
    """Multi-line text (a traceback) for the text format: each line escaped, continuation lines indented, so
    no line of it can pass for a record of its own."""
    return "\n  ".join(escape_text(line) for line in text.split("\n"))


def json_line(entry: dict[str, Any]) -> str:
    """One JSON object on one line with no raw DEL, C1, separator, bidi control or lone surrogate."""
    return json.dumps(entry, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)


_escaped_texts: dict[str, str] = {}  # access lines repeat the same values: escape each once (bounded)


def _text_value(value: Any) -> str:
    if type(value) is str and len(value) <= 256:
        escaped = _escaped_texts.get(value)
        if escaped is None:
            escaped = _escape_text_value(value)
            if len(_escaped_texts) >= 4096:
                _escaped_texts.clear()
            _escaped_texts[value] = escaped
        return escaped
    return _escape_text_value(value)


def _escape_text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False).translate(_JSON_ESCAPES)
    return text


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message> key=value ...`, one line per record (plus exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_text(record.getMessage())
        fields = "".join(f" {escape_text(str(k))}={_text_value(v)}" for k, v in record_extras(record).items())
        line = f"{_timestamp(record.created)} {record.levelname} {escape_text(record.name)}: {message}{fields}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n  " + escape_lines(record.exc_text)
        if record.stack_info:
            line += "\n  " + escape_lines(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with Kubernetes component-base's keys first, so pipelines built for the JSON
    logs of kubelet or kube-apiserver read nmi's too: `ts` (epoch milliseconds, a float, as component-base
    writes it), `caller` (file:line), `msg`, `v` (verbosity: 0, or 4 for DEBUG; absent on errors, as there)
    and `err` (the exception's text). Then nmi's own keys: `time` (ISO 8601 UTC), `level`, `logger`, the
    record's extras (pod, identity, status...), `exception` (the traceback) and `stack`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": record.created * 1000.0, "caller": f"{record.filename}:{record.lineno}",
                                 "msg": record.getMessage()}
        if record.levelno < logging.ERROR:
            entry["v"] = VERBOSITY_DEBUG if record.levelno <= logging.DEBUG else 0
        if record.exc_info and record.exc_info[1] is not None:
            entry["err"] = scrub_text(str(record.exc_info[1]))
        entry.update(time=_timestamp(record.created), level=record.levelname, logger=record.name)
        for key, value in record_extras(record).items():
            entry[key if key not in entry else f"extra_{key}"] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json_line(entry)


class _NmiHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `setup_logging` installed, so a second call replaces it instead of doubling lines.
    Access lines still waiting in its `access` writer go out first, so the stream keeps the order of events."""

    access: Any = None  # nmi.access_log.AccessWriter, once setup_logging installed the handler

    def emit(self, record: logging.LogRecord) -> None:
        if self.access is not None and self.access.pending and self.access.owner == threading.get_ident():
            self.access.flush()
        super().emit(record)

    def flush(self) -> None:
        if self.access is not None and self.access.owner == threading.get_ident():
            self.access.flush()
        super().flush()


def setup_logging(*, log_format: str = "text", verbosity: int = 0, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger: `log_format` "text" or "json"; `verbosity` is upstream's `-v`.

    0-3: INFO (nmi has nothing between upstream's V(0) and V(4)); 4-5: DEBUG for nmi's own loggers;
    6 and above: DEBUG for the client libraries too (kubernetes, urllib3, msal, aiohttp), which otherwise log
    only warnings."""
    if log_format not in ("text", "json"):
        raise ValueError(f"--log-format must be text or json, not {log_format!r}")
    handler = _NmiHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(SecretScrubber())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NmiHandler)]:
        if old.access is not None:
            old.access.flush()
        root.removeHandler(old)
    root.addHandler(handler)
    from .access_log import AccessWriter

    handler.access = AccessWriter(handler, json_lines=log_format == "json")
    root.setLevel(logging.DEBUG if verbosity >= VERBOSITY_DEBUG else logging.INFO)
    library_level = logging.DEBUG if verbosity >= VERBOSITY_LIBRARY_DEBUG else logging.WARNING
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    return handler


def __getattr__(name: str) -> Any:
    # `nmi.logs.log_access` lives in nmi.access_log (which imports this module): resolved on first use.
    if name == "log_access":
        from .access_log import log_access

        return log_access
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
