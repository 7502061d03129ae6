"""The fake API server's ServiceAccount token issuer: RS256 JWTs shaped like Kubernetes' bound tokens, signed
with a key the fake owns, so the fake Azure AD can check federated assertions for real."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .fake_jwt import b64url, b64url_decode

DEFAULT_ISSUER = "https://oidc.fake-cluster.example/"


class ServiceAccountIssuer:
    def __init__(self, *, issuer: str = DEFAULT_ISSUER, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self._clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = uuid.uuid4().hex

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def mint(self, *, namespace: str, service_account: str, service_account_uid: str, audiences: list[str],
             expiration_seconds: int, pod: dict[str, str] | None = None) -> tuple[str, float]:
        """(token, expiry epoch) for `system:serviceaccount:<ns>:<sa>`, bound to `pod` (name, uid) if given."""
        now = int(self._clock())
        expires = now + expiration_seconds
        private: dict[str, Any] = {"namespace": namespace,
                                   "serviceaccount": {"name": service_account, "uid": service_account_uid}}
        if pod:
            private["pod"] = pod
        claims = {"iss": self.issuer, "sub": f"system:serviceaccount:{namespace}:{service_account}",
                  "aud": audiences, "iat": now, "nbf": now, "exp": expires, "jti": str(uuid.uuid4()),
                  "kubernetes.io": private}
        header = {"alg": "RS256", "kid": self.key_id, "typ": "JWT"}
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url(signature)}", float(expires)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def verified_claims(token: str, public_key: rsa.RSAPublicKey) -> dict[str, Any] | None:
    """The claims of an RS256 JWT whose signature verifies with `public_key`, else None."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        if header.get("alg") != "RS256":
            return None
        public_key.verify(b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(),
                          hashes.SHA256())
        claims = json.loads(b64url_decode(claims_b64))
    except (ValueError, InvalidSignature):
        return None
    return claims if isinstance(claims, dict) else None
