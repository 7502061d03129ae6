"""Service-principal credentials out of Secret data: off the event loop, and once per Secret version.

PKCS#12 bundles are opened in a separate process. cryptography holds the GIL for the whole key derivation
(measured: a thread running a 1M-round parse let another Python thread run once in 0.36 s), so a worker thread
would still stall the event loop, and a Secret with millions of KDF rounds would delay every pod's cached token
and /healthz. Results, failures included, are kept per (Secret namespace, name, resourceVersion): a bad bundle
costs one parse, not one per request, and concurrent requests for one version share that parse.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Hashable, Mapping

from cryptography.hazmat.primitives import serialization

from .errors import IdentityConfigurationError
from .model import SERVICE_PRINCIPAL, SecretRef
from .sp_credentials import ClientCertificate, ClientSecret, client_secret_from, open_pkcs12, secret_label

log = logging.getLogger(__name__)
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
        self._max_entries = max_entries
        self._results: OrderedDict[Hashable, asyncio.Future[Credential]] = OrderedDict()
        # One bundle at a time, so the timeout counts parse time only, never time queued behind another bundle.
        self._one_at_a_time = asyncio.Semaphore(1)
        self.parses = 0  # bundles handed to the parser process (tests, metrics)

    async def load(self, identity_type: int, ref: SecretRef, data: Mapping[str, bytes]) -> Credential:
        """The credential in this Secret version; raises IdentityConfigurationError (cached) naming the Secret."""
        key = (identity_type, ref.namespace, ref.name, _version_of(data))
        result = self._results.get(key)
        if result is None:
            result = asyncio.ensure_future(self._open(identity_type, ref, data))
            self._results[key] = result
            while len(self._results) > self._max_entries:
                self._results.popitem(last=False)
        else:
            self._results.move_to_end(key)
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
