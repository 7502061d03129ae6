"""The access line: one line per token request, on a fast path while nmi's own log handler is installed.

The fields, the secret scrubbing (`scrub_value` on the caller-supplied fields, as `SecretScrubber` does) and the
escaping (`_text_fields` / `json_line`, the same functions the formatters use) are those of nmi.logs; only the
LogRecord machinery is skipped, which was a fifth of the event loop's time on the cached-token path.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .logs import (_ACCESS_CALLER_FIELDS, ACCESS_LOGGER, json_line, _text_value, _timestamp, redact_client_id,
                   scrub_value)

_current: "AccessWriter | None" = None  # the writer of the handler setup_logging installed last
_MAX_REMEMBERED = 4096
_scrubbed_values: dict[tuple[str, str], Any] = {}


def _scrubbed(key: str, value: Any) -> Any:
    """`scrub_value(key, value)`, remembered for string values: a pod asks for the same resource again and again."""
    if type(value) is not str or len(value) > 256:
        return scrub_value(key, value)
    known = _scrubbed_values.get((key, value))
    if known is None:
        known = scrub_value(key, value)
        if len(_scrubbed_values) >= _MAX_REMEMBERED:
            _scrubbed_values.clear()
        _scrubbed_values[(key, value)] = known
    return known

_ACCESS_LOG = logging.getLogger(ACCESS_LOGGER)
_NMI_LOG = logging.getLogger("nmi")


class AccessWriter:
    """The access line's fast path: the same fields, scrubbing and escaping as a record through the installed
    handler, formatted in one step and written straight to the handler's stream, without a LogRecord.

    On the event loop, the lines of one loop iteration are written together right after it (one write and
    flush per iteration instead of per request); anywhere else a line is written at once. Any other record the
    handler emits on the loop's thread flushes the waiting lines first, so the stream keeps the order."""

    def __init__(self, handler: logging.StreamHandler[TextIO], *, json_lines: bool) -> None:
        self.handler = handler
        self.json_lines = json_lines
        self.pending: list[str] = []
        self._text_parts: dict[tuple[str, ...], tuple[str, str]] = {}
        self.owner: int | None = None  # the thread whose loop will flush `pending`
        atexit.register(self.flush)
        global _current
        _current = self

    def text_line(self, pod: str, identity: str, resource: str, status: int, cache_hit: bool, duration_ms: float,
                  method: str, route: str, remote: str, created: float) -> str:
        """The text line of `line`, built from its two caller-dependent parts, which are remembered per distinct
        (pod, identity, resource, method, route, remote): a pod asks the same thing again and again, and the
        scrubbing and escaping of six fields was most of the line's cost. What a part holds was made by the
        same scrubbing and escaping functions as `line`'s."""
        key = (pod, identity, resource, method, route, remote)
        parts = self._text_parts.get(key)
        if parts is None:
            fields = {"pod": pod, "identity": identity, "resource": resource, "method": method, "route": route,
                      "remote": remote}
            for name in _ACCESS_CALLER_FIELDS:
                fields[name] = _scrubbed(name, fields[name])
            parts = (f" INFO {ACCESS_LOGGER}: token request pod={_text_value(fields['pod'])} "
                     f"identity={_text_value(fields['identity'])} resource={_text_value(fields['resource'])} ",
                     f" method={_text_value(fields['method'])} route={_text_value(fields['route'])} "
                     f"remote={_text_value(fields['remote'])}\n")
            if len(self._text_parts) >= _MAX_REMEMBERED:
                self._text_parts.clear()
            self._text_parts[key] = parts
        return (f"{_timestamp(created)}{parts[0]}status={status:d} cache_hit={'true' if cache_hit else 'false'} "
                f"duration_ms={duration_ms!r}{parts[1]}")

    def line(self, fields: dict[str, Any], created: float) -> str:
        for key in _ACCESS_CALLER_FIELDS:  # what SecretScrubber does to an access record
            fields[key] = _scrubbed(key, fields[key])
        if self.json_lines:  # JsonFormatter's keys, in its order, for an INFO record of log_access
            entry = {"ts": created * 1000.0, "caller": _CALLER, "msg": "token request", "v": 0,
                     "time": _timestamp(created), "level": "INFO", "logger": ACCESS_LOGGER}
            entry.update(fields)
            return json_line(entry) + "\n"
        return (f"{_timestamp(created)} INFO {ACCESS_LOGGER}: token request pod={_text_value(fields['pod'])} "
                f"identity={_text_value(fields['identity'])} resource={_text_value(fields['resource'])} "
                f"status={fields['status']:d} cache_hit={'true' if fields['cache_hit'] else 'false'} "
                f"duration_ms={fields['duration_ms']!r} method={_text_value(fields['method'])} "
                f"route={_text_value(fields['route'])} remote={_text_value(fields['remote'])}\n")

    def write(self, text: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write([text])
            return
        if not self.pending:
            self.owner = threading.get_ident()
            loop.call_soon(self.flush)
        self.pending.append(text)

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        if lines:
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.stream.flush()
        except Exception:  # as logging does: a broken stream must not break the request
            handler.handleError(logging.makeLogRecord({"msg": "access line", "name": ACCESS_LOGGER}))
        finally:
            handler.release()


def log_access(*, pod: str, identity_client_id: str, resource: str, status: int, cache_hit: bool,
               seconds: float, method: str, route: str, remote: str) -> None:
    """One line per token request. `pod` is "namespace/name" ("" when the caller was not identified),
    `route` the route template, `remote` the peer address; the client ID is redacted here.

    While the handler `setup_logging` installed is the root's, the line takes `AccessWriter`'s fast path;
    otherwise (tests capturing logs, another handler configured) it is an ordinary record of `nmi.access`."""
    if not _ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    writer = _current
    if (writer is not None and logging.root.handlers == [writer.handler] and not _ACCESS_LOG.handlers
            and not _ACCESS_LOG.filters and not _NMI_LOG.handlers):
        if not writer.json_lines:
            writer.write(writer.text_line(pod, redact_client_id(identity_client_id), resource[:256], status,
                                          cache_hit, round(seconds * 1000, 1), method, route, remote, time.time()))
            return
    else:
        writer = None
    fields = {
        "pod": pod,
        "identity": redact_client_id(identity_client_id),
        "resource": resource[:256],
        "status": status,
        "cache_hit": cache_hit,
        "duration_ms": round(seconds * 1000, 1),
        "method": method,
        "route": route,
        "remote": remote,
    }
    if writer is not None:
        writer.write(writer.line(fields, time.time()))
        return
    _ACCESS_LOG.info("token request", extra=fields)  # the fallback record: _CALLER names this line


# JsonFormatter's `caller` of the fallback record (file:line of the call above), so both paths write the same keys.
_CALLER = next(f"access_log.py:{number}" for number, text in enumerate(Path(__file__).read_text().splitlines(), 1)
               if text.strip().startswith("_ACCESS_LOG.info("))
