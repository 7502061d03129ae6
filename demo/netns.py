"""Network namespaces for tests: throw-away namespaces, and a node with pods on a bridge.

    with Topology(pods=2) as topo:          # node ns: bridge cbr0 10.244.0.1/24, no uplink
        topo.node.run("ip", "addr")         # pod ns i: eth0 10.244.0.(10+i)/24, default route via the node
        topo.pods[0].ns.run("curl", ...)

Everything is created under unique `nmi-t-<hex>-...` names and deleted on exit, also on failure: processes
left in a namespace are killed first. Shared by the demo and the tests: `from demo.netns import Topology`.
Needs root (`ip netns add`); `netns_unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# The source tree. demo, fakes and tests are not installed (not in the wheel): processes started with
# `python -m demo.fakes` or `-m tests...` run with it as their working directory to find them.
REPO = Path(__file__).resolve().parents[1]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@functools.lru_cache(maxsize=1)
def netns_unavailable() -> str | None:
    """None when namespaces can be created here, else the reason (for pytest.skip)."""
    name = f"nmi-t-{secrets.token_hex(3)}-probe"
    try:
        done = _ip("netns", "add", name, check=False)
    except OSError as exc:
        return f"cannot run `ip`: {exc}"
    if done.returncode != 0:
        return f"`ip netns add` failed (needs root): {done.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


class Namespace:
    """One network namespace, created on construction; `delete()` kills what runs in it and removes it."""

    def __init__(self, label: str) -> None:
        self.name = f"nmi-t-{secrets.token_hex(3)}-{label}"
        _ip("netns", "add", self.name)
        self.run("ip", "link", "set", "lo", "up")

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 10) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*argv), capture_output=True, text=True, input=input, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {self.name} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*argv), **kwargs)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.name, check=False)
        return [int(word) for word in done.stdout.split()]

    def delete(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


@dataclass(frozen=True)
class Pod:
    ns: Namespace
    ip: str


class Topology:
    """A node namespace with bridge `cbr0` at <subnet>.1/24 (kubenet-like) and `pods` pod namespaces, each with
    eth0 at <subnet>.(10+i)/24 behind a veth on the bridge and a default route via the node. The node has no
    uplink, so nothing sent to 169.254.169.254 can leave unless the node's own rules redirect it."""

    def __init__(self, *, pods: int = 1, subnet: str = "10.244.0", bridge: str = "cbr0") -> None:
        self.pod_count = pods
        self.subnet = subnet
        self.bridge = bridge
        self.node_ip = f"{subnet}.1"
        self.node: Namespace | None = None
        self.pods: list[Pod] = []

    def __enter__(self) -> "Topology":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        self.node = node = Namespace("node")
        node.run("ip", "link", "add", self.bridge, "type", "bridge")
        node.run("ip", "addr", "add", f"{self.node_ip}/24", "dev", self.bridge)
        node.run("ip", "link", "set", self.bridge, "up")
        for index in range(self.pod_count):
            pod = Pod(Namespace(f"pod{index}"), f"{self.subnet}.{10 + index}")
            self.pods.append(pod)
            host_side = f"vp{index}"
            # Create the pair inside the namespaces so no interface name is ever taken in the root namespace.
            node.run("ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", pod.ns.name)
            node.run("ip", "link", "set", host_side, "master", self.bridge, "up")
            pod.ns.run("ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            pod.ns.run("ip", "link", "set", "eth0", "up")
            pod.ns.run("ip", "route", "add", "default", "via", self.node_ip)

    def close(self) -> None:
        for pod in self.pods:
            pod.ns.delete()
        if self.node is not None:
            self.node.delete()


def curl_argv(url: str, *, headers: Sequence[str] = ("Metadata: true",), max_time: float = 5) -> list[str]:
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(max_time), "-w", "\n%{http_code}"]
    for header in headers:
        argv += ["-H", header]
    return argv + [url]
