"""`RenderedBodies`: a token answer rendered (and, for the fast lane, framed) once per token set, resource and
second, never handed to another token set or another second."""

from __future__ import annotations

from nmi.model import AccessToken
from nmi.request_cache import RenderedBodies


def tokens(name: str) -> tuple[AccessToken, ...]:
    return (AccessToken(access_token=f"tok-{name}", expires_on=2_000_000_000, resource="r", client_id=name),)


def test_a_framed_answer_is_made_once_per_body_and_second_and_dated_by_that_second():
    bodies, framed = RenderedBodies(), []

    def frame(body: bytes, second: int) -> bytes:
        framed.append(second)
        return b"%d|" % second + body

    mine, theirs = tokens("mine"), tokens("theirs")
    first = bodies.framed(mine, resource="r", now=1_900_000_000.2, frame=frame)
    assert bodies.framed(mine, resource="r", now=1_900_000_000.9, frame=frame) is first
    assert first == b"1900000000|" + bodies.render(mine, resource="r", now=1_900_000_000.5)
    later = bodies.framed(mine, resource="r", now=1_900_000_001.0, frame=frame)
    assert later.startswith(b"1900000001|") and b'"expires_in":"99999999"' in later
    other = bodies.framed(theirs, resource="r", now=1_900_000_001.0, frame=frame)
    assert b"tok-theirs" in other and b"tok-mine" not in other
    assert b'"resource":"s"' in bodies.framed(mine, resource="s", now=1_900_000_001.0, frame=frame)
    assert framed == [1_900_000_000, 1_900_000_001, 1_900_000_001, 1_900_000_001]
