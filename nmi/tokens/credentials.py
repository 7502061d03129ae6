"""Service-principal credentials (AzureIdentity types 1 and 2) out of Secret data: off the event loop, and once
per Secret version.

PKCS#12 bundles are opened in a separate process. cryptography holds the GIL for the whole key derivation
(measured: a thread running a 1M-round parse let another Python thread run once in 0.36 s), so a worker thread
would still stall the event loop, and a Secret with millions of KDF rounds would delay every pod's cached token
and /healthz. Results, failures included, are kept per (Secret namespace, name, resourceVersion): a bad bundle
costs one parse, not one per request, and concurrent requests for one version share that parse.
Every error names the Secret at fault and never includes its content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable, Mapping

if TYPE_CHECKING:  # cryptography (~10 MiB) is imported only where a certificate is opened
    from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import IdentityConfigurationError
from ..model import SERVICE_PRINCIPAL, SecretRef
from ..singleflight import Lru

log = logging.getLogger(__name__)
MAX_RSA_KEY_BITS = 8192  # signing with a bigger key takes long enough to hurt; Azure AD needs 2048
CLIENT_SECRET_KEY = "clientSecret"
CERTIFICATE_KEY = "certificate"
PASSWORD_KEY = "password"


@dataclass(frozen=True, slots=True)
class ClientSecret:
    value: str = field(repr=False)
    fingerprint: str  # identifies the material without revealing it; a change rebuilds the MSAL app


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate_pem: str
    fingerprint: str


Credential = ClientSecret | ClientCertificate


class ParserProcess:
    """One spawned worker process shared by every loader in this process (started at the first bundle)."""

    _lock = threading.Lock()
    _pool: ProcessPoolExecutor | None = None

    @classmethod
    def pool(cls) -> ProcessPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                # spawn, not fork: nmi has threads (informers, MSAL workers) that a fork would copy mid-flight.
                cls._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            return cls._pool

    @classmethod
    def kill(cls) -> None:
        """Stop a parse that takes too long: the worker is killed, the next bundle starts a fresh one."""
        with cls._lock:
            pool, cls._pool = cls._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):  # no public API before Python 3.14
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


class CredentialLoader:
    def __init__(self, *, parse_timeout: float = 30.0, max_entries: int = 512) -> None:
        self._parse_timeout = parse_timeout
        # The parse of each Secret version, running or done (failures too): one parse per version, shared.
        self._results: Lru[Hashable, asyncio.Future[Credential]] = Lru(max_entries)
        # One bundle at a time, so the timeout counts parse time only, never time queued behind another bundle.
        self._one_at_a_time = asyncio.Semaphore(1)
        self.parses = 0  # bundles handed to the parser process (tests, metrics)

    async def load(self, identity_type: int, ref: SecretRef, data: Mapping[str, bytes]) -> Credential:
        """The credential in this Secret version; raises IdentityConfigurationError (cached) naming the Secret."""
        key = (identity_type, ref.namespace, ref.name, _version_of(data))
        result = self._results.get(key)
        if result is None:
            result = asyncio.ensure_future(self._open(identity_type, ref, data))
            self._results.put(key, result)
        # A caller that gives up must not cancel the parse other callers (and the cache) wait for.
        return await asyncio.shield(result)

    async def _open(self, identity_type: int, ref: SecretRef, data: Mapping[str, bytes]) -> Credential:
        if identity_type == SERVICE_PRINCIPAL:
            return client_secret_from(ref, data)  # a decode, nothing heavy: no process needed
        async with self._one_at_a_time:
            return await self._open_bundle(ref, data)

    async def _open_bundle(self, ref: SecretRef, data: Mapping[str, bytes]) -> ClientCertificate:
        self.parses += 1
        loop = asyncio.get_running_loop()
        label = secret_label(ref)
        try:
            outcome = await asyncio.wait_for(
                loop.run_in_executor(ParserProcess.pool(), open_pkcs12, ref, dict(data)), self._parse_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: the PKCS#12 bundle was still being opened after %.0fs; parse stopped", label,
                        self._parse_timeout)
            ParserProcess.kill()
            raise IdentityConfigurationError(
                f"{label}: the PKCS#12 bundle could not be opened within {self._parse_timeout:.0f}s"
                " (too many key derivation rounds?)") from None
        except IdentityConfigurationError as exc:
            # Once per Secret version (the failure is cached): the operator sees it without a log line per request.
            log.warning("%s (resourceVersion %s)", exc.description, getattr(data, "resource_version", "") or "?")
            raise
        except Exception as exc:  # noqa: BLE001 - the worker died (killed, out of memory): this version is bad
            log.warning("%s: the PKCS#12 parser process failed (%s)", label, type(exc).__name__)
            ParserProcess.kill()
            raise IdentityConfigurationError(f"{label}: the PKCS#12 bundle could not be opened") from None
        key_der, certificate_pem, fingerprint = outcome
        # Imported here: cryptography is ~10 MiB that nodes without certificate identities never need.
        from cryptography.hazmat.primitives import serialization

        # Already validated in the worker: skip cryptography's RSA check, which is slow for big keys.
        private_key = serialization.load_der_private_key(key_der, None, unsafe_skip_rsa_key_validation=True)
        return ClientCertificate(private_key=private_key, certificate_pem=certificate_pem,  # type: ignore[arg-type]
                                 fingerprint=fingerprint)


def _version_of(data: Mapping[str, bytes]) -> str:
    """The Secret's resourceVersion; without one (a reader that has none), a digest of its content."""
    version = getattr(data, "resource_version", "")
    if version:
        return f"rv:{version}"
    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data[name]).digest())
    return "sha256:" + digest.hexdigest()


def secret_label(ref: SecretRef | None) -> str:
    return f"Secret {ref.namespace}/{ref.name}" if ref else "Secret <none>"


def client_secret_from(ref: SecretRef, data: Mapping[str, bytes]) -> ClientSecret:
    """Key `clientSecret` when present, otherwise the only key (upstream took the first map key, at random)."""
    label = secret_label(ref)
    if CLIENT_SECRET_KEY in data:
        raw = data[CLIENT_SECRET_KEY]
    elif len(data) == 1:
        raw = next(iter(data.values()))
    elif not data:
        raise IdentityConfigurationError(f"{label} has no data")
    else:
        raise IdentityConfigurationError(f"{label} has several keys and none is named {CLIENT_SECRET_KEY}")
    try:
        # Trailing newlines come from `--from-file`; Azure AD secrets never end in whitespace.
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise IdentityConfigurationError(f"{label}: the client secret is not UTF-8 text") from None
    if not value:
        raise IdentityConfigurationError(f"{label}: the client secret is empty")
    return ClientSecret(value, fingerprint=hashlib.sha256(raw).hexdigest())


def client_certificate_from(ref: SecretRef, data: Mapping[str, bytes]) -> ClientCertificate:
    """PKCS#12 bundle under `certificate`, its password under `password` (either may be absent)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12

    label = secret_label(ref)
    bundle = data.get(CERTIFICATE_KEY, b"")
    password = data.get(PASSWORD_KEY, b"").rstrip(b"\r\n") or None
    if not bundle:
        raise IdentityConfigurationError(f"{label} has no {CERTIFICATE_KEY!r} key")
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(bundle, password)
    except (ValueError, TypeError):
        raise IdentityConfigurationError(
            f"{label}: {CERTIFICATE_KEY!r} is not a PKCS#12 bundle that opens with {PASSWORD_KEY!r}") from None
    if key is None or certificate is None:
        raise IdentityConfigurationError(f"{label}: the PKCS#12 bundle must hold a private key and its certificate")
    if not isinstance(key, rsa.RSAPrivateKey):
        # MSAL signs client assertions with PS256/RS256 only and Azure AD accepts only those; an EC key
        # would fail inside MSAL with an unrelated-looking TypeError at the first token request.
        raise IdentityConfigurationError(
            f"{label}: the certificate key is {_key_kind(key)}; Azure AD client assertions need an RSA key")
    if key.key_size > MAX_RSA_KEY_BITS:
        raise IdentityConfigurationError(f"{label}: the RSA key has {key.key_size} bits, at most {MAX_RSA_KEY_BITS}")
    # OpenSSL's PKCS#12 parser already pairs the key with the certificate holding its public key (a bundle
    # with none comes back without a certificate, refused above); this check keeps that promise explicit.
    certified = certificate.public_key()
    if not isinstance(certified, rsa.RSAPublicKey) or key.public_key().public_numbers() != certified.public_numbers():
        raise IdentityConfigurationError(f"{label}: the private key does not belong to the certificate")
    return ClientCertificate(
        private_key=key,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint=hashlib.sha256(bundle + b"\0" + (password or b"")).hexdigest(),
    )


def open_pkcs12(ref: SecretRef, data: Mapping[str, bytes]) -> tuple[bytes, str, str]:
    """client_certificate_from, for the parser process: (private key as unencrypted PKCS#8 DER, certificate PEM,
    fingerprint), plain values that cross the process boundary. Raises IdentityConfigurationError."""
    from cryptography.hazmat.primitives import serialization

    opened = client_certificate_from(ref, data)
    key_der = opened.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return key_der, opened.certificate_pem, opened.fingerprint


def _key_kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "an EC key"
    return f"a {type(key).__name__} key"
