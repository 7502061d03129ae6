"""TokenService's settings, grouped: where IMDS is, how hard nmi presses its upstreams, how many tokens it keeps,
who hears about upstream calls, and what tests replace (clock, sleep, randomness). All frozen; the defaults are
the daemon's."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .cache import RefreshPolicy

ObserveUpstream = Callable[[str, float, bool], None]  # (source, seconds, ok)
InFlightHook = Callable[[str, int], None]  # (source, +1 / -1)


@dataclass(frozen=True, slots=True)
class ImdsEndpoint:
    """--metadata-ip / --metadata-port: where IMDS answers (the DNAT target's other side)."""

    ip: str = "169.254.169.254"
    port: int = 80

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """Retries inside a time budget, one attempt's timeout, IMDS's rate and concurrency caps, MSAL's threads."""

    retry_budget: float = 10.0
    max_attempts: int = 5
    retry_base_delay: float = 1.0
    attempt_timeout: float = 5.0
    imds_rate: int = 20  # per second
    imds_concurrency: int = 5
    max_workers: int = 10  # worker threads for MSAL calls (IMDS and Azure AD together)


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_entries: int = 4096
    refresh: RefreshPolicy = RefreshPolicy()


@dataclass(frozen=True, slots=True)
class UpstreamHooks:
    """Metrics hooks: each finished upstream call (source "imds" or "aad"), and calls in flight."""

    observe: ObserveUpstream | None = None
    in_flight: InFlightHook | None = None


@dataclass(frozen=True, slots=True)
class Runtime:
    """What tests inject: epoch-seconds clock, async sleep, and the randomness of the retry jitter."""

    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = asyncio.sleep
    rng: random.Random | None = field(default=None, compare=False)
