"""KubeApi: the calls nmi makes without the generated API classes, byte for byte what those classes send."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from nmi.kube.client import build_api_client
from nmi.kube.rest import KubeApi

TOKEN = "rest-test-token"
EVENT = {"metadata": {"generateName": "nmi-", "namespace": "team"}, "reason": "TokenIssued", "message": "m",
         "involvedObject": {"kind": "Pod", "namespace": "team", "name": "web"}, "type": "Normal"}
TOKEN_REQUEST = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 3600}}
PATCH = [{"op": "test", "path": "/spec/taints/0/key", "value": "k"}, {"op": "remove", "path": "/spec/taints/0"}]

# (method name, positional args, keyword args) as nmi's adapters call them, all with _preload_content=False.
CALLS = [
    ("list_pod_for_all_namespaces", (), {"field_selector": "spec.nodeName=node-1", "limit": 500}),
    ("list_pod_for_all_namespaces", (), {"field_selector": "spec.nodeName=node-1,status.podIP=10.0.0.1"}),
    ("list_pod_for_all_namespaces", (), {"field_selector": "spec.nodeName=n", "watch": True, "resource_version": "42",
                                         "allow_watch_bookmarks": True, "timeout_seconds": 300}),
    ("list_pod_for_all_namespaces", (), {"limit": 500, "_continue": "token/with=odd&chars"}),
    ("list_service_account_for_all_namespaces", (), {"limit": 500}),
    ("list_namespaced_replica_set", ("kube-system",), {"limit": 500}),
    ("list_namespaced_deployment", ("kube-system",), {"field_selector": "metadata.name=mic", "watch": True}),
    ("list_cluster_custom_object", ("aadpodidentity.k8s.io", "v1", "azureidentities"), {"limit": 500}),
    ("list_cluster_custom_object", ("aadpodidentity.k8s.io", "v1", "azureassignedidentities"),
     {"label_selector": "nodename=node-1", "watch": True, "resource_version": "7"}),
    ("read_namespaced_secret", ("sp-secret", "team"), {}),
    ("read_namespaced_secret", ("a/../../../pods?x=", "team"), {}),  # a hostile name stays one path segment
    ("read_node", ("node-1",), {}),
    ("patch_node", ("node-1", PATCH), {"_content_type": "application/json-patch+json"}),
    ("create_namespaced_event", ("team", EVENT), {}),
    ("create_namespaced_service_account_token", ("web-sa", "team", TOKEN_REQUEST), {}),
]


def _generated(api_client, name: str):
    for api in (k8s_client.CoreV1Api, k8s_client.AppsV1Api, k8s_client.CustomObjectsApi):
        if hasattr(api, name):
            return getattr(api(api_client), name)
    raise AssertionError(name)


@pytest.fixture
async def recorder():
    """An HTTP server recording each request as it arrived: method, raw path and query, headers, body."""
    seen: list[dict[str, object]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.raw_path, "body": await request.read(),
                     **{h: request.headers.get(h) for h in ("Accept", "Content-Type", "Authorization", "User-Agent")}})
        return web.json_response({"kind": "Status", "code": 404} if "missing" in request.raw_path else {},
                                 status=404 if "missing" in request.raw_path else 200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = build_api_client(host=f"http://127.0.0.1:{port}", token=TOKEN)
    client.user_agent = "nmi/test"
    try:
        yield client, seen
    finally:
        client.close()
        await runner.cleanup()


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)])
async def test_each_call_sends_exactly_what_the_generated_client_sends(recorder, name, args, kwargs):
    api_client, seen = recorder
    for call in (_generated(api_client, name), getattr(KubeApi(api_client), name)):
        response = await asyncio.to_thread(call, *args, **kwargs, _preload_content=False, _request_timeout=5)
        assert response.status == 200 and response.data == b"{}"  # read: the connection goes back clean
        response.release_conn()
    assert len(seen) == 2, seen
    generated, ours = seen
    if generated["body"]:
        # The generated client re-serialises a body through its model (keys sorted) and, for POST, sends no
        # Content-Type (the API server then reads JSON); nmi sends its JSON as built, labelled as JSON.
        assert json.loads(ours.pop("body")) == json.loads(generated.pop("body")) == args[-1]
        assert ours.pop("Content-Type") == kwargs.get("_content_type", "application/json")
        generated.pop("Content-Type")
    assert ours == generated
    assert ours["Authorization"] == f"Bearer {TOKEN}" and ours["User-Agent"] == "nmi/test"


async def test_attack_a_hostile_secret_name_cannot_reach_another_path(recorder):
    api_client, seen = recorder
    response = await asyncio.to_thread(KubeApi(api_client).read_namespaced_secret, "../../../pods", "team",
                                       _preload_content=False)
    assert response.data == b"{}"
    response.release_conn()
    assert seen[0]["path"] == "/api/v1/namespaces/team/secrets/..%2F..%2F..%2Fpods"


async def test_a_non_2xx_answer_raises_api_exception_with_its_status(recorder):
    api_client, _ = recorder
    with pytest.raises(ApiException) as caught:
        await asyncio.to_thread(KubeApi(api_client).read_namespaced_secret, "missing", "team",
                                _preload_content=False)
    assert caught.value.status == 404


def test_an_unknown_argument_is_refused_never_dropped():
    # A misspelt selector silently dropped would widen what nmi lists (every pod of the cluster, not the node's).
    api = KubeApi(object())
    with pytest.raises(TypeError, match="field_selecter"):
        api.list_pod_for_all_namespaces(field_selecter="spec.nodeName=n", _preload_content=False)
    with pytest.raises(ValueError, match="raw responses only"):
        api.list_pod_for_all_namespaces(_preload_content=True)


def test_the_daemon_imports_no_generated_api_class_and_no_yaml():
    # The point of KubeApi: CoreV1Api and friends (~250 pydantic models, ~20 MiB) stay out of the daemon; and the
    # slim import keeps kubernetes.utils' yaml out of the REST client.
    import subprocess
    import sys

    code = ("import sys; from nmi.slim_imports import import_kubernetes_without_extras as slim; slim(); "
            "import nmi.daemon, nmi.assembly, nmi.kube.watches, nmi.kube.reads, nmi.kube.events, nmi.kube.nodes, "
            "nmi.kube.tokenrequests, kubernetes.client.api_client, kubernetes.client.rest; "
            "print(sorted(m for m in sys.modules if m.startswith(('kubernetes.client.api.', 'yaml'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
