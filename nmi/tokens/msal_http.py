"""The HTTP clients nmi hands to MSAL, what they remember of each answer, and how token answers are read.

MSAL normalises upstream answers into dicts and drops the status code, the Retry-After header and, for
IMDS, `expires_on`/`not_before`/`client_id`. These clients keep the last answer (per thread: MSAL runs in
nmi's worker threads) so the caller can map errors by status and honour Retry-After.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..model import AccessToken

IMDS_TOKEN_PATH = "/metadata/identity/oauth2/token"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str = field(default="", repr=False)

    def json_object(self) -> dict[str, Any]:
        try:
            body = json.loads(self.text)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


def imds_session(*, pool_size: int) -> requests.Session:
    session = requests.Session()
    # IMDS is link-local and must never go through a proxy (HTTP_PROXY etc. are ignored).
    session.trust_env = False
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0))
    return session


def aad_session(*, pool_size: int) -> requests.Session:
    session = requests.Session()
    # Proxies and REQUESTS_CA_BUNDLE from the environment apply (requests reads them per request);
    # SSL_CERT_FILE is honoured too, which requests alone would not do.
    session.verify = os.environ.get("SSL_CERT_FILE") or True
    adapter = HTTPAdapter(pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    return session


class ImdsHttpClient:
    """MSAL's `http_client` for one managed-identity acquisition.

    MSAL builds the IMDS URL from the process-wide AZURE_POD_IDENTITY_AUTHORITY_HOST variable. Rather than
    mutating os.environ (global, racy between threads), nmi keeps MSAL's path and query and sends them to
    its own --metadata-ip:--metadata-port."""

    def __init__(self, session: requests.Session, base_url: str, *, timeout: float) -> None:
        self._session, self._base, self._timeout = session, base_url.rstrip("/"), timeout
        self.answer: Answer | None = None

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> requests.Response:
        path = urlsplit(url).path
        if path != IMDS_TOKEN_PATH:
            # MSAL picks App Service / Arc / Service Fabric from environment variables; on a node that is wrong.
            raise RuntimeError(f"MSAL chose a non-IMDS managed identity endpoint ({path}); "
                               "unset IDENTITY_ENDPOINT/MSI_ENDPOINT in nmi's environment")
        response = self._session.get(self._base + path, params=params, headers=headers, timeout=self._timeout,
                                     allow_redirects=False)
        self.answer = Answer(response.status_code, dict(response.headers), response.text)
        return response

    def post(self, *_: Any, **__: Any) -> requests.Response:
        raise RuntimeError("IMDS token requests are GETs")

    def close(self) -> None:
        """The session is shared and closed by its owner."""


class AadHttpClient:
    """MSAL's `http_client` for every ConfidentialClientApplication; remembers the last answer per thread."""

    def __init__(self, session: requests.Session, *, timeout: float) -> None:
        self._session, self._timeout = session, timeout
        self._last = threading.local()

    def begin(self) -> None:
        self._last.answer = None

    def last_answer(self) -> Answer | None:
        return getattr(self._last, "answer", None)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("GET", url, kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._send("POST", url, kwargs)

    def _send(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["allow_redirects"] = False
        response = self._session.request(method, url, **kwargs)
        # Bodies of successful token answers hold tokens: keep text only for errors and discovery.
        keep_text = response.status_code >= 400 or method == "GET"
        self._last.answer = Answer(response.status_code, dict(response.headers), response.text if keep_text else "")
        return response

    def close(self) -> None:
        """The session is shared and closed by its owner."""


def access_token_from(result: Mapping[str, Any], raw: Mapping[str, Any], *, resource: str, client_id: str,
                      now: float) -> AccessToken:
    token = str(result["access_token"])
    claims = jwt_claims(token)
    not_before: Any = raw.get("not_before") or claims.get("nbf")
    return AccessToken(
        access_token=token,
        # From expires_in and our own clock, so cache arithmetic and the upstream agree whatever the clock skew.
        expires_on=int(now + int(result.get("expires_in") or 0)),
        resource=resource,
        token_type=str(result.get("token_type") or "Bearer"),
        not_before=int(not_before) if str(not_before or "").isdigit() else None,
        client_id=client_id or str(claims.get("appid") or claims.get("azp") or ""),
        object_id=str(claims.get("oid") or ""),
    )


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded but NOT verified (only to read `oid`/`nbf`); {} when not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}
