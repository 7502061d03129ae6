"""Work on the token path done once instead of per request: the canonical path and its route, the parsed query,
and the rendered token answer. Pods send the same request line again and again and get the same cached tokens,
so each of these is computed once per distinct input (bounded caches; errors are never remembered).

Pure functions over `imds`; no web framework, so the rules stay those `imds` states and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import imds
from .imds import Route
from .model import AccessToken

_MAX_REMEMBERED = 1024
_MAX_REMEMBERED_LENGTH = 2048
_routes: dict[tuple[str, bool], tuple[str, Route]] = {}
_queries: dict[str, list[tuple[str, str]]] = {}


def route_of(raw_path: str, block_instance_metadata: bool) -> tuple[str, Route]:
    known = _routes.get((raw_path, block_instance_metadata))
    if known is None:
        path = imds.canonical_path(raw_path)
        known = path, imds.route_for(path, block_instance_metadata=block_instance_metadata)
        if len(raw_path) <= _MAX_REMEMBERED_LENGTH:
            if len(_routes) >= _MAX_REMEMBERED:
                _routes.clear()
            _routes[(raw_path, block_instance_metadata)] = known
    return known


def query_of(query_string: str) -> list[tuple[str, str]]:
    known = _queries.get(query_string)
    if known is None:
        known = imds.parse_query(query_string)
        if len(query_string) <= _MAX_REMEMBERED_LENGTH:
            if len(_queries) >= _MAX_REMEMBERED:
                _queries.clear()
            _queries[query_string] = known
    return list(known)


# (body, its whole second) -> the whole HTTP answer around it (the token route's fast lane frames bodies).
Frame = Callable[[bytes, int], bytes]


@dataclass(slots=True)
class _Rendered:
    tokens: tuple[AccessToken, ...]
    second: int
    body: bytes
    framed: bytes | None = None


class RenderedBodies:
    """Token answers rendered once per cached token set, resource and second: a cache hit reuses the bytes.

    The answer depends only on the tokens, the resource and the whole second (`expires_in`, and `not_before`
    when the token has none); a grant from the token cache is the same tuple object on every hit, so it is
    recognised by identity (checked with `is`, never by an id that a freed tuple could pass on)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._bodies: dict[tuple[int, str], _Rendered] = {}

    def render(self, tokens: tuple[AccessToken, ...], *, resource: str, now: float) -> bytes:
        return self._rendered(tokens, resource, now).body

    def framed(self, tokens: tuple[AccessToken, ...], *, resource: str, now: float, frame: Frame) -> bytes:
        """`frame` around the body, made once per body (an instance is given one `frame` only)."""
        rendered = self._rendered(tokens, resource, now)
        if rendered.framed is None:
            rendered.framed = frame(rendered.body, rendered.second)
        return rendered.framed

    def _rendered(self, tokens: tuple[AccessToken, ...], resource: str, now: float) -> _Rendered:
        key, second = (id(tokens), resource), int(now)
        known = self._bodies.get(key)
        if known is not None and known.tokens is tokens and known.second == second:
            return known
        rendered = _Rendered(tokens, second, imds.render_tokens(tokens, resource=resource, now=now).encode())
        if len(self._bodies) >= self._max_entries:
            self._bodies.clear()
        self._bodies[key] = rendered
        return rendered
