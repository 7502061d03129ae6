"""A fake Azure AD (Microsoft identity platform v2) over HTTPS, for tests and the README demo.

OIDC discovery and the client-credentials token endpoint, per tenant. Client secrets are compared; client
assertions are verified for real (signature with the registered certificate's public key, x5t, aud, iss, sub,
exp), for RS256, PS256 and ES256. Faults can be programmed; calls are counted. Secrets are never recorded.
"""

from __future__ import annotations

import base64
import hmac
import json
import ssl
import tempfile
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .fake_jwt import b64url, b64url_decode, unsigned_jwt
from .imds import Fault
from .pki import CertificateAuthority
from .sa_issuer import verified_claims
from .serving import FakeSite, Served

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


@dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    public_key: Any = None  # the issuer's signing key (its JWKS, in real life); None: signature not checked


@dataclass
class RegisteredApp:
    client_id: str
    secret: str | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    federated: list[FederatedCredential] = field(default_factory=list)


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description, "error_codes": [0],
                              "trace_id": str(uuid.uuid4())}, status=status)


class FakeAad(Served):
    def __init__(self, *, token_lifetime: int = 3599, clock: Callable[[], float] = time.time) -> None:
        self.pki = CertificateAuthority.create()
        self.token_lifetime = token_lifetime
        self._clock = clock
        self.apps: dict[str, dict[str, RegisteredApp]] = {}  # tenant -> client_id -> app
        self._faults: deque[Fault] = deque()
        self.token_calls: Counter[tuple[str, str, str]] = Counter()  # (tenant, client_id, scope) of issued tokens
        self.token_requests = 0  # every POST to a token endpoint, refused ones included
        self.discovery_calls: Counter[str] = Counter()
        self.client_auth: list[str] = []  # per token request: "secret" or "assertion:<alg>" (never the secret)
        self.assertion_headers: list[list[str]] = []  # header names of each client assertion that matched a key
        self.federated_assertions: list[dict[str, Any]] = []  # claims of every accepted federated assertion
        self._site = FakeSite()
        self.port = 0

    @property
    def authority_host(self) -> str:
        """What goes into AzureIdentity spec.adEndpoint."""
        return f"https://127.0.0.1:{self.port}/"

    def write_ca_bundle(self, path: Path | str) -> Path:
        return self.pki.write_ca_bundle(path)

    def add_tenant(self, tenant: str) -> None:
        self.apps.setdefault(tenant, {})

    def register_secret_app(self, tenant: str, client_id: str, secret: str) -> RegisteredApp:
        app = RegisteredApp(client_id, secret=secret)
        self.apps.setdefault(tenant, {})[client_id] = app
        return app

    def register_certificate_app(self, tenant: str, client_id: str, certificate: x509.Certificate) -> RegisteredApp:
        app = RegisteredApp(client_id, certificate=certificate)
        self.apps.setdefault(tenant, {})[client_id] = app
        return app

    def register_federated_app(self, tenant: str, client_id: str, issuer: str, subject: str, *,
                               public_key: Any = None) -> RegisteredApp:
        """An app (or managed identity) with a federated identity credential; call again to add another subject."""
        app = self.apps.setdefault(tenant, {}).get(client_id) or RegisteredApp(client_id)
        app.federated.append(FederatedCredential(issuer, subject, public_key))
        self.apps[tenant][client_id] = app
        return app

    def fail_next(self, count: int, fault: Fault) -> None:
        self._faults.extend([fault] * count)

    def clear_faults(self) -> None:
        self._faults.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        _, self.port = await self._site.serve(app, host, port, ssl_context=self._server_tls())

    async def stop(self) -> None:
        await self._site.stop()

    def _server_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = self.pki.write_server_files(Path(directory))
            context.load_cert_chain(cert, key)
        return context

    def _base(self, request: web.Request) -> str:
        return f"https://{request.host}"

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        self.discovery_calls[tenant] += 1
        if tenant not in self.apps:
            return _error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        base = f"{self._base(request)}/{tenant}"
        return web.json_response({
            "token_endpoint": f"{base}/oauth2/v2.0/token", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0", "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"]})

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self._faults:
            fault = self._faults.popleft()
            answer = await fault.play(error="temporarily_unavailable", description=f"fake AAD {fault.status}",
                                      request=request)
            if answer is not None:
                return answer
        tenant = request.match_info["tenant"]
        form = await request.post()
        if tenant not in self.apps:
            return _error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "AADSTS70003: only client_credentials is supported here")
        client_id, secret = self._client_and_secret(request, form)
        app = self.apps[tenant].get(client_id)
        if app is None:
            return _error(400, "unauthorized_client", f"AADSTS700016: Application '{client_id}' was not found.")
        token_url = f"{self._base(request)}/{tenant}/oauth2/v2.0/token"
        problem = self._authenticate(app, secret, form, token_url)
        if problem:
            return _error(401, "invalid_client", problem)
        scope = str(form.get("scope", ""))
        if not scope.endswith("/.default"):
            return _error(400, "invalid_scope", "AADSTS1002012: scope must end with /.default")
        self.token_calls[(tenant, client_id, scope)] += 1
        now = int(self._clock())
        claims = {"aud": scope[: -len("/.default")], "iss": f"https://sts.windows.net/{tenant}/", "iat": now,
                  "nbf": now, "exp": now + self.token_lifetime, "oid": app.object_id, "appid": client_id,
                  "tid": tenant, "sub": app.object_id}
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime,
                                  "ext_expires_in": self.token_lifetime, "access_token": unsigned_jwt(claims)})

    def _client_and_secret(self, request: web.Request, form: Any) -> tuple[str, str | None]:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            return unquote_plus(user), unquote_plus(password)
        secret = form.get("client_secret")
        return str(form.get("client_id", "")), (str(secret) if secret is not None else None)

    def _authenticate(self, app: RegisteredApp, secret: str | None, form: Any, token_url: str) -> str:
        if secret is not None:
            self.client_auth.append("secret")
            if app.secret is None or not hmac.compare_digest(secret.encode(), app.secret.encode()):
                return "AADSTS7000215: Invalid client secret provided."
            return ""
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required."
        if app.federated:
            return self._verify_federated(app, str(form["client_assertion"]))
        if app.certificate is None:
            return "AADSTS700027: no certificate is registered for this application."
        return self._verify_assertion(app, str(form["client_assertion"]), token_url)

    def _verify_assertion(self, app: RegisteredApp, assertion: str, token_url: str) -> str:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(signature_b64)
        except ValueError:
            return "AADSTS50012: the client assertion is not a JWT."
        assert app.certificate is not None
        algorithm = str(header.get("alg"))
        self.client_auth.append(f"assertion:{algorithm}")
        der = app.certificate.public_bytes(serialization.Encoding.DER)
        expected = {"x5t": b64url(_digest(hashes.SHA1(), der)), "x5t#S256": b64url(_digest(hashes.SHA256(), der))}
        if not any(str(header.get(name, "")).rstrip("=") == value for name, value in expected.items()):
            return "AADSTS700027: the certificate thumbprint (x5t) matches no registered key."
        chain = header.get("x5c") or []
        if chain and base64.b64decode("".join(str(chain[0]).split())) != der:
            return "AADSTS700027: the x5c certificate is not the registered one."
        self.assertion_headers.append(sorted(header))
        if not _signature_valid(app.certificate.public_key(), algorithm, f"{header_b64}.{claims_b64}".encode(),
                                signature):
            return f"AADSTS700027: the client assertion signature ({algorithm}) does not verify."
        if claims.get("aud") != token_url:
            return "AADSTS700021: the client assertion audience is not this token endpoint."
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return "AADSTS700021: the client assertion iss/sub are not the client ID."
        if float(claims.get("exp", 0)) <= time.time():
            return "AADSTS700024: the client assertion has expired."
        return ""


    def _verify_federated(self, app: RegisteredApp, assertion: str) -> str:
        """As Azure AD checks a federated credential: signature, iss, sub, aud, exp (not the pod binding)."""
        self.client_auth.append("federated")
        try:
            claims = json.loads(b64url_decode(assertion.split(".")[1]))
        except (ValueError, IndexError):
            return "AADSTS50027: the client assertion is not a JWT."
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        for credential in app.federated:
            if claims.get("iss") != credential.issuer or claims.get("sub") != credential.subject:
                continue
            if credential.public_key is not None and verified_claims(assertion, credential.public_key) is None:
                return "AADSTS700027: the client assertion signature does not verify."
            if TOKEN_EXCHANGE_AUDIENCE not in audiences:
                return f"AADSTS700212: no matching federated identity record for audience {audiences}."
            if float(claims.get("exp", 0)) <= self._clock():
                return "AADSTS700024: the client assertion is not within its valid time range."
            self.federated_assertions.append(claims)
            return ""
        return (f"AADSTS70021: No matching federated identity record found for presented assertion. "
                f"Assertion Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'.")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _signature_valid(public_key: Any, algorithm: str, signed: bytes, signature: bytes) -> bool:
    try:
        if algorithm == "RS256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        elif algorithm == "PS256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif algorithm == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
