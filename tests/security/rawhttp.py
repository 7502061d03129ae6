"""Raw HTTP/1.1 over a plain socket, for attacks where the bytes matter (http.client and aiohttp normalise,
encode or refuse what an attacker's pod can still send)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, *, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def head(request_line: bytes, headers: dict[bytes, bytes] | None = None) -> bytes:
    lines = [request_line, b"Host: 169.254.169.254", b"Connection: close"]
    lines += [name + b": " + value for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def send(port: int, data: bytes, *, source: str = "127.0.0.1", timeout: float = 10.0) -> RawAnswer:
    """Sends `data` as is and reads the answer until the server closes (the request asks it to)."""
    with connect(port, source=source, timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return parse(received)


def parse(received: bytes) -> RawAnswer:
    while received.startswith(b"HTTP/1.1 100 "):  # an interim answer precedes the real one
        received = received.split(b"\r\n\r\n", 1)[1]
    header_block, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body)


def get(port: int, target: bytes, *, source: str = "127.0.0.1", method: bytes = b"GET",
        headers: dict[bytes, bytes] | None = None) -> RawAnswer:
    return send(port, head(method + b" " + target + b" HTTP/1.1", {b"Metadata": b"true", **(headers or {})}),
                source=source)
