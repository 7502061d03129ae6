"""ServiceAccount tokens used as client assertions for workload identity federation.

One pod-bound token per (namespace, ServiceAccount), minted through the TokenRequest port and re-minted at
about 80 % of its life (as the kubelet rotates projected tokens), so Azure AD never sees an expired assertion
(AADSTS700024). Concurrent misses for one ServiceAccount share one TokenRequest. Pure asyncio; no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ports import ServiceAccountTokenMinter
from ..singleflight import Lru, SingleFlight


@dataclass(slots=True)
class _Minted:
    token: str = field(repr=False)
    renew_at: float
    expires_on: float


class AssertionCache:
    def __init__(self, minter: ServiceAccountTokenMinter, *, clock: Callable[[], float],
                 renew_fraction: float = 0.8, max_entries: int = 4096) -> None:
        self._minter = minter
        self._clock = clock
        self._renew_fraction = renew_fraction
        self._tokens: Lru[tuple[str, str], _Minted] = Lru(max_entries)
        self._minting: SingleFlight[tuple[str, str], _Minted] = SingleFlight()
        self.mints = 0

    async def current(self, namespace: str, service_account: str, *, pod_name: str, pod_uid: str) -> str:
        """A valid token for the ServiceAccount, minted bound to this pod when none is cached or it is due."""
        key = (namespace, service_account)
        minted = self._tokens.peek(key)
        if minted is not None and self._clock() < minted.renew_at:
            self._tokens.touch(key)
            return minted.token
        return (await self._minting.join(key, lambda: self._mint(key, pod_name, pod_uid))).token

    def peek(self, namespace: str, service_account: str) -> str:
        """The cached token without I/O (MSAL's `client_assertion` callable runs in a worker thread)."""
        minted = self._tokens.peek((namespace, service_account))
        return minted.token if minted is not None else ""

    def forget(self, namespace: str, service_account: str) -> None:
        self._tokens.pop((namespace, service_account))

    async def _mint(self, key: tuple[str, str], pod_name: str, pod_uid: str) -> _Minted:
        namespace, service_account = key
        self.mints += 1
        minted_at = self._clock()
        answer = await self._minter.mint_token(namespace, service_account, pod_name=pod_name, pod_uid=pod_uid)
        lifetime = max(0.0, answer.expires_on - minted_at)
        entry = _Minted(answer.token, renew_at=minted_at + self._renew_fraction * lifetime,
                        expires_on=answer.expires_on)
        self._tokens.put(key, entry)
        return entry
