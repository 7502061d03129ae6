"""Start-up checks of the node around the chain, and conntrack deletion.

The checks return one line naming the problem (and the flag involved), or None; the daemon decides whether
it is fatal. They never change the node.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Iterable

ROUTE_LOCALNET_DIR = Path("/proc/sys/net/ipv4/conf")
KUBENET_FLAG = "--network-plugin=kubenet"
KUBENET_DOCS = "https://azure.github.io/aad-pod-identity/docs/configure/aad_pod_identity_on_kubenet/"
_NOT_INTERFACES = {"all", "default", "lo"}


class ConntrackError(Exception):
    """Conntrack entries could not be deleted. Not an IptablesError: the supervisor does not retry it."""


def check_route_localnet(
    target_ip: str, interfaces: Iterable[str] | None = None, *, conf_dir: Path = ROUTE_LOCALNET_DIR
) -> str | None:
    """When the DNAT target is a loopback address, pods' packets are only routed to it if route_localnet is on
    for the interface they arrive on. The kernel ORs `all` with the interface's own value, so `all`=1 is enough.
    Which interfaces face pods depends on the CNI; without `interfaces`, every interface but lo must have it
    (conservative: on a node where only the pod bridge has it, name that bridge in `interfaces`).
    """
    if not ipaddress.IPv4Address(target_ip).is_loopback:
        return None
    if _read_flag(conf_dir / "all" / "route_localnet") == "1":
        return None
    names = sorted(interfaces) if interfaces is not None else sorted(
        entry.name for entry in conf_dir.iterdir() if entry.name not in _NOT_INTERFACES
    )
    lacking = [name for name in names if _read_flag(conf_dir / name / "route_localnet") != "1"]
    if not lacking:
        return None
    return (
        f"--nmi-listen-address makes the DNAT target {target_ip}, which pods reach only with "
        f"net.ipv4.conf.<interface>.route_localnet=1, but it is off on {', '.join(lacking)} "
        f"(set it, or listen on the node's pod-facing address)"
    )


def check_kubenet(kubelet_config_path: str | Path, *, allow: bool) -> str | None:
    """Upstream's guard (reference §7.2): kubenet lets pods spoof each other's IPs (ARP), so refuse it unless
    allowed. Like upstream, a substring search of the kubelet flags file; an unreadable file is a problem."""
    if allow:
        return None
    try:
        text = Path(kubelet_config_path).read_text(errors="replace")
    except OSError as exc:
        return (f"--kubelet-config {kubelet_config_path}: failed to check if CNI plugin is kubenet, "
                f"error: {exc.strerror or exc}")
    if KUBENET_FLAG in text:
        return (f"AAD Pod Identity is not supported for Kubenet ({KUBENET_FLAG} in {kubelet_config_path}); "
                f"pass --allow-network-plugin-kubenet to run anyway. Review {KUBENET_DOCS} for more details.")
    return None


def delete_conntrack(metadata_ip: str, metadata_port: int, *, command: str = "conntrack",
                     timeout: float = 10.0) -> int:
    """Delete conntrack entries of TCP connections to metadata_ip:metadata_port, so connections a pod opened
    before the DNAT rule existed cannot keep bypassing nmi. Returns how many entries were deleted."""
    ipaddress.IPv4Address(metadata_ip)
    argv = [command, "-D", "-p", "tcp", "--orig-dst", metadata_ip, "--dport", str(int(metadata_port))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ConntrackError(f"--enable-conntrack-deletion needs the {command!r} tool, which is not installed") \
            from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConntrackError(f"failed to delete conntrack entries for metadata ip: {exc}") from exc
    found = re.search(r"(\d+) flow entries have been deleted", done.stderr)
    deleted = int(found.group(1)) if found else None
    # conntrack exits 1 when nothing matched; that is success for us.
    if done.returncode == 0 or (done.returncode == 1 and deleted == 0):
        return deleted or 0
    detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    raise ConntrackError(f"failed to delete conntrack entries for metadata ip: {detail}")


def _read_flag(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
