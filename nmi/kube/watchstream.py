"""The wire-level pieces of API calls and watches: raw JSON bodies, ndjson framing, failure descriptions and the
retry backoff (nmi.backoff's, with the watches' numbers)."""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Iterator

from kubernetes.client.exceptions import ApiException

from ..backoff import Backoff


class Expired(Exception):
    """The resourceVersion is too old (410): relist."""


class WatchFailed(Exception):
    pass


def backoff_delay(failures: int, *, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**(failures-1))."""
    return Backoff(base, cap, jitter=(0.5, 1.0)).delay(failures, rand)


def json_body(response: Any) -> Any:
    """The parsed body of a `_preload_content=False` response (no model built), its connection back in the pool."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def ndjson_lines(response: Any) -> Iterator[bytes]:
    """Complete `\\n`-terminated lines of a chunked ndjson body; a trailing partial line is dropped."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def short_failure(exc: BaseException) -> str:
    """For /readyz and 503 descriptions: the status or the failure's type, never server-supplied text."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    if isinstance(exc, WatchFailed):
        return "watch ERROR event"
    return type(exc).__name__
