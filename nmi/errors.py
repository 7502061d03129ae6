"""Errors as types: each carries its HTTP status, IMDS/OAuth `error` code and an optional Retry-After.

`nmi.server.failure_response` is the one place a failure becomes an answer (IMDS JSON with the error's status);
statuses without an error of their own become one through `nmi.imds.error_for_status`. Descriptions are safe to
show to the caller: they never contain tokens, secrets or the content of Kubernetes objects.
"""

from __future__ import annotations


class NmiError(Exception):
    status: int = 500
    error: str = "internal_error"
    default_description: str = "An internal error occurred"

    def __init__(self, description: str | None = None, *, retry_after: int | None = None) -> None:
        self.description = description or self.default_description
        self.retry_after = retry_after
        super().__init__(self.description)


class BadRequest(NmiError):
    status = 400
    error = "invalid_request"
    default_description = "Bad request"


class MetadataHeaderMissing(BadRequest):
    default_description = "Required metadata header not specified"


class IdentityNotFound(BadRequest):
    default_description = "Identity not found"


class MethodNotAllowed(NmiError):
    status = 405
    error = "invalid_request"
    default_description = "Method not allowed"


class Forbidden(NmiError):
    status = 403
    error = "forbidden"
    default_description = "Forbidden"


class AccessDenied(NmiError):
    """Every binding that would give the pod this identity is outside its active windows (time-boxed bindings)."""

    status = 403
    error = "access_denied"
    default_description = "The pod's binding is not active now"


class TokenRefused(NmiError):
    """Azure AD or IMDS refused to issue the token (a 4xx other than 429)."""

    status = 403
    error = "invalid_request"
    default_description = "The token request was refused"

    def __init__(self, description: str | None = None, *, error: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(description, retry_after=retry_after)
        if error:
            self.error = error


class IdentityConfigurationError(NmiError):
    """The identity cannot be used as configured (missing Secret, bad certificate, unsupported type...)."""

    status = 403
    error = "invalid_identity"
    default_description = "The identity is misconfigured"


class Throttled(NmiError):
    status = 429
    error = "throttled"
    default_description = "Too many requests, retry later"

    def __init__(self, description: str | None = None, *, retry_after: int | None = 5) -> None:
        super().__init__(description, retry_after=retry_after)


class Unavailable(NmiError):
    """Transient: retry later. Always carries Retry-After."""

    status = 503
    error = "temporarily_unavailable"
    default_description = "Temporarily unavailable, retry later"

    def __init__(self, description: str | None = None, *, retry_after: int | None = 5) -> None:
        super().__init__(description, retry_after=retry_after if retry_after is not None else 5)


class PodNotFound(Unavailable):
    default_description = "No pod on this node is known with the caller's IP address"

    def __init__(self, description: str | None = None, *, retry_after: int | None = 2) -> None:
        super().__init__(description, retry_after=retry_after)


class CachesNotTrusted(Unavailable):
    """nmi's watch caches are not synced yet, or stale: answering from them could be wrong (SPEC §7)."""

    default_description = "nmi's view of the cluster is not up to date; retry later"


class PodConflict(Unavailable):
    default_description = "Several live pods share the caller's IP address"


class IdentityNotAssigned(NmiError):
    """Standard mode: the pod's identity is not assigned yet (404, or 503 + Retry-After: 20 by flag)."""

    status = 404
    error = "identity_not_assigned"
    default_description = "The pod's identity is not assigned to the node yet"


class BadGateway(NmiError):
    status = 502
    error = "bad_gateway"
    default_description = "The instance metadata service is unreachable"
