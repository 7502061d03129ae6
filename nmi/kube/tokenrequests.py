"""The TokenRequest API: pod-bound ServiceAccount tokens for workload identity federation.

`POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token` with the Azure AD token-exchange audience, bound to
the calling pod (the API server refuses a pod UID that does not match, and invalidates the token when the pod
goes). Foreign failures become `nmi.errors` types here; the token itself is never logged.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from ..errors import IdentityConfigurationError, Unavailable
from ..model import ServiceAccountToken
from .reads import ApiReader
from .watchstream import json_body

log = logging.getLogger(__name__)

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
DEFAULT_EXPIRATION_SECONDS = 3600


class KubeServiceAccountTokens(ApiReader):
    """`nmi.ports.ServiceAccountTokenMinter`."""

    def __init__(self, api_client: k8s_client.ApiClient, *, timeout: float = 5.0,
                 expiration_seconds: int = DEFAULT_EXPIRATION_SECONDS) -> None:
        super().__init__(api_client)
        self.timeout = timeout
        self.expiration_seconds = expiration_seconds

    async def mint_token(self, namespace: str, service_account: str, *, pod_name: str,
                         pod_uid: str) -> ServiceAccountToken:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [TOKEN_EXCHANGE_AUDIENCE],
                "expirationSeconds": self.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid},
            },
        }

        def create() -> Any:
            response = self.core.create_namespaced_service_account_token(
                service_account, namespace, body, _preload_content=False, _request_timeout=self.timeout)
            return json_body(response)

        where = f"ServiceAccount {namespace}/{service_account}"
        try:
            answer = await self._call(create, timeout=self.timeout)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                reason = (f"not found (or pod {namespace}/{pod_name} is gone)" if exc.status == 404
                          else f"token request refused (HTTP {exc.status})")
                raise IdentityConfigurationError(f"{where}: {reason}") from exc
            if exc.status in (400, 409, 422):
                # Usually the bound pod is gone or was replaced (UID mismatch): not retryable as is.
                raise IdentityConfigurationError(
                    f"{where}: token request for pod {namespace}/{pod_name} rejected (HTTP {exc.status})") from exc
            raise Unavailable(f"{where}: token request failed (HTTP {exc.status})") from exc
        except Exception as exc:  # noqa: BLE001 - connection failures, timeouts: transient
            log.warning("token request for %s failed: %s", where, type(exc).__name__)
            raise Unavailable(f"{where}: token request failed: API server unreachable") from exc
        try:
            status = answer["status"]
            token = str(status["token"])
            expires = datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"{where}: the token request answer is malformed") from exc
        if not token:
            raise Unavailable(f"{where}: the token request answer has no token")
        return ServiceAccountToken(token=token, expires_on=expires.timestamp())
