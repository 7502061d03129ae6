"""The IMDS wire protocol as pure functions: route a path, parse a token request, render tokens and errors.

Nothing here does I/O or imports a web framework, so every rule is tested with plain tables.
"""

from __future__ import annotations

import enum
import json
import posixpath
import re
from typing import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote

from .errors import BadRequest, MetadataHeaderMissing, MethodNotAllowed, NmiError
from .model import AccessToken, TokenRequest


class Route(enum.Enum):
    TOKEN = "/metadata/identity/oauth2/token"
    INVALID_TOKEN_PATH = "invalid_token_path"
    HOST_TOKEN = "/host/token"
    INSTANCE_BLOCKED = "/metadata/instance"
    PROXY = "proxy"


# Every rule is evaluated on the lower-cased canonical path, so no spelling (case, `\`, `%2F`, `%5C`, dot
# segments, `//`) reaches a route other than the one it names. Prefix matches are upstream's (`tokenXYZ` is the
# token route); anything else under /metadata/identity is refused rather than proxied: IMDS would hand it any
# identity on the VM.
_TOKEN_PREFIX = "/metadata/identity/oauth2/token"
_IDENTITY_PREFIX = "/metadata/identity"
_MANGLED_TOKEN = re.compile(r"/metadata/identity(.*?)oauth2(.*?)token")
_HOST_TOKEN_PREFIX = "/host/token"
_INSTANCE_PREFIX = "/metadata/instance"
# What IMDS's own paths are made of. A proxied path with anything else (`%`, `;`, `?`, non-ASCII, spaces) is
# refused: a server that decodes twice, strips `;params` or folds Unicode case could otherwise read it as a
# path nmi did not check.
_PROXYABLE = re.compile(r"[A-Za-z0-9/._~-]*")
_ABSOLUTE_FORM = re.compile(r"(?i)^https?://[^/?#]*")

SELECTORS = ("client_id", "msi_res_id", "mi_res_id", "object_id")


def canonical_path(request_target: str) -> str:
    """The path nmi routes on and the only one it forwards: the request target's path (absolute-form
    reduced to its path), percent-decoded once, `\\` read as `/`, `//`, `/./` and `/../` resolved. Case is
    kept (routing compares lower-cased). A trailing slash is kept, as gorilla/mux does."""
    target = _ABSOLUTE_FORM.sub("", request_target or "/", count=1) or "/"
    if not target.startswith("/"):
        raise BadRequest("The request target must be a path")
    try:
        decoded = unquote(target.split("?", 1)[0], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("The request path is not valid UTF-8") from None
    if "\x00" in decoded:
        raise BadRequest("The request path contains a NUL character")
    decoded = "/" + decoded.replace("\\", "/")
    cleaned = posixpath.normpath(decoded)
    if cleaned.startswith("//"):  # posixpath keeps a leading double slash (POSIX allows it); IMDS does not
        cleaned = "/" + cleaned.lstrip("/")
    if decoded.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


normalise_path = canonical_path  # the name the rest of the code base knew it by


def quote_path(path: str) -> str:
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def route_for(path: str, *, block_instance_metadata: bool) -> Route:
    """Upstream's route table, evaluated in order on a canonical path, compared case-insensitively."""
    folded = path.lower()
    if folded.startswith(_TOKEN_PREFIX):
        return Route.TOKEN
    if folded.startswith(_IDENTITY_PREFIX) or _MANGLED_TOKEN.search(folded):
        return Route.INVALID_TOKEN_PATH
    if folded.startswith(_HOST_TOKEN_PREFIX):
        return Route.HOST_TOKEN
    if block_instance_metadata and folded.startswith(_INSTANCE_PREFIX):
        return Route.INSTANCE_BLOCKED
    return Route.PROXY


def check_proxyable(path: str) -> None:
    """Only paths spelled the way IMDS spells its own reach it (see `_PROXYABLE`); a segment ending in a dot
    is refused too (some servers drop trailing dots, turning `metadata./instance` into `metadata/instance`)."""
    if not _PROXYABLE.fullmatch(path):
        raise BadRequest("The request path contains characters the instance metadata service does not use")
    if any(segment.endswith(".") for segment in path.split("/")):
        raise BadRequest("A request path segment may not end with a dot")


def check_metadata_header(headers: Mapping[str, str], *, required: bool) -> None:
    if required and headers.get("Metadata") != "true":
        raise MetadataHeaderMissing()


def check_common(method: str, headers: Mapping[str, str], *, metadata_required: bool) -> None:
    """The checks every IMDS-facing request gets, in SPEC order: Metadata header, X-Forwarded-For."""
    check_metadata_header(headers, required=metadata_required)
    if "X-Forwarded-For" in headers:
        raise BadRequest("Requests with an X-Forwarded-For header are not accepted")


def parse_query(query_string: str) -> list[tuple[str, str]]:
    return parse_qsl(query_string, keep_blank_values=True)


def parse_token_request(method: str, headers: Mapping[str, str], query: Iterable[tuple[str, str]], *,
                        metadata_required: bool) -> TokenRequest:
    """SPEC §2 request checks, in order, each answered before any lookup."""
    check_common(method, headers, metadata_required=metadata_required)
    if method != "GET":
        raise MethodNotAllowed(f"Method {method} is not allowed; IMDS accepts GET only")
    params: dict[str, str] = {}
    for key, value in query:
        if key in params:
            raise BadRequest(f"Query parameter {key} is given more than once")
        params[key] = value
    resource = params.get("resource", "").strip()
    if not resource:
        raise BadRequest("Required query variable 'resource' is missing")
    chosen = [name for name in SELECTORS if params.get(name, "").strip()]
    if len(chosen) > 1:
        raise BadRequest(f"Only one of {', '.join(SELECTORS)} may be given (got {', '.join(chosen)})")
    return TokenRequest(
        resource=resource,
        client_id=params.get("client_id", "").strip(),
        resource_id=(params.get("msi_res_id", "") or params.get("mi_res_id", "")).strip(),
        object_id=params.get("object_id", "").strip(),
        api_version=params.get("api-version", ""),
    )


def token_object(token: AccessToken, *, resource: str, now: float) -> dict[str, str]:
    """The IMDS success object: every value a string; expires_in is the lifetime remaining now."""
    expires_in = max(0, int(token.expires_on - now))
    not_before = token.not_before if token.not_before is not None else int(now)
    return {
        "access_token": token.access_token,
        "refresh_token": "",
        "expires_in": str(expires_in),
        "expires_on": str(int(token.expires_on)),
        "not_before": str(int(not_before)),
        "resource": resource,
        "token_type": token.token_type or "Bearer",
        "client_id": token.client_id,
    }


def render_tokens(tokens: Iterable[AccessToken], *, resource: str, now: float) -> str:
    """One object, or an array (primary tenant first) for a service principal with auxiliary tenants."""
    objects = [token_object(t, resource=resource, now=now) for t in tokens]
    body = objects[0] if len(objects) == 1 else objects
    return json.dumps(body, separators=(",", ":"))


def render_host_token(token: AccessToken, *, resource: str, client_id: str, now: float) -> str:
    return json.dumps({"token": token_object(token, resource=resource, now=now), "clientid": client_id},
                      separators=(",", ":"))


INTERNAL_ERROR = "Internal error; see the nmi log"


def error_for_status(status: int, description: str = "") -> NmiError:
    """A status nmi answers without an NmiError of its own (aiohttp's refusals, a request it could not parse, a bug)
    as one: 4xx is `invalid_request`, 5xx `internal_error`."""
    error = BadRequest(description or "Bad request") if status < 500 else NmiError(description or INTERNAL_ERROR)
    error.status = status
    return error


def render_error(error: NmiError) -> str:
    return json.dumps({"error": error.error, "error_description": error.description}, separators=(",", ":"))


def error_headers(error: NmiError) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
