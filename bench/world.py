"""The cluster nmi sees during the benchmark: a fake API server and a fake IMDS on their own event loop thread.

One identity (user-assigned MSI) bound by selector "bench" in namespace "bench"; the calling pod sits at
127.0.0.1. Extra pods (`bulk_pods`) get addresses in 127.1.0.0/16, bound too, so any of them can be called
from its own loopback source address to prove nmi has indexed it. Pod addresses are only data here: the one
address the benchmark sends from is loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes.background import BackgroundFakes, kubeconfig
from fakes.imds import VmIdentity
from fakes.kubeobjects import make_assigned_identity, make_binding, make_identity, make_pod

NODE = "bench-node"
NAMESPACE = "bench"
SELECTOR = "bench"
IDENTITY = VmIdentity(
    client_id="bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb", object_id="0b000000-0000-4000-8000-00000000000b",
    resource_id=("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
                 "userAssignedIdentities/bench"))
CALLER_IP = "127.0.0.1"
# nmi holds at most 64 connections per source address (SPEC §7, by design): more simultaneous connections than
# that come from several pods bound to the same identity, this many at most from each.
CONNECTIONS_PER_SOURCE = 32


def base_objects() -> list[dict[str, Any]]:
    """The caller's identity and binding, and (for standard mode) the assignment MIC would have written."""
    identity = make_identity("bench-id", NAMESPACE, client_id=IDENTITY.client_id, resource_id=IDENTITY.resource_id)
    binding = make_binding("bench-binding", NAMESPACE, identity="bench-id", selector=SELECTOR)
    return [identity, binding, make_pod("caller", NAMESPACE, CALLER_IP, NODE, labels={"aadpodidbinding": SELECTOR}),
            make_assigned_identity("caller-bench-id", NAMESPACE, pod="caller", pod_namespace=NAMESPACE, node=NODE,
                                   identity=identity, binding=binding)]


def bulk_pod_ip(index: int) -> str:
    return f"127.1.{index // 250}.{index % 250 + 1}"


def bulk_pods(start: int, stop: int) -> list[dict[str, Any]]:
    """Pods number start..stop-1 on the node, shaped like a Deployment's pods (owner, labels, one container)."""
    if stop > 250 * 256:
        raise ValueError("at most 64,000 bulk pods fit in 127.1.0.0/16")
    return [make_pod(f"app-{i:05d}", NAMESPACE, bulk_pod_ip(i), NODE, replicaset=f"app-{i // 50:04d}",
                     labels={"aadpodidbinding": SELECTOR, "app": f"app-{i // 50:04d}"}, uid=f"uid-{i:05d}")
            for i in range(start, stop)]


def caller_sources(count: int) -> list[str]:
    """`count` source addresses of pods bound to the benchmark's identity: the caller's, then bulk pods 0, 1, ...
    (those must be in the fakes, and indexed by the nmi under test, before they call)."""
    return [CALLER_IP, *(bulk_pod_ip(i) for i in range(count - 1))]


def sources_for(connections: int, *, per_source: int = CONNECTIONS_PER_SOURCE) -> int:
    """How many source addresses carry `connections` with at most `per_source` from each."""
    if not 0 < per_source <= 64:
        raise ValueError("nmi holds at most 64 connections per source address")
    return max(1, -(-connections // per_source))


class BenchFakes(BackgroundFakes):
    """The shared background fakes (fakes.background) holding the benchmark's world, with the kubeconfig and the
    kubelet defaults nmi reads written in `workdir`. Always `stop()` (or use as a context manager)."""

    def __init__(self, workdir: Path) -> None:
        # Bookmarks as a real API server sends them; a minute per call on the fakes' loop, since filling it
        # with tens of thousands of objects takes a while on a loaded machine.
        super().__init__([IDENTITY], bookmark_interval=5.0, timeout=60.0)
        self.kubeconfig_path = workdir / "kubeconfig"
        self.kubelet_config_path = workdir / "kubelet"

    def start(self, *, api_port: int | None = 0) -> BenchFakes:
        super().start(api_port=api_port)
        try:
            self.kubeconfig_path.write_text(kubeconfig(self.api.url))
            # nmi refuses to start when it cannot tell the node is not kubenet, as upstream does.
            self.kubelet_config_path.write_text("KUBELET_FLAGS=--network-plugin=cni --max-pods=250\n")
            self.put_all(base_objects())
        except BaseException:
            self.stop()
            raise
        return self
