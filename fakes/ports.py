"""Ports for servers that tests and the demo start as separate processes.

Asking the kernel for port 0 and closing the socket hands back a port from the ephemeral range, which any
outgoing connection made meanwhile (a client of the fake API server, say) may take before the server binds it.
Ports below the ephemeral range are never handed out that way, so a free one stays free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _below_ephemeral() -> tuple[int, int]:
    try:
        low = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (max(1024, low - 12000), low) if low > 13024 else (1024, low)


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, below the ephemeral range (random, so parallel runs rarely collide)."""
    start, stop = _below_ephemeral()
    for _ in range(200):
        port = random.randrange(start, stop)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no unused port in {start}-{stop}")


def unused_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct unused ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = unused_port(host)
        if port not in ports:
            ports.append(port)
    return ports
