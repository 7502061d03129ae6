import subprocess
import sys

import pytest

from demo.netns import REPO, Topology
from fakes.background import BackgroundFakes
from fakes.imds import VmIdentity, user_assigned
from fakes.kubeobjects import make_binding, make_exception, make_identity, make_pod

from tests.e2e.harness import NmiProcess

NODE = "e2e-node"
NS = "e2e"
A = user_assigned("id-a", client_id="aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa",
                  object_id="0a000000-0000-4000-8000-00000000000a")
B = user_assigned("id-b", client_id="bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb",
                  object_id="0b000000-0000-4000-8000-00000000000b")
C = user_assigned("id-c", client_id="cccccccc-3333-4333-8333-cccccccccccc",
                  object_id="0c000000-0000-4000-8000-00000000000c")
NODE_IDENTITY = VmIdentity(client_id="dddddddd-4444-4444-8444-dddddddddddd", system_assigned=True)


def managed_world() -> list[dict]:
    objects = [make_identity(name, NS, client_id=vm.client_id, resource_id=vm.resource_id)
               for name, vm in (("id-a", A), ("id-b", B), ("id-c", C))]
    objects += [make_binding("b-a", NS, identity="id-a", selector="app", weight=1),
                make_binding("b-b", NS, identity="id-b", selector="app", weight=5),
                make_exception("system", NS, pod_labels={"component": "system"}),
                make_pod("app", NS, "127.0.0.1", NODE, labels={"aadpodidbinding": "app"}),
                make_pod("other", NS, "127.0.0.2", NODE, labels={"app": "other"}),
                make_pod("system", NS, "127.0.0.3", NODE, labels={"component": "SYSTEM"}),
                make_pod("done", NS, "127.0.0.4", NODE, labels={"aadpodidbinding": "app"}, phase="Succeeded"),
                make_pod("elsewhere", NS, "127.0.0.5", "another-node", labels={"aadpodidbinding": "app"})]
    return objects


@pytest.fixture(scope="module")
def fakes():
    with BackgroundFakes([A, B, C, NODE_IDENTITY]) as fakes:
        fakes.put_all(managed_world())
        yield fakes


@pytest.fixture(scope="module")
def nmi(fakes, tmp_path_factory):
    process = NmiProcess(tmp_path_factory.mktemp("nmi"), fakes, node=NODE,
                         extra=["--operation-mode=managed", "--forceNamespaced"])
    process.start()
    yield process
    assert process.stop() == 0


@pytest.fixture
def node(tmp_path):
    """A node namespace with one pod, the fake API server and the fake IMDS on 169.254.169.254:80 (on the
    node's lo), for nmi run as a real process there (tests/e2e/test_node_namespace.py)."""
    with Topology(pods=1) as topo:
        topo.node.run("ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
        kubeconfig, kubelet = tmp_path / "kubeconfig", tmp_path / "kubelet"
        kubelet.write_text("")
        fakes = topo.node.popen(sys.executable, "-m", "demo.fakes", "--pod-ips", topo.pods[0].ip,
                                "--imds", "169.254.169.254:80", "--kubeconfig", str(kubeconfig), cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert "ready" in fakes.stdout.readline()
            yield topo, kubeconfig, kubelet
        finally:
            fakes.terminate()
            fakes.wait(10)
            fakes.stdout.close()
