"""Fixtures for the token side: a virtual clock, a dict-backed SecretReader, the fakes, and TokenService."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import AsyncIterator, Callable, Mapping

import pytest

from nmi.errors import IdentityConfigurationError
from fakes.aad import FakeAad
from fakes.imds import FakeImds, VmIdentity
from nmi.tokens.cache import RefreshPolicy
from nmi.tokens.config import CacheLimits, ImdsEndpoint, Runtime, UpstreamHooks, UpstreamLimits
from nmi.tokens.credential_policy import CredentialPolicy
from nmi.tokens.service import TokenService

START = 1_800_000_000.0
# The fake Azure AD listens on loopback: trusted here as an operator would with --allowed-authority-hosts.
LOOPBACK_AUTHORITY = CredentialPolicy(allowed_authority_hosts=frozenset({"127.0.0.1"}))


class VirtualClock:
    """Epoch seconds that move only when a sleeper wakes or a test advances them.

    A sleeper wakes at its own deadline (not the sum of all sleepers'), after yielding to the loop once."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + max(0.0, seconds)
        await asyncio.sleep(0)
        self.now = max(self.now, target)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DictSecretReader:
    """SecretReader over a dict {(namespace, name): {key: bytes}}; counts reads."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.reads = 0

    def put(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        self.secrets[(namespace, name)] = dict(data)

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, bytes]:
        self.reads += 1
        try:
            return self.secrets[(namespace, name)]
        except KeyError:
            raise IdentityConfigurationError(f"Secret {namespace}/{name} not found") from None


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def secrets() -> DictSecretReader:
    return DictSecretReader()


@pytest.fixture
async def imds() -> AsyncIterator[FakeImds]:
    async with FakeImds([VmIdentity("cid-user-1", object_id="oid-user-1", resource_id="/subscriptions/s/rg/id-1"),
                        VmIdentity("cid-user-2", object_id="oid-user-2"),
                        VmIdentity("cid-system", object_id="oid-system", system_assigned=True)]) as fake:
        yield fake


@pytest.fixture
async def aad(tmp_path, monkeypatch) -> AsyncIterator[FakeAad]:
    async with FakeAad() as fake:
        # requests reads REQUESTS_CA_BUNDLE per request and lets it override Session.verify.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.write_ca_bundle(tmp_path / "fake-aad-ca.pem")))
        yield fake


ServiceFactory = Callable[..., TokenService]


@pytest.fixture
async def make_service(clock: VirtualClock, secrets: DictSecretReader) -> AsyncIterator[ServiceFactory]:
    made: list[TokenService] = []

    def make(imds: FakeImds | None = None, *, metadata_port: int | None = None, rng=None,
             refresh_policy: RefreshPolicy | None = None, observe_upstream=None, in_flight=None,
             **overrides) -> TokenService:
        """The service as the tests want it; UpstreamLimits fields may be given by name (retry_budget=...)."""
        limits = UpstreamLimits(retry_budget=10.0, max_attempts=4, attempt_timeout=2.0)
        limit_fields = {f.name for f in dataclasses.fields(UpstreamLimits)}
        limits = dataclasses.replace(limits, **{k: overrides.pop(k) for k in list(overrides) if k in limit_fields})
        options = dict(imds=ImdsEndpoint("127.0.0.1", metadata_port or (imds.port if imds else 9)), limits=limits,
                       cache=CacheLimits(refresh=refresh_policy or RefreshPolicy()),
                       hooks=UpstreamHooks(observe=observe_upstream, in_flight=in_flight),
                       runtime=Runtime(clock=clock, sleep=clock.sleep, rng=rng), credential_policy=LOOPBACK_AUTHORITY)
        options.update(overrides)
        service = TokenService(secrets, **options)
        made.append(service)
        return service

    try:
        yield make
    finally:
        for service in made:
            await service.close()

