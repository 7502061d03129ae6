"""Attack: a pod (or anything off the node's loopback) asks /explain on the probe port, which listens on every
address for the kubelet. The real probe app runs in a node network namespace; the callers are a pod namespace
and the node's own bridge address. Skipped only where namespaces cannot be made (not root)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from demo.netns import Topology, curl_argv, netns_unavailable

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))

PORT = 8086
SERVER = f"""
from aiohttp import web
from nmi.readiness import DaemonState
from nmi.server import probe_app
app = probe_app(DaemonState(), explain=lambda query: {{"pod": query["namespace"] + "/" + query["pod"], "status": 200}})
web.run_app(app, host="0.0.0.0", port={PORT}, print=lambda *_: print("ready", flush=True), access_log=None)
"""


def ask(namespace, host: str) -> tuple[int, str]:
    done = namespace.run(*curl_argv(f"http://{host}:{PORT}/explain?namespace=team&pod=web", headers=()),
                         check=False)
    body, _, status = done.stdout.rpartition("\n")
    return int(status or 0), body


def test_explain_answers_the_nodes_loopback_only():
    with Topology(pods=1) as topo:
        server = topo.node.popen(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            status, body = ask(topo.pods[0].ns, topo.node_ip)  # a pod, at the node's address
            assert status == 403 and json.loads(body)["error"] == "forbidden", body
            assert "team/web" not in body
            status, body = ask(topo.node, topo.node_ip)  # the node itself, but not from loopback
            assert status == 403, body
            status, body = ask(topo.node, "127.0.0.1")
            assert status == 200 and json.loads(body)["pod"] == "team/web"
        finally:
            server.terminate()
            server.wait(10)
