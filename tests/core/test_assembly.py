"""`assemble` in process against the fake API server: the parts it builds are wired to each other — readiness to
the watch caches, the pod count metric to the pod index, failed Secret reads to the API error metric, /explain to
the broker's own decision — and everything it built is released when its exit stack closes."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from nmi.assembly import StartupError, assemble
from nmi.cli import parse_args
from nmi.errors import IdentityConfigurationError
from fakes.kubeobjects import make_binding, make_identity, make_pod
from nmi.model import SERVICE_PRINCIPAL, TokenRequest
from tests.conftest import TOKEN

NODE = "node-1"
ARM = "https://management.azure.com/"


def kubeconfig(tmp: Path, url: str) -> Path:
    path = tmp / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{url}"}}}}]
users: [{{name: nmi, user: {{token: {TOKEN}}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: nmi}}}}]
current-context: fake
""")
    return path


def settings_for(tmp: Path, url: str, *extra: str):
    kubelet = tmp / "kubelet-defaults"
    kubelet.write_text("KUBELET_FLAGS=--network-plugin=cni\n")
    return parse_args([f"--node={NODE}", f"--kubeconfig={kubeconfig(tmp, url)}", f"--kubelet-config={kubelet}",
                       "--manage-iptables=false", "--metadata-ip=127.0.0.1", "--metadata-port=9", *extra], environ={})


async def eventually(predicate, *, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def metric_lines(parts, name: str) -> list[str]:
    return [line for line in parts.metrics.render()[0].decode().splitlines() if line.startswith(name)]


async def test_assembled_parts_are_wired_to_the_caches_and_to_each_other(apiserver, tmp_path):
    apiserver.put(make_identity("sp", "default", type=SERVICE_PRINCIPAL, client_id="cid-sp", tenant_id="t",
                                secret="gone"))  # the Secret does not exist
    apiserver.put(make_binding("b", "default", identity="sp", selector="sel"))
    apiserver.put(make_pod("app", "default", "127.0.0.1", NODE, labels={"aadpodidbinding": "sel"}))
    async with AsyncExitStack() as stack:
        settings = settings_for(tmp_path, apiserver.url, "--operation-mode=managed", "--forceNamespaced")
        parts = await assemble(settings, stack=stack)
        state = parts.state
        assert not state.chain_required  # --manage-iptables=false
        assert parts.chain_task is None  # --manage-iptables=false
        assert {"caches-synced", "forget-vanished-identities", "event-loop-lag", "binding-window-errors",
                "watch-pods", "watch-azureidentitybindings"} <= set(parts.root_tasks)
        assert state.cache_problems()  # readiness reads the watch caches' health: nothing listed yet
        tasks = [asyncio.create_task(start(), name=name) for name, start in parts.root_tasks.items()]
        try:
            await eventually(lambda: not state.cache_problems())
            assert metric_lines(parts, "nmi_pods_indexed") == ["nmi_pods_indexed 1"]

            with pytest.raises(IdentityConfigurationError, match="Secret default/gone not found"):
                await parts.broker.for_caller("127.0.0.1", TokenRequest(ARM))
            [errors] = [line for line in metric_lines(parts, "aadpodidentity_kubernetes_api_operations_errors_count")
                        if "get_secret" in line]
            assert errors.endswith(" 1.0") or errors.endswith(" 1")

            assert parts.explainer is not None
            report = parts.explainer.answer({"namespace": "default", "pod": "app", "resource": ARM})
            assert (report["status"], report["reason"], report["identity"]["name"]) == (200, "bound", "sp")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_missing_kubeconfig_is_a_startup_error_naming_the_flag(tmp_path):
    broken = tmp_path / "no-such-kubeconfig"
    kubelet = tmp_path / "kubelet-defaults"
    kubelet.write_text("")
    settings = parse_args([f"--node={NODE}", f"--kubeconfig={broken}", f"--kubelet-config={kubelet}",
                           "--manage-iptables=false"], environ={})
    async with AsyncExitStack() as stack:
        with pytest.raises(StartupError, match="--kubeconfig"):
            await assemble(settings, stack=stack)
