"""Foreign failures turned into nmi's errors, in one place.

Two steps. What an upstream attempt produced (an HTTP answer remembered by nmi's HTTP client, MSAL's result
dict, a transport exception) becomes an `UpstreamFailure` (`failure_from`, `unreachable`); the MSAL adapter
catches MSAL's and requests' exceptions and calls these. After the retries, the last `UpstreamFailure` becomes
the `NmiError` the caller sees (`to_nmi_error`, SPEC §2). No HTTP library and no MSAL here.
"""

from __future__ import annotations

import email.utils
import math
import re
from typing import TYPE_CHECKING, Any, Mapping

from .. import errors
from ..logs import JWT_LIKE

if TYPE_CHECKING:
    from .msal_http import Answer

# IMDS "error handling" guidance: 404 and 410 mean IMDS is updating, 429 throttled, 5xx transient.
IMDS_RETRY_STATUSES = frozenset({404, 408, 410, 429}) | frozenset(range(500, 600))
# Azure AD: only throttling and server errors are worth repeating; any other 4xx is a final answer.
AAD_RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

DEFAULT_RETRY_AFTER = 5
MAX_DESCRIPTION = 400
_ERROR_CODE = re.compile(r"[^A-Za-z0-9_.-]")


class UpstreamFailure(Exception):
    """One failed attempt. `status` is None for transport failures (refused, reset, timeout)."""

    def __init__(self, status: int | None, error: str = "", description: str = "", *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"upstream status {status}: {error}")
        self.status, self.error, self.description, self.retry_after = status, error, description, retry_after


def unreachable(exc: BaseException) -> UpstreamFailure:
    """A transport failure (refused, reset, timed out): only the exception's type is passed on."""
    return UpstreamFailure(None, "unreachable", type(exc).__name__)


def failure_from(answer: Answer | None, body: Mapping[str, Any], now: float, *, description: str = "",
                 secret: str = "") -> UpstreamFailure:
    """An upstream's error answer: its status, Retry-After, `error` and a safe `error_description`."""
    status = answer.status if answer else None
    retry_after = parse_retry_after(answer.headers.get("Retry-After"), now=now) if answer else None
    upstream_text = str(body.get("error_description") or "")
    text = f"{description}: {upstream_text}" if description and upstream_text else description or upstream_text
    return UpstreamFailure(status, str(body.get("error") or ""), safe_description(text, secret=secret),
                           retry_after=retry_after)


def discovery_failure(answer: Answer | None, now: float, *, label: str, tenant: str) -> Exception | None:
    """MSAL could not build an application for this authority: before any request, MSAL's own URL checks refused
    it (a configuration error); after an error answer, OIDC discovery failed. None for anything else (a bug in
    nmi or MSAL, raised as it is)."""
    if answer is None:
        return errors.IdentityConfigurationError(f"{label}: the authority host and tenant do not form a valid authority")
    if answer.status < 400:
        return None
    return failure_from(answer, answer.json_object(), now, description=f"OIDC discovery for tenant {tenant} failed")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def safe_description(text: str, *, secret: str = "") -> str:
    """An upstream error_description fit to pass on: one line, bounded, nothing token- or secret-shaped.

    Azure AD and IMDS descriptions carry no secrets, but nmi cannot prove that for every upstream, so the
    secret in use and anything that looks like a JWT are blanked out anyway."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "[redacted]")
    text = JWT_LIKE.sub("[redacted]", text)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 3] + "..."


def to_nmi_error(failure: UpstreamFailure, *, upstream: str, retry_statuses: frozenset[int]) -> errors.NmiError:
    """The SPEC §2 table: 429 → 429, other refusals → 403, transient → 503, each with a Retry-After."""
    retry_after = max(1, math.ceil(failure.retry_after)) if failure.retry_after is not None else DEFAULT_RETRY_AFTER
    detail = f": {failure.description}" if failure.description else ""
    if failure.status is None:
        return errors.Unavailable(f"{upstream} could not be reached{detail}", retry_after=retry_after)
    if failure.status == 429:
        return errors.Throttled(f"{upstream} is throttling token requests{detail}", retry_after=retry_after)
    if failure.status in retry_statuses or failure.status >= 500:
        return errors.Unavailable(f"{upstream} answered {failure.status}{detail}", retry_after=retry_after)
    if 400 <= failure.status < 500:
        code = _ERROR_CODE.sub("", failure.error)[:64] or "invalid_request"
        return errors.TokenRefused(f"{upstream} refused the token request{detail}", error=code)
    return errors.Unavailable(f"{upstream} answered unexpected status {failure.status}", retry_after=retry_after)
