"""Audit of token issuance as Kubernetes Events on the pod's AzureIdentityBinding.

`record` runs on the request path, so it only bumps a counter in a dict (no I/O, no await). `run` flushes the
aggregates every interval: one Event per (binding, pod, identity, resource) per interval, at most
`max_events_per_interval` of them; issuances beyond that cap are counted and dropped, so a busy pod makes a
bounded number of Events and memory stays bounded. Writing goes through `EventWriter`; the Kubernetes
adapter lives in `nmi.kube.events`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol

log = logging.getLogger(__name__)

REASON_TOKEN_ISSUED = "TokenIssued"
REASON_INVALID_ACTIVE_WINDOWS = "InvalidActiveWindows"
_MAX_MESSAGE = 1024
BINDING_API_VERSION = "aadpodidentity.k8s.io/v1"
BINDING_KIND = "AzureIdentityBinding"
COMPONENT = "nmi"
_MAX_RESOURCE_IN_MESSAGE = 256
_MAX_NAME = 253


class EventsForbidden(Exception):
    """The API server answered 403: nmi's ServiceAccount may not create Events."""


class EventWriteFailed(Exception):
    """Any other failure to write one Event (transient or not); that Event is dropped."""


class EventWriter(Protocol):
    async def write(self, event: Mapping[str, Any]) -> None:
        """Create one core/v1 Event (a plain dict). Raises EventsForbidden or EventWriteFailed."""


@dataclass(frozen=True, slots=True)
class IssuanceKey:
    binding_namespace: str
    binding_name: str
    pod_namespace: str
    pod_name: str
    identity_name: str
    resource: str


@dataclass(slots=True)
class _Tally:
    count: int
    first: float
    last: float


class AuditRecorder:
    def __init__(
        self,
        writer: EventWriter,
        *,
        node: str,
        interval: float = 60.0,
        max_events_per_interval: int = 500,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_dropped: Callable[[int, str], None] | None = None,
    ) -> None:
        """`clock` is wall time (Event timestamps); `on_dropped(count, reason)` is told about Events not
        written, reason "overflow" or "write_failed" (the daemon wires it to `Metrics.audit_events_dropped`)."""
        self._writer = writer
        self._node = node
        self._interval = interval
        self._cap = max_events_per_interval
        self._clock = clock
        self._sleep = sleep
        self._on_dropped = on_dropped
        self._pending: dict[IssuanceKey, _Tally] = {}
        self._warnings: dict[tuple[str, str, str], str] = {}  # (binding namespace, name, reason) -> message
        self._overflow = 0
        self._sequence = 0
        self.enabled = True

    def record(self, binding_namespace: str, binding_name: str, pod_namespace: str, pod_name: str,
               identity_name: str, resource: str) -> None:
        """One token issued to a pod. O(1), no I/O: safe on the request path."""
        if not self.enabled:
            return
        key = IssuanceKey(binding_namespace, binding_name, pod_namespace, pod_name, identity_name,
                          resource[:_MAX_RESOURCE_IN_MESSAGE])
        now = self._clock()
        tally = self._pending.get(key)
        if tally is not None:
            tally.count += 1
            tally.last = now
        elif len(self._pending) < self._cap:
            self._pending[key] = _Tally(1, now, now)
        else:
            self._overflow += 1

    def warn(self, binding_namespace: str, binding_name: str, *, reason: str, message: str) -> None:
        """A Warning Event on a binding (e.g. a malformed annotation), written with the next flush; one per
        (binding, reason) per interval, within the same cap as the issuance Events."""
        if not self.enabled:
            return
        key = (binding_namespace, binding_name, reason)
        if key in self._warnings or len(self._warnings) + len(self._pending) < self._cap:
            self._warnings[key] = message[:_MAX_MESSAGE]
        else:
            self._overflow += 1

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._warnings)

    async def run(self) -> None:
        """Root task: flush every interval until cancelled. Keeps running (idle) once disabled, so a missing
        RBAC grant does not stop the daemon."""
        while True:
            await self._sleep(self._interval)
            if self.enabled:
                await self.flush()

    async def flush(self) -> int:
        """Write the aggregates gathered since the last flush; answers how many Events were written."""
        pending, self._pending = self._pending, {}
        warnings, self._warnings = self._warnings, {}
        overflow, self._overflow = self._overflow, 0
        if overflow:
            log.warning("token issuance audit: %d issuances beyond %d Events per interval were not recorded",
                        overflow, self._cap)
            self._dropped(overflow, "overflow")
        written = 0
        events: list[Callable[[], dict[str, Any]]] = [
            functools.partial(self.event, key, count=tally.count, first=tally.first, last=tally.last)
            for key, tally in pending.items()]
        events += [functools.partial(self.warning_event, *key, message=message) for key, message in warnings.items()]
        for position, build in enumerate(events):
            event = build()
            try:
                await self._writer.write(event)
            except EventsForbidden:
                self._disable()
                self._dropped(len(events) - position, "forbidden")
                return written
            except EventWriteFailed as exc:
                target = event["involvedObject"]
                log.debug("token issuance audit: Event for %s/%s not written: %s", target["namespace"],
                          target["name"], exc)
                self._dropped(1, "write_failed")
            else:
                written += 1
        return written

    def warning_event(self, binding_namespace: str, binding_name: str, reason: str, *, message: str) -> dict[str, Any]:
        now = self._clock()
        key = IssuanceKey(binding_namespace, binding_name, "", "", "", "")
        event = self.event(key, count=1, first=now, last=now)
        event.update(reason=reason, message=message, type="Warning")
        return event

    def event(self, key: IssuanceKey, *, count: int, first: float, last: float) -> dict[str, Any]:
        """The core/v1 Event for `count` issuances between `first` and `last` (epoch seconds), a plain dict."""
        self._sequence += 1
        # Kubernetes names Events "<object>.<unix nanos in hex>"; the sequence keeps names unique in one flush.
        suffix = f".{int(self._clock() * 1e9) + self._sequence:x}"
        times = "once" if count == 1 else f"{count} times"
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": key.binding_name[: _MAX_NAME - len(suffix)] + suffix,
                         "namespace": key.binding_namespace},
            "involvedObject": {"apiVersion": BINDING_API_VERSION, "kind": BINDING_KIND,
                               "name": key.binding_name, "namespace": key.binding_namespace},
            "reason": REASON_TOKEN_ISSUED,
            "message": (f"Token for identity {key.identity_name} and resource {key.resource} issued to pod "
                        f"{key.pod_namespace}/{key.pod_name} {times}"),
            "type": "Normal",
            "count": count,
            "firstTimestamp": _rfc3339(first),
            "lastTimestamp": _rfc3339(last),
            "source": {"component": COMPONENT, "host": self._node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._node,
        }

    def _disable(self) -> None:
        self.enabled = False
        self._pending.clear()
        self._warnings.clear()
        log.warning("token issuance audit disabled: the API server refused to create Events (403 Forbidden); "
                    "grant 'create' on 'events' to nmi's ServiceAccount to enable it")

    def _dropped(self, count: int, reason: str) -> None:
        if self._on_dropped is not None and count:
            self._on_dropped(count, reason)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
