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


_TOKEN = re.compile(r"^/(?i:metadata)/identity/oauth2/token")
_MANGLED_TOKEN = re.compile(r"/(?i:metadata)/identity(.*?)oauth2(.*?)token")
_HOST_TOKEN = re.compile(r"^/host/token")
# Blocking errs on the safe side: any case of either segment is blocked (IMDS itself is case-insensitive).
_INSTANCE = re.compile(r"^/metadata/instance", re.IGNORECASE)

SELECTORS = ("client_id", "msi_res_id", "mi_res_id", "object_id")


def normalise_path(raw_path: str) -> str:
    """Decode percent-escapes once (as IMDS would) and resolve `//`, `/./` and `/../`.

    The result is both what nmi routes on and what it forwards, so no spelling can reach IMDS as a path
    other than the one that was checked. A trailing slash is kept, as gorilla/mux does.
    """
    try:
        decoded = unquote(raw_path.split("?", 1)[0], errors="strict") if raw_path else "/"
    except UnicodeDecodeError:
        raise BadRequest("The request path is not valid UTF-8") from None
    if "\x00" in decoded:
        raise BadRequest("The request path contains a NUL character")
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    cleaned = posixpath.normpath(decoded)
    if cleaned.startswith("//"):  # posixpath keeps a leading double slash (POSIX allows it); IMDS does not
        cleaned = "/" + cleaned.lstrip("/")
    if decoded.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def quote_path(path: str) -> str:
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def route_for(path: str, *, block_instance_metadata: bool) -> Route:
    """Upstream's route table, evaluated in order on an already normalised path."""
    if _TOKEN.match(path):
        return Route.TOKEN
    if _MANGLED_TOKEN.search(path):
        return Route.INVALID_TOKEN_PATH
    if _HOST_TOKEN.match(path):
        return Route.HOST_TOKEN
    if block_instance_metadata and _INSTANCE.match(path):
        return Route.INSTANCE_BLOCKED
    return Route.PROXY


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


def render_error(error: NmiError) -> str:
    return json.dumps({"error": error.error, "error_description": error.description}, separators=(",", ":"))


def error_headers(error: NmiError) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
