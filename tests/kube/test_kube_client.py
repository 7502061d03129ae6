"""Building the ApiClient from an explicit URL, a kubeconfig, or (failing) in-cluster config."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes import client as k8s_client

from fakes.apiserver import make_pod
from nmi.kube import KubeConfigError, build_api_client

from .conftest import TOKEN


def list_pod_names(api: k8s_client.ApiClient) -> list[str]:
    # Blocking: tests call it in a thread, since the fake serves from this test's event loop.
    response = k8s_client.CoreV1Api(api).list_pod_for_all_namespaces(_preload_content=False)
    return [item["metadata"]["name"] for item in json.loads(response.data)["items"]]


def write_kubeconfig(path, server: str, token: str) -> None:
    # JSON is valid YAML, and keeps the test free of a YAML dependency.
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "tester"}}],
    }))


async def test_an_explicit_url_and_token_reach_the_api_server(apiserver):
    apiserver.put(make_pod("web"))
    api = build_api_client(host=apiserver.url, token=TOKEN)
    try:
        assert await asyncio.to_thread(list_pod_names, api) == ["web"]
    finally:
        api.close()


async def test_a_wrong_token_is_refused_by_the_fake(apiserver):
    api = build_api_client(host=apiserver.url, token="wrong")
    try:
        with pytest.raises(k8s_client.ApiException) as caught:
            await asyncio.to_thread(list_pod_names, api)
        assert caught.value.status == 401
    finally:
        api.close()


@pytest.mark.parametrize("via", ["argument", "environment"])
async def test_a_kubeconfig_file_is_used(apiserver, tmp_path, via):
    apiserver.put(make_pod("web"))
    config = tmp_path / "kubeconfig"
    write_kubeconfig(config, apiserver.url, TOKEN)
    if via == "argument":
        api = build_api_client(kubeconfig=str(config), environ={})
    else:
        api = build_api_client(environ={"KUBECONFIG": str(config)})
    try:
        assert await asyncio.to_thread(list_pod_names, api) == ["web"]
    finally:
        api.close()


def test_an_unreadable_kubeconfig_is_one_clear_line(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(KubeConfigError) as caught:
        build_api_client(kubeconfig=str(missing), environ={})
    message = str(caught.value)
    assert message.startswith(f"cannot load kubeconfig {missing}") and "\n" not in message


@pytest.mark.parametrize("content", ["apiVersion: v1\nclusters: [\n", "{unclosed: {", "- a\n b: :\n\t- c\n"])
def test_a_kubeconfig_that_is_not_yaml_is_one_clear_line(tmp_path, content):
    broken = tmp_path / "kubeconfig"
    broken.write_text(content)
    with pytest.raises(KubeConfigError) as caught:
        build_api_client(kubeconfig=str(broken), environ={})
    message = str(caught.value)
    assert message.startswith(f"cannot load kubeconfig {broken}") and "\n" not in message


def test_no_configuration_at_all_says_what_was_tried(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeConfigError) as caught:
        build_api_client(environ={})
    message = str(caught.value)
    assert "not running in a cluster" in message and "KUBECONFIG" in message and "\n" not in message
