"""--node-startup-taint with the real nmi process: its own Node loses the taint once nmi is ready, even after
the API server refused it once (RBAC missing at first), and nothing else on the Node changes."""

from __future__ import annotations

import time

from fakes.background import BackgroundFakes
from fakes.nodes import make_node

from tests.e2e.conftest import NODE_IDENTITY
from tests.e2e.harness import NmiProcess

NODE = "taint-node"
KEY = "aadpodidentity.k8s.io/nmi-not-ready"
OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}


def test_nmi_removes_its_startup_taint_from_its_own_node_once_ready(tmp_path):
    fakes = BackgroundFakes([NODE_IDENTITY])
    fakes.start()
    try:
        fakes.call(lambda: fakes.api.nodes.put(make_node(NODE, taints=[OURS, OTHER])))
        fakes.call(lambda: fakes.api.nodes.put(make_node("other-node", taints=[OURS])))
        fakes.call(lambda: fakes.api.fail_next(1, status=403, path_prefix="/api/v1/nodes/"))
        nmi = NmiProcess(tmp_path, fakes, node=NODE, extra=[f"--node-startup-taint={KEY}"])
        nmi.start()  # returns once /readyz is 200
        deadline = time.monotonic() + 20
        while fakes.call(lambda: fakes.api.nodes.taints(NODE)) != [OTHER] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fakes.call(lambda: fakes.api.nodes.taints(NODE)) == [OTHER]
        assert fakes.call(lambda: fakes.api.nodes.taints("other-node")) == [OURS]  # only its own Node
        patches = fakes.call(lambda: list(fakes.api.nodes.patches))
        assert [(p["node"], p["status"]) for p in patches] == [(NODE, 200)]
        assert nmi.get("/readyz", port=nmi.probe_port).status == 200
        assert nmi.stop() == 0
        log = nmi.log()
        assert "HTTP 403" in log and "startup-taint component" in log
        assert f"startup taint {KEY} removed from node {NODE}" in log
    finally:
        fakes.stop()
